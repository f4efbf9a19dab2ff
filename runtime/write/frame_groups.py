"""Saving a big DICOM object (the DICOM-SEG, the SR): each distinct item of its sequences encoded once, the pixels
streamed.

A BINARY DICOM-SEG of a scanner-size series has one frame per (structure, plane): 7555 frames for 50 structures on
300 slices, each with its own Per-frame Functional Groups item (its dimension index values, the plane's position,
the source instance it derives from, the segment). pydicom encodes every element of every item from scratch (and
re-checks the ambiguous VRs of each nested dataset on the way down): 3.1-3.3 s of a 6.2 s SEG on the 2-core
machine, where most of what it encodes is the same few hundred items again -- highdicom builds each plane's
position and source-image items once and refers to them from every frame of that plane. Encoded as below, the
same file is written in 0.75 s.

:func:`save_as` writes exactly the bytes of pydicom's ``dataset.save_as(path)`` (tested byte for byte) but encodes
the top-level sequences itself (the SEG's per-frame groups; the SR's content tree and evidence, nested items of
pydicom's slowest kind to write, 0.17-0.23 s of a 0.6-0.9 s SR of 50 structures): every dataset in them once per
Python object (:class:`_Encoder` keeps the bytes of each by ``id`` while the sequences are alive), every
non-sequence element with pydicom's own ``write_data_element`` but the binary numbers (US, UL, SL, FL, FD: each
frame's dimension index values and segment number), whose tag, VR, 16-bit length and packed values are put together
here as pydicom's ``write_numbers`` packs them, as is the framing of sequences and items (a tag and a 32-bit length,
PS3.5 7.5, as pydicom writes them: defined lengths). Each encoded sequence goes into the dataset as a raw element,
which pydicom copies as it is; the other elements are corrected for ambiguous VRs and written by pydicom as before.
Anything outside what this covers (an implicit-VR or big-endian transfer syntax, a sequence or item of undefined
length, a value over 4 GB) is saved by pydicom unchanged.

The pixel data (bytes of even length) is handed to pydicom as a buffer, which it writes in chunks (4 MiB here, not
its default 8 KiB), instead of as bytes, which it copies into an element buffer and copies again into the file:
two copies of 518 MB at the peak of writing a 15820-frame SEG of 512x512 planes. Where it is the last element (a
SEG's), pydicom saves the rest and the pixel data is appended after it, its value copied by the kernel from the
spool (``os.copy_file_range``; through a buffer where the kernel cannot).

:class:`FrameSpool` keeps the frames out of memory while highdicom builds the object: highdicom encodes each frame
into a list of bytes and joins the list into the pixel data (two copies of every frame at once: 2 x 655 MB, 1.3 GB
of a TS-sized 20000-frame SEG's 2.6 GB peak). The spool's subclass of highdicom's class writes each frame, as
highdicom's own ``_encode_pixels_native`` encodes it (a 1-bit frame of 0s and 1s packed by numpy alone, the same
bytes without pydicom's checks and copies), to an unnamed temporary file in the output's folder and hands
highdicom nothing to join (in 4 MiB batches, written by a thread of the spool's own while highdicom builds the next
frames); :meth:`FrameSpool.attach` then gives the object that file as its pixel data (padded to
even length with the byte highdicom pads with), which :func:`save_as` streams. The file's bytes are highdicom's
(tested against highdicom's own object); the subclass also skips the lookup tables highdicom builds for reading
frames back out of the object, which a SEG that is only saved never does. Where highdicom encodes frames another
way (a compressed transfer syntax, a release whose method is named otherwise), the spool stays empty and the object
keeps the pixel data highdicom gave it.
"""
from __future__ import annotations

import contextlib
import functools
import inspect
import io
import logging
import os
import struct
import tempfile
import threading
from collections import deque
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

#: PS3.5 7.5: the Item tag (FFFE,E000) as written in little endian
_ITEM_TAG = b"\xfe\xff\x00\xe0"
_DERIVATION_IMAGE = 0x00089124  # DerivationImageSequence
_PIXEL_DATA = 0x7FE00010
_MAX_LENGTH = 0xFFFFFFFE  # the longest defined length (0xFFFFFFFF means undefined)
_CHUNK = 4 << 20  # bytes of the pixel data copied to the file at a time, and of frames spooled at a time
_BATCHES_IN_FLIGHT = 4  # spooled batches handed to the writer thread and not written yet
_CHARACTER_SET = 0x00080005  # SpecificCharacterSet
#: struct formats of the binary-number VRs encoded here (SS is left to pydicom: it writes LUT descriptors apart)
_NUMBER_FORMATS = {"US": "H", "UL": "L", "SL": "l", "FL": "f", "FD": "d"}
_VR_BYTES = {vr: vr.encode("ascii") for vr in _NUMBER_FORMATS}


class FrameSpool:
    """The frames of one multi-frame object, written to an unnamed temporary file in ``folder`` as they are encoded
    (the module's text). A context manager: the file is gone when it ends."""

    def __init__(self, folder: str | os.PathLike[str]) -> None:
        self.file = tempfile.TemporaryFile(dir=Path(folder), prefix=".edgeseg-frames-", suffix=".tmp")
        #: (id of a plane's source-image items, id of the derivation code) -> (the Derivation Image Sequence
        #: element of the plane's frames, the two objects, kept so that their ids stay theirs)
        self._derivations: dict[tuple[int, int], tuple[Any, Any, Any]] = {}
        self._batch = bytearray()
        self._writer: ThreadPoolExecutor | None = None
        self._pending: deque[Future[Any]] = deque()

    def __enter__(self) -> FrameSpool:
        return self

    def __exit__(self, *exc: Any) -> None:
        try:
            if self._writer is not None:
                self._writer.shutdown(wait=True, cancel_futures=True)
        finally:
            self.file.close()

    def write(self, frame: bytes) -> None:
        """Append one encoded frame. Frames are gathered into batches of :data:`_CHUNK` bytes, each written to the
        file by one thread of its own while the caller builds the next frames (a write of a big batch releases the
        GIL; one ``write`` per frame was 17000 system calls, 1.1 s of a 512x512 SEG's 16970 frames), at most
        :data:`_BATCHES_IN_FLIGHT` batches held at a time."""
        self._batch += frame
        if len(self._batch) >= _CHUNK:
            self._hand_over()

    def _hand_over(self) -> None:
        if not self._batch:
            return
        if self._writer is None:
            self._writer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="edgeseg-spool")
        while len(self._pending) >= _BATCHES_IN_FLIGHT:
            self._pending.popleft().result()  # raises the writer's error here
        self._pending.append(self._writer.submit(self.file.write, bytes(self._batch)))
        self._batch = bytearray()

    def flush(self) -> None:
        """Every frame handed over is in the file (the writer's error, if any, raised here)."""
        self._hand_over()
        while self._pending:
            self._pending.popleft().result()

    def subclass(self, cls: type) -> type:
        """``cls`` (highdicom's Segmentation) for an object that is only saved: each natively encoded frame
        written here instead of kept, each plane's Derivation Image Sequence element built once for all its frames
        (:meth:`_frame_item`), and without the lookup tables highdicom builds last for reading frames back out of
        the object (``_build_luts``: 14 % of a 10000-frame BINARY SEG's time; no DICOM attribute)."""
        spool = self

        # highdicom's builder of one frame's item, where it is the static method this wraps
        base_item = (getattr(cls, "_get_pffg_item", None)
                     if isinstance(inspect.getattr_static(cls, "_get_pffg_item", None), staticmethod) else None)

        class Spooled(cls):
            def _encode_pixels_native(self, planes: Any) -> bytes:
                spool.write(_packed_bits(self, planes) or super()._encode_pixels_native(planes))
                return b""

            if base_item is not None:
                @staticmethod
                def _get_pffg_item(*args: Any, **kwargs: Any) -> Any:
                    return spool._frame_item(base_item, args, kwargs)

            def _build_luts(self) -> None:
                pass

        Spooled.__name__ = Spooled.__qualname__ = cls.__name__
        return Spooled

    def _frame_item(self, build: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        """highdicom's Per-frame Functional Groups item of one frame (``build``: its ``_get_pffg_item``), whose
        Derivation Image Sequence element is the one of the plane's first frame: the same source images and
        derivation, so the same element, built and encoded once per plane instead of once per (segment, plane)
        frame (a Dataset and two sequences each: the items of a 10000-frame SEG took 0.51 s instead of 0.74 s and
        their encoding 0.37 s instead of 0.58 s, the SEG 2.7 s instead of 2.9 s). The item has the elements,
        values and bytes highdicom's own would have (tested). The element is one object in all the plane's
        items (as highdicom's source-image items already were): the object is saved, never edited."""
        sources, derivation = kwargs.get("derivation_source_image_items"), kwargs.get("derivation")
        if args or not sources or derivation is None:
            return build(*args, **kwargs)
        key = (id(sources), id(derivation))
        shared = self._derivations.get(key)
        if shared is None:
            item = build(**kwargs)
            element = item.get(_DERIVATION_IMAGE)
            if element is not None:
                self._derivations[key] = (element, sources, derivation)
            return item
        item = build(**{**kwargs, "derivation_source_image_items": None})  # an empty one, replaced
        item[_DERIVATION_IMAGE] = shared[0]
        return item

    def attach(self, dataset: Any) -> None:
        """Make the spooled frames ``dataset``'s pixel data (where highdicom joined nothing but them): a buffer of
        even length, the pad byte highdicom's."""
        from pydicom.dataelem import DataElement

        self.flush()
        pixels = dataset.get(_PIXEL_DATA)
        if not self.file.tell() or pixels is None or not isinstance(pixels.value, bytes) or pixels.value:
            return
        if self.file.tell() % 2:
            self.file.write(b"0")  # highdicom pads odd pixel data with this byte (b"0", not b"\x00")
        self.file.flush()
        self.file.seek(0)
        dataset[_PIXEL_DATA] = DataElement(_PIXEL_DATA, pixels.VR, self.file)


def _packed_bits(image: Any, planes: Any) -> bytes | None:
    """The bytes pydicom's ``pack_bits(planes, pad=False)`` gives a 1-bit image's frame of 0s and 1s (what
    highdicom's ``_encode_pixels_native`` returns for it), packed by numpy alone: pydicom first checks that the
    values are binary by comparing the frame with a boolean copy and then copies it once more (46 of the 55 us of a
    512x512 frame here). None where the frame is anything else: highdicom and pydicom encode it (or refuse it)."""
    import numpy as np

    if (getattr(image, "BitsAllocated", None) != 1 or not isinstance(planes, np.ndarray) or planes.dtype != np.uint8
            or planes.ndim != 1 or not planes.size or planes.size % 8 or planes.max() > 1):
        return None
    return bytes(np.packbits(planes, bitorder="little"))


class _Unsupported(Exception):
    """Something this encoder does not write itself: the dataset is saved by pydicom as a whole."""


class _Encoder:
    """Explicit VR little endian bytes of datasets and their sequences, each distinct dataset object once."""

    def __init__(self, encodings: Any) -> None:
        self.encodings = encodings
        self.memo: dict[int, bytes] = {}
        self.strings: dict[tuple[Any, str, str], bytes] = {}
        self.distinct = 0

    def sequence(self, tag: int, items: Any) -> bytes:
        """The element (tag, VR "SQ", defined length, the items) as pydicom's ``write_data_element`` writes it."""
        body = b"".join(self.item(ds) for ds in items)
        if len(body) > _MAX_LENGTH:
            raise _Unsupported("a sequence over 4 GB")
        return _tag(tag) + b"SQ\x00\x00" + len(body).to_bytes(4, "little") + body

    def item(self, ds: Any) -> bytes:
        if getattr(ds, "is_undefined_length_sequence_item", False):
            raise _Unsupported("an item of undefined length")
        body = self.memo.get(id(ds))
        if body is None:
            body = self.memo[id(ds)] = self.dataset(ds)
            self.distinct += 1
        return _ITEM_TAG + len(body).to_bytes(4, "little") + body

    def dataset(self, ds: Any) -> bytes:
        if _CHARACTER_SET in ds:
            raise _Unsupported("a character set inside the sequence")
        parts = []
        for tag in sorted(ds.keys()):
            if tag.element == 0 and tag.group > 6:
                continue  # pydicom does not write retired group lengths either
            elem = ds[tag]
            vr = elem.VR
            if vr == "SQ":
                if elem.is_undefined_length:
                    raise _Unsupported("a sequence of undefined length")
                parts.append(self.sequence(tag, elem.value))
            elif vr is None or len(vr) != 2:
                raise _Unsupported(f"the ambiguous VR of {tag}")  # pydicom resolves it from the ancestors
            else:
                parts.append(_numbers(tag, vr, elem) or self.element(elem))
        return b"".join(parts)

    def element(self, elem: Any) -> bytes:
        """``elem`` as pydicom's ``write_data_element`` writes it; an element whose value is one string, once per
        (tag, VR, string) (an SR repeats its concept names, codes and units in every measurement group)."""
        from pydicom.filebase import DicomBytesIO
        from pydicom.filewriter import write_data_element

        key = (elem.tag, elem.VR, elem.value) if isinstance(elem.value, str) else None
        encoded = self.strings.get(key) if key is not None else None
        if encoded is None:
            out = DicomBytesIO()
            out.is_little_endian, out.is_implicit_VR = True, False
            write_data_element(out, elem, self.encodings)
            encoded = out.getvalue()
            if key is not None and type(elem) is _pydicom_types()[0]:
                self.strings[key] = encoded
        return encoded


def _numbers(tag: int, vr: str, elem: Any) -> bytes | None:
    """The bytes of a binary-number element (US, UL, SL, FL, FD) with a value, as pydicom's ``write_numbers``
    packs it, put together here (pydicom's generic path costs a buffer and a dozen calls per element: most of
    encoding a frame's items, whose dimension index values and segment number are such elements); None for
    anything else, which pydicom writes."""
    fmt = _NUMBER_FORMATS.get(vr)
    element, several = _pydicom_types()
    if fmt is None or type(elem) is not element:
        return None
    value = elem.value
    try:
        if type(value) is int or (type(value) is float and fmt in "fd"):
            packed = struct.pack("<" + fmt, value)
        elif isinstance(value, several) and value:
            packed = struct.pack(f"<{len(value)}{fmt}", *value)
        else:
            return None
    except struct.error:
        return None  # pydicom raises its own error for it
    if len(packed) > 0xFFFF:
        return None  # pydicom writes it as UN
    return _tag(tag) + _VR_BYTES[vr] + len(packed).to_bytes(2, "little") + packed


@functools.cache
def _pydicom_types() -> tuple[Any, Any]:
    """pydicom's DataElement, and what a value of several numbers is (pydicom's MultiValue, or a list)."""
    from pydicom.dataelem import DataElement
    from pydicom.multival import MultiValue

    return DataElement, (MultiValue, list)


def _tag(tag: int) -> bytes:
    return (tag >> 16).to_bytes(2, "little") + (tag & 0xFFFF).to_bytes(2, "little")


def save_as(dataset: Any, path: str | os.PathLike[str]) -> None:
    """``dataset.save_as(path)`` (pydicom), the same bytes, with its top-level sequences encoded here (each distinct
    item once) and the pixel data streamed (see the module's text). ``dataset`` is left as it was: its own sequence
    and pixel data elements are put back after."""
    from pydicom.dataelem import DataElement

    pixels = dataset.get(_PIXEL_DATA)
    streamed = pixels is not None and isinstance(pixels.value, bytes) and len(pixels.value) % 2 == 0
    if streamed:
        # pydicom writes each element into a buffer of its own first and then copies that into the file: for the
        # pixel data of a big SEG (518 MB for 15820 frames of 512^2) two more copies at the peak of writing. A
        # value given as a buffer is written from it in chunks instead (pydicom's buffered elements); the bytes
        # stay the same object (io.BytesIO shares them until written to)
        dataset[_PIXEL_DATA] = DataElement(_PIXEL_DATA, pixels.VR, io.BytesIO(pixels.value))
    try:
        with _read_chunks(_CHUNK):
            _save_sequences_encoded(dataset, path)
    finally:
        if streamed:
            dataset[_PIXEL_DATA] = pixels


@contextlib.contextmanager
def _read_chunks(size: int) -> Iterator[None]:
    """pydicom copies a buffered value (the pixel data: the spool or the joined frames) to the file in chunks of
    ``config.settings.buffered_read_size``, 8 KiB by default: 80000 reads and writes for a 655 MB SEG (0.5 s of
    system calls here). Larger chunks while any save of this module runs (saves in several threads share one
    process-wide setting: the first to start raises it, the last to end puts the value before it back)."""
    from pydicom import config

    with _CHUNKS.lock:
        if not _CHUNKS.saves:
            _CHUNKS.before = config.settings.buffered_read_size
            config.settings.buffered_read_size = max(_CHUNKS.before, size)
        _CHUNKS.saves += 1
    try:
        yield
    finally:
        with _CHUNKS.lock:
            _CHUNKS.saves -= 1
            if not _CHUNKS.saves:
                config.settings.buffered_read_size = _CHUNKS.before


class _ChunkSetting:
    """The saves running now and pydicom's chunk size before the first of them (:func:`_read_chunks`)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.saves = 0
        self.before = 0


_CHUNKS = _ChunkSetting()


def _save_sequences_encoded(dataset: Any, path: str | os.PathLike[str]) -> None:
    from pydicom.charset import default_encoding
    from pydicom.dataelem import RawDataElement
    from pydicom.filewriter import correct_ambiguous_vr
    from pydicom.tag import BaseTag

    syntax = getattr(getattr(dataset, "file_meta", None), "TransferSyntaxUID", None)
    elements = {tag: elem for tag in dataset.keys() if (elem := dataset[tag]).VR == "SQ"}
    if not elements or syntax is None or syntax.is_implicit_VR or not syntax.is_little_endian:
        dataset.save_as(os.fspath(path))
        return
    encoder = _Encoder(dataset.get("SpecificCharacterSet", default_encoding))
    values = {}
    try:
        for tag, element in elements.items():
            if element.is_undefined_length:
                raise _Unsupported("a sequence of undefined length")
            values[tag] = encoder.sequence(tag, element.value)[12:]  # after the tag, VR, reserved bytes, length
    except _Unsupported as why:
        log.debug("sequences saved by pydicom as they are: %s", why)
        dataset.save_as(os.fspath(path))
        return
    read_encoding = (dataset.original_encoding, dataset.original_character_set)
    for tag in elements:
        del dataset[tag]
    try:
        # what pydicom's write_dataset would do on the way in (the ambiguous VRs of the other elements) is done
        # here once; the dataset then reads as already encoded like this, so it is not done again over the raw
        # sequences (which it would decode)
        correct_ambiguous_vr(dataset, True)
        for tag, value in values.items():
            dataset[tag] = RawDataElement(BaseTag(tag), "SQ", len(value), value, 0, False, True)
        dataset.set_original_encoding(False, True, _character_set(dataset))
        _save_pixels_copied(dataset, path)
    finally:
        for tag, element in elements.items():
            dataset[tag] = element
        dataset.set_original_encoding(read_encoding[0][0], read_encoding[0][1], read_encoding[1])
    log.debug("%d sequence(s) of %d item(s), %d distinct datasets encoded", len(elements),
              sum(len(e.value) for e in elements.values()), encoder.distinct)


def _save_pixels_copied(dataset: Any, path: str | os.PathLike[str]) -> None:
    """``dataset.save_as(path)`` with its pixel data (a buffered value: the spooled frames, or the joined ones as a
    buffer) written after the rest without passing through Python: the element's tag, VR, reserved bytes and 32-bit
    length as pydicom writes an OB or OW element in explicit VR little endian (PS3.5 7.1.2), then its value copied by
    the kernel (``os.copy_file_range``) from the spool's pages to the file's, where pydicom reads and writes it in
    :data:`_CHUNK` pieces (564 MB for 16970 frames of 512x512). The same bytes. Only where the pixel data is the
    dataset's last element and of even length; else pydicom saves all of it."""
    pixels = dataset.get(_PIXEL_DATA)
    source = pixels.value if pixels is not None and pixels.is_buffered else None
    syntax = getattr(getattr(dataset, "file_meta", None), "TransferSyntaxUID", None)
    if (source is None or pixels.VR not in ("OB", "OW") or pixels.is_undefined_length or syntax is None
            or syntax.is_compressed or syntax.is_deflated or max(dataset.keys()) != _PIXEL_DATA):
        dataset.save_as(os.fspath(path))  # encapsulated frames, a deflated stream: pydicom's own framing
        return
    start = source.tell()
    length = source.seek(0, os.SEEK_END) - start
    source.seek(start)
    if length % 2 or length > _MAX_LENGTH:
        dataset.save_as(os.fspath(path))
        return
    del dataset[_PIXEL_DATA]
    try:
        dataset.save_as(os.fspath(path))
    finally:
        dataset[_PIXEL_DATA] = pixels
    try:
        with open(path, "r+b") as out:
            out.seek(0, os.SEEK_END)
            out.write(_tag(_PIXEL_DATA) + pixels.VR.encode("ascii") + b"\0\0" + length.to_bytes(4, "little"))
            out.flush()
            _copy_bytes(source, start, length, out)
    finally:
        source.seek(start)  # where it was, as pydicom leaves a buffer it wrote from


def _copy_bytes(source: Any, start: int, length: int, out: Any) -> None:
    """``length`` bytes of ``source`` from ``start`` appended to ``out`` (flushed, positioned at its end): by the
    kernel between two files where it can, else through a buffer."""
    begin = out.tell()
    done = 0
    try:
        src, dst = source.fileno(), out.fileno()
        copy = os.copy_file_range  # Linux; elsewhere the buffered copy below
        while done < length:
            n = copy(src, dst, length - done, start + done)
            if n <= 0:
                break
            done += n
    except (AttributeError, OSError, io.UnsupportedOperation):
        pass  # not two files (a buffer in memory), or a file system that refuses it: copied from where it stopped
    if done < length:
        out.seek(begin + done)
        source.seek(start + done)
        while done < length:
            chunk = source.read(min(_CHUNK, length - done))
            if not chunk:
                raise OSError(f"the pixel data ended {length - done} bytes early")
            out.write(chunk)
            done += len(chunk)


def _character_set(dataset: Any) -> Any:
    """The text encodings pydicom's ``write_dataset`` compares with a dataset's original character set."""
    from pydicom.charset import convert_encodings, default_encoding

    value = dataset.get("SpecificCharacterSet")
    return convert_encodings(value) if value else default_encoding
