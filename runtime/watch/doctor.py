"""``edgeseg doctor``: is this PC ready for the watcher of ``watch_config.yaml``? One OK / FAIL / SKIP line per check:
the configuration, the roots and state folders, the job store, the OpenVINO devices, the bundle, the time budget on a
typical volume, the DICOM listener (port, TLS, root) and each destination (C-ECHO, and whether it accepts the SEG and
SR edgeseg sends). Registered by :mod:`edgeseg.runtime.watch.commands`."""
from __future__ import annotations

import argparse
import errno
import functools
import logging
import os
import shutil
import socket
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

from edgeseg.runtime.watch.state_view import liveness, read_beat

log = logging.getLogger(__name__)

#: the "typical" volume doctor checks the budget with: 256 x 208 x 160 voxels at 1.5 mm
TYPICAL_SHAPE = (256, 208, 160)
TYPICAL_SPACING = (1.5, 1.5, 1.5)


def _writable(folder: Path) -> str | None:
    """None if a file can be created and removed in ``folder``, else the reason."""
    if not folder.is_dir():
        return "does not exist" if not folder.exists() else "is not a folder"
    try:
        fd, tmp = tempfile.mkstemp(prefix=".edgeseg-doctor-", dir=folder)
        os.close(fd)
        os.unlink(tmp)
    except OSError as err:
        return f"is not writable ({err.strerror or err})"
    return None


def cmd_doctor(args: argparse.Namespace) -> int:
    from edgeseg.errors import EXIT_FAILED, EXIT_OK, EdgesegError
    from edgeseg.runtime.watch.config import describe, load_config

    results: list[tuple[str, str, str]] = []

    def check(name: str, fn: Callable[[], tuple[str, str]]) -> None:
        try:
            status, detail = fn()
        except EdgesegError as err:
            status, detail = "FAIL", str(err)
        except Exception as err:  # noqa: BLE001 - doctor reports, it does not crash
            status, detail = "FAIL", f"{type(err).__name__}: {err}"
        results.append((status, name, detail))
        print(f"{status:<5} {name}: {detail}")

    try:
        config = load_config(args.config, check_paths=False)
    except EdgesegError as err:
        print(f"FAIL  config: {err}")
        return EXIT_FAILED
    print(f"OK    config: {config.source or '(no file: defaults and environment)'}")
    for key, value in describe(config):
        log.debug("config %s = %s", key, value)

    def root_check(root: Path) -> tuple[str, str]:
        problem = _writable(root)
        if problem:
            return "FAIL", f"{root} {problem}; results are written beside each series"
        return "OK", "exists and is writable"

    for i, root in enumerate(config.roots):
        check(f"roots[{i}] {root}", functools.partial(root_check, root))
    for key in ("state_dir", "log_dir"):
        folder = getattr(config, key)

        def state_check(folder: Path = folder) -> tuple[str, str]:
            folder.mkdir(parents=True, exist_ok=True)
            problem = _writable(folder)
            return ("FAIL", f"{folder} {problem}") if problem else ("OK", f"{folder} is writable")
        check(key, state_check)

    def store_check() -> tuple[str, str]:
        from edgeseg.runtime.watch.store import JobStore

        if not config.store_path.exists():
            return "OK", f"{config.store_path} will be created at the first start"
        with JobStore(config.store_path) as store:
            counts = store.counts()
        return "OK", f"{config.store_path}: " + ", ".join(f"{n} {s}" for s, n in counts.items())
    check("job store", store_check)

    def retention_check() -> tuple[str, str]:
        from edgeseg.runtime.watch.retention import Retention
        from edgeseg.runtime.watch.store import JobStore

        policy = config.retention
        if not config.store_path.exists():
            return "OK", f"{policy.describe()} (nothing recorded yet)"
        with JobStore(config.store_path) as store:
            retention = Retention(store, policy, config.roots, config.received_root)
            forecast = retention.forecast()
            removed = store.removals()
            low = [r for r in config.roots if r.is_dir() and policy.min_free_mb is not None
                   and retention.free_bytes(r) < policy.min_free_mb * 1e6]
        text = (f"{policy.describe()}; {len(removed)} removal(s) recorded. Disk forecast: " + " | ".join(forecast))
        if low:
            return "FAIL", (text + f". Below the watermark: {', '.join(map(str, low))}. Fix: free space there or "
                            "check the deliveries (`edgeseg status`): undelivered results are never removed")
        return "OK", text
    check("retention", retention_check)

    def devices_check() -> tuple[str, str]:
        from edgeseg.runtime.infer.devices import device_present
        from edgeseg.runtime.infer.engine import available_devices

        devices = available_devices()
        if not devices:
            return "FAIL", "OpenVINO finds no device (its plugins are missing from this installation)"
        if not device_present(config.device, devices):  # the engine's rule (config checked that edgeseg runs on it)
            return "FAIL", (f"configured device {config.device} is not available (available: {', '.join(devices)}); "
                            "set device: in watch_config.yaml to one of them")
        return "OK", f"available: {', '.join(devices)}; configured {config.device}"
    check("openvino devices", devices_check)

    segmenters: list[Any] = []  # the watcher's segmenter, once the bundle loaded

    def bundle_check() -> tuple[str, str]:
        from edgeseg.runtime.segmenter import Segmenter

        # the watcher's own segmenter; its planner plans from the latency table alone (nothing is measured here)
        segmenter = Segmenter(config.bundle, config.segment_options(), ceiling_s=config.time_ceiling_s,
                              latency_path=config.latency_path, measure_missing=False, verify=True)
        segmenters.append(segmenter)
        bundle = segmenter.bundle
        return "OK", (f"{config.bundle}: '{bundle.name}', {len(bundle.variants)} variant(s) "
                      f"({', '.join(v.name for v in sorted(bundle.variants, key=lambda v: v.rank))}), "
                      f"{len(bundle.files)} files verified; precisions: {bundle.describe_precisions()}")
    check("bundle", bundle_check)

    def budget_check() -> tuple[str, str]:
        if not segmenters:
            return "SKIP", "no bundle to plan with"
        if not config.latency_path.is_file():
            return "SKIP", (f"no latency table yet ({config.latency_path}); the watcher measures it when it starts "
                            "(warm_up) or at its first series")
        from edgeseg.runtime.read import SeriesGeometry

        plan = segmenters[0].plan(SeriesGeometry(TYPICAL_SHAPE, TYPICAL_SPACING))
        what = f"typical {'x'.join(map(str, TYPICAL_SHAPE))} volume at {TYPICAL_SPACING[0]} mm"
        if plan is None:
            return "SKIP", "no time budget or ceiling set: every series runs the most accurate variant"
        if plan.predicted_s is None:
            return "SKIP", f"{what}: {plan.reason}"
        return ("OK" if plan.fits else "FAIL"), f"{what}: {plan.reason}"
    check("time budget", budget_check)

    _doctor_listener(config, check)
    _doctor_destinations(config, check, history=True)

    failed = [r for r in results if r[0] == "FAIL"]
    print(f"\n{len(results) + 1 - len(failed)} OK/SKIP, {len(failed)} FAIL")
    return EXIT_FAILED if failed else EXIT_OK


#: what edgeseg sends (runtime/write: dicomseg.py, by outputs.seg_type, and sr.py) -> its storage SOP class's name
SOP_NAMES = {"binary": "Segmentation Storage", "labelmap": "Label Map Segmentation Storage",
             "sr": "Comprehensive 3D SR Storage"}


def sent_sop_classes() -> dict[str, str]:
    """The storage SOP class UID of each :data:`SOP_NAMES` key: the BINARY and LABELMAP SEG, and the SR (highdicom's
    Comprehensive3DSR)."""
    from pydicom.uid import Comprehensive3DSRStorage, SegmentationStorage

    return {"binary": SegmentationStorage, "labelmap": label_map_segmentation_storage(), "sr": Comprehensive3DSRStorage}


def label_map_segmentation_storage() -> str:
    """Label Map Segmentation Storage's UID: pynetdicom's name (pydicom 3.0's ``pydicom.uid`` lacks it)."""
    from pynetdicom import sop_class

    return str(sop_class.LabelMapSegmentationStorage)  # pynetdicom generates its names when imported


#: who usually listens on a port, for a port that is taken and whose owner cannot be read
_WELL_KNOWN_PORTS = {104: "a PACS or DCMTK storescp (104 is the standard DICOM port)",
                     11112: "another DICOM node: DCMTK storescp, dcm4che, a second watcher (11112 is the registered "
                            "DICOM port)",
                     4242: "Orthanc (its default DICOM port)"}

Check = Callable[[str, Callable[[], tuple[str, str]]], None]


def _port_holders(port: int) -> list[tuple[int, str]]:
    """(pid, command line) of the processes with a TCP socket listening on ``port`` (Linux: /proc; empty where it
    cannot be read, e.g. another user's process or another OS)."""
    inodes: set[str] = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text(encoding="ascii").splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            if len(fields) > 9 and fields[3] == "0A" and int(fields[1].rsplit(":", 1)[1], 16) == port:
                inodes.add(f"socket:[{fields[9]}]")
    holders: list[tuple[int, str]] = []
    if not inodes:
        return holders
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            if not any(os.readlink(fd) in inodes for fd in (proc / "fd").iterdir()):
                continue
            raw = (proc / "cmdline").read_bytes().replace(b"\0", b" ").strip()
            holders.append((int(proc.name), raw.decode(errors="replace")[:120] or proc.name))
        except OSError:
            continue
    return holders


def _listener_summary(listener: Any) -> str:
    peers = []
    if listener.allowed_ae_titles:
        peers.append("AE titles " + ", ".join(listener.allowed_ae_titles))
    if listener.allowed_hosts:
        peers.append("hosts " + ", ".join(listener.allowed_hosts))
    return (f"{listener.ae_title}@{listener.bind_address}:{listener.port}, TLS {'yes' if listener.tls else 'no'}, "
            f"allowed peers: {'; '.join(peers) or 'any'}")


def _doctor_listener(config: Any, check: Check) -> None:
    """The DICOM listener: its address, whether its port is free (or held by this state folder's running watcher),
    its TLS files, its root (writable, free space)."""
    listener = config.node.listener
    if not listener.enabled:
        check("DICOM listener", lambda: ("OK", "off (no port opened)"))
        return
    check("DICOM listener", lambda: ("OK", _listener_summary(listener)))

    def port_check() -> tuple[str, str]:
        host, port = listener.bind_address, listener.port
        where = f"{host}:{port}"
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        with socket.socket(family, socket.SOCK_STREAM) as sock:
            if sys.platform != "win32":  # as the listener binds (SO_REUSEADDR: only a listening socket conflicts)
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                sock.bind((host, port))
                sock.listen(1)
                return "OK", f"{where} is free"
            except OSError as err:
                problem = err
        if problem.errno == errno.EACCES:
            return "FAIL", (f"{where}: no permission to listen (ports below 1024 need administrator rights). Fix: "
                            "choose dicom_listener.port >= 1024 (and the same port on the console), or grant the "
                            "right (Linux: setcap cap_net_bind_service)")
        if problem.errno == errno.EADDRNOTAVAIL:
            return "FAIL", (f"{host} is not an address of this PC. Fix: set dicom_listener.bind_address to one of "
                            "its addresses, or 0.0.0.0 for all")
        if problem.errno not in (errno.EADDRINUSE, getattr(errno, "WSAEADDRINUSE", -1)):
            return "FAIL", f"cannot listen on {where}: {problem.strerror or problem}"
        beat = read_beat(config.state_dir)
        state = liveness(config.state_dir, beat, time.time())
        holders = _port_holders(port)
        watcher_pid = beat.get("pid") if state.startswith(("running", "NOT RESPONDING")) else None
        if watcher_pid is not None and (not holders or any(pid == watcher_pid for pid, _ in holders)):
            return "OK", f"{where} is in use by this state folder's watcher ({state}): its listener"
        if holders:
            who = "; ".join(f"pid {pid}: {cmd}" for pid, cmd in holders)
        else:
            who = _WELL_KNOWN_PORTS.get(port, "another program (its owner cannot be read here)")
        if watcher_pid is not None:
            who += f" (not this state folder's watcher, pid {watcher_pid})"
        elif state.startswith(("stopped", "not running", "NOT RUNNING")):
            who += f"; this state folder's watcher is not running ({state.split(':')[0]})"
        return "FAIL", (f"{where} is taken by {who}. Fix: stop that program, or choose another dicom_listener.port "
                        "(and the same port on the console)")
    check("DICOM listener port", port_check)

    if listener.tls is not None:
        def tls_check() -> tuple[str, str]:
            try:
                listener.tls.server_context()
            except (OSError, ValueError) as err:
                return "FAIL", (f"the certificate or key does not load ({err}). Fix: dicom_listener.tls_certificate "
                                "and tls_key must be PEM files that match (tls_ca: PEM CA certificates)")
            files = [str(f) for f in (listener.tls.certificate, listener.tls.key, listener.tls.ca) if f is not None]
            return "OK", f"loaded {', '.join(files)}" + (
                "; peers must present a certificate" if listener.tls.require_peer_certificate else "")
        check("DICOM listener TLS", tls_check)

    def root_check() -> tuple[str, str]:
        root = Path(listener.root) if listener.root is not None else None
        if root is None:
            return "FAIL", "no root to write received images into. Fix: set dicom_listener.root or roots"
        problem = _writable(root)
        if problem:
            return "FAIL", f"{root} {problem}; received images are written there"
        free_mb = shutil.disk_usage(root).free / 1e6
        text = f"{root} is writable; {free_mb:,.0f} MB free (min_free_mb {listener.min_free_mb:g})"
        if free_mb < listener.min_free_mb:
            return "FAIL", (text + ": the listener answers every image 'out of resources' (0xA700). Fix: free "
                            "space on that disk or lower dicom_listener.min_free_mb")
        return "OK", text
    check("DICOM listener root", root_check)


def destination_refusals(config: Any) -> list[str]:
    """Doctor's FAIL message for each destination that answers but does not accept what it would be sent (no SEG
    class it could be given, or not the SR): the watcher does not start with such a configuration. A destination
    that does not answer is not judged here (a PACS may be down while edgeseg starts; deliveries wait for it)."""
    refusals: list[str] = []

    def check(name: str, fn: Callable[[], tuple[str, str]]) -> None:
        try:
            fn()
        except Exception as err:  # noqa: BLE001 - an unreachable destination is the delivery's business
            log.debug("destination check %s failed: %s", name, err)

    _doctor_destinations(config, check, refusals)
    return refusals


def _doctor_destinations(config: Any, check: Check, refusals: list[str] | None = None, history: bool = False) -> None:
    """Each destination: C-ECHO, then whether it accepts the SOP classes of what it is sent (SEG by
    ``outputs.seg_type``: a destination that takes only BINARY SEGs gets one rendered from a label-map result; and
    the Comprehensive 3D SR when ``send`` includes sr); with ``history``, whether it takes C-STOREs from our AE
    title as far as the job store's deliveries show (:func:`store_acceptance`). ``refusals`` collects the FAIL
    messages of "does not accept" (for :func:`destination_refusals`)."""
    from edgeseg.runtime.node.send import default_calling_ae, echo

    listener = config.node.listener
    seg_type = str(config.outputs.seg_type)
    for destination in config.node.destinations:
        calling = default_calling_ae(destination, listener.ae_title if listener.enabled else None)
        reached: list[bool] = []

        def echo_check(destination: Any = destination, calling: str = calling,
                       reached: list[bool] = reached) -> tuple[str, str]:
            ok, why = echo(destination, calling)
            reached.append(ok)
            if ok:
                return "OK", why
            return "FAIL", (f"{why}. Fix: check host, port and AE title in destinations, that {destination.address} "
                            f"runs, and that it knows our AE title {calling!r} and this PC's address")
        check(f"destination {destination.name}", echo_check)

        sop_classes = sent_sop_classes()
        seg_kind = seg_type if seg_type in ("binary", "labelmap") else "labelmap"
        wanted: list[tuple[str, str, str | None]] = []  # (what, kind of result, why not sent)
        if "seg" in destination.send:
            wanted.append(("SEG", seg_kind, None if config.outputs.dicom_seg else "outputs.dicom_seg is off"))
        if "sr" in destination.send:
            wanted.append(("SR", "sr", None if config.outputs.dicom_sr else "outputs.dicom_sr is off"))
        to_probe = [sop_classes[kind] for _, kind, off in wanted if off is None]
        if sop_classes["labelmap"] in to_probe:
            to_probe.append(sop_classes["binary"])  # negotiated: BINARY where the label map is not taken
        answer: dict[str, bool] = {}
        failure: list[str] = []
        if to_probe and reached and reached[0]:
            from edgeseg.runtime.node.probe import accepted_sop_classes

            try:
                answer = accepted_sop_classes(destination, calling, to_probe)
            except Exception as err:  # noqa: BLE001 - reported on each line below
                failure.append(str(err))
        for what, kind, off in wanted:
            def sop_check(what: str = what, kind: str = kind, off: str | None = off, destination: Any = destination,
                          sop: str = sop_classes[kind]) -> tuple[str, str]:
                status, text = _sop_check(what, kind, off, destination, sop)
                if status == "FAIL" and refusals is not None and sop in answer:
                    refusals.append(f"destination {destination.name} {what}: {text}")
                return status, text

            def _sop_check(what: str, kind: str, off: str | None, destination: Any, sop: str) -> tuple[str, str]:
                name = f"{SOP_NAMES[kind]} ({sop})"
                if off is not None:
                    return "SKIP", f"{off}: no {what} is sent"
                if failure:
                    return "FAIL", failure[0]
                if sop not in answer:
                    return "SKIP", "not checked: no association (see the C-ECHO line)"
                if answer[sop]:
                    return "OK", f"{destination.address} accepts {name}"
                if kind == "labelmap" and answer.get(sop_classes["binary"]):
                    return "OK", (f"{destination.address} does not accept {name} but {SOP_NAMES['binary']}: it gets "
                                  "a BINARY SEG rendered from each label-map result (outputs.seg_type: binary writes "
                                  "it directly)")
                if kind == "labelmap":
                    return "FAIL", (f"{destination.address} accepts neither {name} nor {SOP_NAMES['binary']} "
                                    f"({sop_classes['binary']}). Fix: allow DICOM-SEG on it, or remove seg from send "
                                    f"of destination {destination.name}")
                if what == "SEG":
                    return "FAIL", (f"{destination.address} does not accept {name}. Fix: allow DICOM-SEG on it, or "
                                    f"remove seg from send of destination {destination.name}")
                return "FAIL", (f"{destination.address} does not accept {name}. Fix: allow it on the PACS, or set "
                                f"send: [seg] for destination {destination.name}")
            check(f"destination {destination.name} {what}", sop_check)
        if history:
            check(f"destination {destination.name} C-STORE from {calling}",
                  functools.partial(store_acceptance, config, destination, calling))


def store_acceptance(config: Any, destination: Any, calling: str) -> tuple[str, str]:
    """Does ``destination`` take C-STOREs from our AE title ``calling``? Neither C-ECHO nor an association proves it
    (Orthanc with ``DicomAlwaysAllowEcho``, its default, answers anyone's C-ECHO and accepts the association, then
    aborts the first C-STORE of an AE title it does not know), and doctor sends no object: the job store's delivery
    history says it. FAIL when the delivery tried last was refused naming ``calling`` (the message has the fix); OK
    when one was accepted (when, and the latest try if that failed since); SKIP, saying so, when nothing proves it
    yet."""
    from edgeseg.runtime.watch.state_view import age
    from edgeseg.runtime.watch.store import SENT, JobStore

    tried = sent = None
    if config.store_path.is_file():
        with JobStore(config.store_path, readonly=True) as store:
            tried, sent = store.delivery_history(destination.name)
    now = time.time()
    unproven = (f"C-ECHO and an association do not show whether {destination.address} accepts C-STORE from our AE "
                f"title {calling!r} (Orthanc, for one, answers C-ECHO from any AE title and aborts the C-STORE of one "
                "it does not know); only a delivery does")
    latest = ""
    if tried is not None and tried.state != SENT:
        error = (tried.last_error or "no error recorded").replace("\n", " ")
        latest = f"the latest delivery ({tried.role}, {age(now - tried.updated_at)} ago) is {tried.state}: {error}"
        if "register AE title" in error:
            if f"our AE title {calling!r}" in error:
                return "FAIL", (f"{destination.address} refused our AE title {calling!r}: {latest}. When it is "
                                "registered there, `edgeseg deliver --retry --now` sends what waits")
            return "SKIP", (f"{unproven}. {latest} (another AE title than {calling!r}, which we call as now: not "
                            "tried yet)")
    if sent is not None:
        when = age(now - (sent.sent_at or sent.updated_at))
        text = (f"{destination.address} accepted C-STORE from AE title {calling!r}: the last delivery sent was "
                f"{sent.role} {sent.sent_sop_instance_uid or sent.sop_instance_uid}, {when} ago")
        return "OK", text + (f"; since then {latest}" if latest else "")
    if latest:
        return "SKIP", f"{unproven}, and none was accepted yet: {latest}"
    return "SKIP", (f"{unproven}, and none is recorded yet. Fix, if not done: register AE title {calling!r} with "
                    f"this PC's address on {destination.address}")

