"""The DICOM node: images in by C-STORE, results out by C-STORE (pynetdicom).

``settings`` (the listener, destinations and delivery sections of ``watch_config.yaml``) → ``receive`` (the Storage
SCP: each instance written atomically into a watched root as ``<StudyUID>/<SeriesUID>/<SOPUID>.dcm`` before the
peer hears "success"; what it stored and when an association ended goes to the watcher as hints) and ``send`` (the
Storage SCU and C-ECHO towards destinations). Which results to send, retries and the persistent outbox are the
watcher's (:mod:`edgeseg.runtime.watch.deliver`, the job store's ``deliveries`` table): this package only speaks
DICOM. pynetdicom is imported when a listener or a send starts, never by ``import edgeseg.runtime``.
"""
