"""The DICOM-SEG's per-frame groups encoded once per distinct item: the bytes of pydicom's own save_as."""
from __future__ import annotations

import os
import shutil
import threading
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian, generate_uid

from io_helpers import geometry_variants
from edgeseg.demo.dicom_series import write_enhanced_mr
from edgeseg.runtime.read import read_series
from edgeseg.runtime.write import dicomseg, frame_groups, write_dicom_seg

_PER_FRAME = 0x52009230


def _both_ways(ds: Any, folder: Path) -> tuple[bytes, bytes]:
    """(pydicom's save_as bytes, frame_groups.save_as bytes) of ``ds``, which must come back unchanged."""
    before, pixels = ds[_PER_FRAME], ds.get("PixelData")
    frame_groups.save_as(ds, folder / "encoded.dcm")
    assert ds[_PER_FRAME] is before and not ds[_PER_FRAME].is_raw  # the dataset keeps its own sequence
    assert ds.get("PixelData") is pixels  # and its pixels
    assert ds.original_encoding == (None, None)  # and reads as new again
    ds.save_as(folder / "plain.dcm")
    return (folder / "plain.dcm").read_bytes(), (folder / "encoded.dcm").read_bytes()


def _captured_seg(monkeypatch: pytest.MonkeyPatch, volume: Any, labelmap: np.ndarray, labels: dict[int, str],
                  folder: Path, seg_type: str) -> Any:
    seen: list[Any] = []

    def keep(ds: Any, path: Any) -> None:
        seen.append(ds)
        frame_groups.save_as(ds, path)
        pixels = ds["PixelData"]
        if pixels.is_buffered:  # the spooled frames (FrameSpool), whose file is gone once the SEG is written
            pixels.value.seek(0)
            ds.PixelData = pixels.value.read()

    monkeypatch.setattr(dicomseg, "save_as", keep)
    write_dicom_seg(folder / "seg.dcm", volume, labelmap, labels, segmentation_type=seg_type)
    assert len(seen) == 1
    return seen[0]


@pytest.mark.parametrize("seg_type", ["BINARY", "LABELMAP"])
def test_seg_bytes_equal_pydicoms(seg_type: str, dicom_series_dirs: dict[str, Path], seg_array: np.ndarray,
                                  labels: dict[int, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    series = tmp_path / "series"
    shutil.copytree(dicom_series_dirs["oblique"], series)
    vol = read_series(series)
    seg = _captured_seg(monkeypatch, vol, seg_array, labels, tmp_path, seg_type)
    plain, encoded = _both_ways(seg, tmp_path)
    assert encoded == plain
    assert (tmp_path / "seg.dcm").read_bytes() == plain  # what write_dicom_seg wrote
    frames = int(seg.NumberOfFrames)
    assert frames == len(seg.PerFrameFunctionalGroupsSequence) > vol.shape[2] - 1


@pytest.mark.parametrize(("seg_type", "shape"), [("BINARY", None), ("LABELMAP", None), ("BINARY", (11, 9, 7))])
def test_spooled_frames_are_highdicoms_own(seg_type: str, shape: tuple[int, int, int] | None,
                                           dicom_series_dirs: dict[str, Path], seg_array: np.ndarray,
                                           labels: dict[int, str], tmp_path: Path,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    """The SEG written with its frames spooled to a temporary file (FrameSpool) is, byte for byte, the SEG of
    highdicom's own object, for planes whose pixel count is not a multiple of 8 too (11 x 9: highdicom packs the
    bits across frames and pads the odd total); the temporary file is gone after, and nothing else is left."""
    from edgeseg.demo.dicom_series import write_dicom_series

    if shape is None:
        series = tmp_path / "series"
        shutil.copytree(dicom_series_dirs["oblique"], series)
        labelmap = seg_array
    else:
        rng = np.random.default_rng(3)
        series = tmp_path / "series"
        write_dicom_series((rng.integers(0, 500, shape).astype(np.int16), np.diag([1.0, 1.0, 2.0, 1.0])), series)
        labelmap = rng.integers(0, 2, shape).astype(np.uint8)  # 7 frames of 99 bits: 87 bytes, padded
    vol = read_series(series)
    spooled, plain = tmp_path / "spooled", tmp_path / "plain"
    spooled.mkdir()
    plain.mkdir()
    write_dicom_seg(spooled / "seg.dcm", vol, labelmap, labels, segmentation_type=seg_type)
    assert sorted(p.name for p in spooled.iterdir()) == ["seg.dcm"]
    monkeypatch.setattr(frame_groups.FrameSpool, "subclass", lambda self, cls: cls)  # highdicom's own object
    write_dicom_seg(plain / "seg.dcm", vol, labelmap, labels, segmentation_type=seg_type)
    ds, own = pydicom.dcmread(spooled / "seg.dcm"), pydicom.dcmread(plain / "seg.dcm")
    assert ds.PixelData == own.PixelData and len(ds.PixelData) % 2 == 0
    assert int(ds.NumberOfFrames) == len(ds.PerFrameFunctionalGroupsSequence) == int(own.NumberOfFrames) > 0
    differing = {elem.keyword for elem in ds if elem != own.get(elem.tag)}
    # the clock's and highdicom's new DimensionOrganizationUID, nothing else (the per-frame groups are the same)
    assert differing <= {"ContentTime", "InstanceCreationTime", "SeriesTime", "ContentDate", "InstanceCreationDate",
                         "SeriesDate", "ContributingEquipmentSequence", "DimensionIndexSequence",
                         "DimensionOrganizationSequence"}


def test_the_frames_of_a_plane_share_its_derivation_element(dicom_series_dirs: dict[str, Path],
                                                            seg_array: np.ndarray, labels: dict[int, str],
                                                            tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A BINARY SEG's frames of one plane (one per segment present there) carry one Derivation Image Sequence
    element, built once per plane (FrameSpool._frame_item), holding that plane's source instance; the bytes stay
    highdicom's (test_spooled_frames_are_highdicoms_own)."""
    series = tmp_path / "series"
    shutil.copytree(dicom_series_dirs["axial"], series)
    vol = read_series(series)
    seg = _captured_seg(monkeypatch, vol, seg_array, labels, tmp_path, "BINARY")
    items = list(seg.PerFrameFunctionalGroupsSequence)
    by_plane: dict[str, set[int]] = {}
    for item in items:
        (derivation,) = item.DerivationImageSequence
        (source,) = derivation.SourceImageSequence
        by_plane.setdefault(str(source.ReferencedSOPInstanceUID), set()).add(id(item.DerivationImageSequence))
    assert len(items) > len(by_plane) > 1  # several segments on a plane: frames to share with
    assert all(len(ids) == 1 for ids in by_plane.values())
    assert len({id(item) for item in items}) == len(items)  # each frame its own item still
    monkeypatch.setattr(frame_groups.FrameSpool, "subclass", lambda self, cls: cls)  # highdicom's own object
    own = _captured_seg(monkeypatch, vol, seg_array, labels, tmp_path, "BINARY")
    assert seg.PerFrameFunctionalGroupsSequence == own.PerFrameFunctionalGroupsSequence


def test_sr_bytes_equal_pydicoms(dicom_series_dirs: dict[str, Path], seg_array: np.ndarray, labels: dict[int, str],
                                tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The SR's content tree and evidence (nested items, text in several VRs, numbers) are encoded here too: the
    file write_dicom_sr writes is pydicom's own save of the same object, byte for byte."""
    from edgeseg.runtime.write import sr as sr_module
    from edgeseg.runtime.write.statistics import compute_statistics

    series = tmp_path / "series"
    shutil.copytree(dicom_series_dirs["oblique"], series)
    vol = read_series(series)
    segments = write_dicom_seg(tmp_path / "seg.dcm", vol, seg_array, labels)
    seen: list[Any] = []

    def keep(ds: Any, path: Any) -> None:
        seen.append(ds)
        frame_groups.save_as(ds, path)

    monkeypatch.setattr(sr_module, "save_as", keep)
    sr_module.write_dicom_sr(tmp_path / "sr.dcm", vol, tmp_path / "seg.dcm", segments,
                             compute_statistics(vol, seg_array, labels))
    [report] = seen
    assert {elem.keyword for elem in report if elem.VR == "SQ"} >= {"ContentSequence",
                                                                    "CurrentRequestedProcedureEvidenceSequence"}
    plain, encoded = _both_ways_sr(report, tmp_path)
    assert encoded == plain
    assert (tmp_path / "sr.dcm").read_bytes() == plain


def _both_ways_sr(ds: Any, folder: Path) -> tuple[bytes, bytes]:
    sequences = {elem.tag: elem for elem in ds if elem.VR == "SQ"}
    raw: list[bool] = []
    original = Dataset.save_as

    def counted(self: Dataset, *args: Any, **kwargs: Any) -> None:
        raw.extend(self.get_item(tag).is_raw for tag in sequences)  # (indexing would decode them)
        original(self, *args, **kwargs)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(Dataset, "save_as", counted)
        frame_groups.save_as(ds, folder / "encoded.dcm")
    assert raw and all(raw)  # pydicom got every sequence encoded here, not the items to encode itself
    assert all(ds[tag] is elem and not ds[tag].is_raw for tag, elem in sequences.items())  # put back
    ds.save_as(folder / "plain.dcm")
    return (folder / "plain.dcm").read_bytes(), (folder / "encoded.dcm").read_bytes()


def test_enhanced_source_bytes_equal_pydicoms(mr_image: tuple[np.ndarray, np.ndarray], seg_array: np.ndarray,
                                              labels: dict[int, str], tmp_path: Path,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    arr, aff = geometry_variants(*mr_image)["oblique"]
    src = write_enhanced_mr((arr, aff), tmp_path / "enh" / "MF0001", frame_order="shuffled")
    vol = read_series(src)
    seg = _captured_seg(monkeypatch, vol, seg_array, labels, tmp_path, "BINARY")
    plain, encoded = _both_ways(seg, tmp_path)
    assert encoded == plain


def _multiframe(n_frames: int = 6, charset: str | None = "ISO_IR 100") -> Dataset:
    """A small multi-frame object: per-frame groups sharing each plane's items, with text in them."""
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = pydicom.uid.SegmentationStorage
    ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.SOPClassUID = pydicom.uid.SegmentationStorage
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID
    if charset:
        ds.SpecificCharacterSet = charset
    ds.PatientName = "Müller^Jörg"
    ds.NumberOfFrames = n_frames
    planes = []
    for k in range(2):
        position = Dataset()
        position.ImagePositionPatient = [0.0, 0.0, 1.5 * k]
        source = Dataset()
        source.ReferencedSOPClassUID = pydicom.uid.MRImageStorage
        source.ReferencedSOPInstanceUID = generate_uid()
        purpose = Dataset()
        purpose.CodeValue, purpose.CodingSchemeDesignator = "121322", "DCM"
        purpose.CodeMeaning = "Source image for image processing operation (ç)"
        source.PurposeOfReferenceCodeSequence = [purpose]
        planes.append((position, source))
    items = []
    for f in range(n_frames):
        position, source = planes[f % 2]
        item = Dataset()
        content = Dataset()
        content.DimensionIndexValues = [f // 2 + 1, f % 2 + 1]
        item.FrameContentSequence = [content]
        item.PlanePositionSequence = Sequence([position])
        derivation = Dataset()
        derivation.SourceImageSequence = Sequence([source])
        item.DerivationImageSequence = [derivation]
        identification = Dataset()
        identification.ReferencedSegmentNumber = f // 2 + 1
        item.SegmentIdentificationSequence = [identification]
        items.append(item)
    ds.PerFrameFunctionalGroupsSequence = items
    ds.BitsAllocated, ds.Rows, ds.Columns = 1, 4, 4
    ds.PixelData = bytes(range(2 * n_frames))  # 16 bits per frame
    return ds


@pytest.mark.parametrize("charset", ["ISO_IR 100", "ISO_IR 192", None])
def test_shared_items_are_encoded_once(charset: str | None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    ds = _multiframe(charset=charset)
    calls = _plain_saves(monkeypatch)
    plain, encoded = _both_ways(ds, tmp_path)
    # pydicom saved the encoded sequence as a raw element and the rest but the pixels (appended after it,
    # _save_pixels_copied), then the plain dataset
    assert calls == [True, "appended", False, False]
    assert encoded == plain
    encoder = frame_groups._Encoder(ds.get("SpecificCharacterSet", "iso8859"))
    encoder.sequence(_PER_FRAME, ds.PerFrameFunctionalGroupsSequence)
    # per frame its item, frame content, derivation and identification; the 2 planes' position, source and purpose
    assert encoder.distinct == 6 * 4 + 2 * 3


@pytest.mark.filterwarnings("ignore:A value of type 'uint32':UserWarning")  # pydicom keeps it and writes it
def test_number_elements_are_packed_as_pydicom_packs_them(tmp_path: Path) -> None:
    """The binary-number elements the encoder packs itself (one or several values, signed, floating, empty, numpy
    and bool values, and SS, which pydicom writes apart for LUT descriptors) give pydicom's own bytes."""
    ds = _multiframe()
    values = [("US", 0x00280010, 7), ("US", 0x00280011, [1, 2, 3]), ("UL", 0x00209157, [4, 70000]),
              ("SL", 0x00189219, -5), ("FD", 0x00189087, 1.25), ("FD", 0x00189089, [0.5, -1.0, 2.0]),
              ("FL", 0x00189327, 3.5), ("FL", 0x00189328, [1.0, 2.5]), ("US", 0x00280100, None),
              ("UL", 0x00209128, np.uint32(9)), ("US", 0x00280102, True), ("SS", 0x00281101, [256, -2, 16]),
              ("FD", 0x00189088, 3)]
    for f, item in enumerate(ds.PerFrameFunctionalGroupsSequence):
        content = item.FrameContentSequence[0]
        for vr, tag, value in values[f::2]:
            content.add_new(tag, vr, value)
    plain, encoded = _both_ways(ds, tmp_path)
    assert encoded == plain


@pytest.mark.filterwarnings("ignore:Invalid value:UserWarning")  # pydicom's, as the value is set
def test_an_unpackable_number_fails_as_pydicom_fails(tmp_path: Path) -> None:
    ds = _multiframe()
    ds.PerFrameFunctionalGroupsSequence[2].FrameContentSequence[0].add_new(0x00280010, "US", 70000)  # over 16 bits
    with pytest.raises(OSError, match="ushort format requires") as ours:
        frame_groups.save_as(ds, tmp_path / "encoded.dcm")
    with pytest.raises(OSError, match="ushort format requires"):
        ds.save_as(tmp_path / "plain.dcm")
    assert "Rows" in str(ours.value) and "70000" in str(ours.value)  # pydicom's message for the element
    assert not (tmp_path / "encoded.dcm").exists()  # it fails while encoding, before the file is opened


def _plain_saves(monkeypatch: pytest.MonkeyPatch) -> list[Any]:
    calls: list[Any] = []
    original = Dataset.save_as

    def counted(self: Dataset, *args: Any, **kwargs: Any) -> None:
        calls.append(self.get_item(_PER_FRAME).is_raw)  # (indexing would decode it)
        calls.append(self["PixelData"].is_buffered if "PixelData" in self else "appended")
        original(self, *args, **kwargs)

    monkeypatch.setattr(Dataset, "save_as", counted)
    return calls


@pytest.mark.parametrize("what", ["implicit VR", "undefined-length item", "undefined-length sequence",
                                  "ambiguous VR", "character set in an item"])
def test_what_it_does_not_cover_is_saved_by_pydicom(what: str, tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    ds = _multiframe()
    item = ds.PerFrameFunctionalGroupsSequence[1]
    if what == "implicit VR":
        ds.file_meta.TransferSyntaxUID = ImplicitVRLittleEndian
    elif what == "undefined-length item":
        item.is_undefined_length_sequence_item = True
    elif what == "undefined-length sequence":
        item["FrameContentSequence"].is_undefined_length = True
    elif what == "ambiguous VR":
        item.FrameContentSequence[0].add_new(0x00280106, "US or SS", b"\x00\x00")  # SmallestImagePixelValue
    else:
        item.FrameContentSequence[0].SpecificCharacterSet = "ISO_IR 192"
    calls = _plain_saves(monkeypatch)
    frame_groups.save_as(ds, tmp_path / "encoded.dcm")
    assert calls == [False, True]  # one save, by pydicom, of the sequence as it was (not the raw encoding)
    ds.save_as(tmp_path / "plain.dcm")
    assert (tmp_path / "encoded.dcm").read_bytes() == (tmp_path / "plain.dcm").read_bytes()


def test_odd_length_pixels_are_not_streamed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    ds = _multiframe()
    ds.PixelData = b"\x01\x02\x03"  # pydicom pads it to even length as it writes it; a buffer's length is its own
    calls = _plain_saves(monkeypatch)
    plain, encoded = _both_ways(ds, tmp_path)
    assert calls[:2] == [True, False] and encoded == plain


def test_a_failed_save_leaves_the_dataset_as_it_was(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    ds = _multiframe()
    before, pixels = ds[_PER_FRAME], ds["PixelData"]

    def fails(self: Dataset, *args: Any, **kwargs: Any) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(Dataset, "save_as", fails)
    with pytest.raises(OSError, match="disk full"):
        frame_groups.save_as(ds, tmp_path / "x.dcm")
    assert ds[_PER_FRAME] is before and ds["PixelData"] is pixels and ds.original_encoding == (None, None)


def test_saves_in_several_threads_put_pydicoms_chunk_size_back_when_the_last_ends() -> None:
    """The pixel data is copied in 4 MiB chunks while any save runs (pydicom's process-wide setting); saves that
    overlap in two threads leave the setting as it was before the first only when the last one ends."""
    import threading

    from pydicom import config

    before = config.settings.buffered_read_size
    first_in, second_in, first_out = threading.Event(), threading.Event(), threading.Event()
    seen: dict[str, int] = {}

    def first() -> None:
        with frame_groups._read_chunks(frame_groups._CHUNK):
            first_in.set()
            second_in.wait(10)
        first_out.set()

    def second() -> None:
        first_in.wait(10)
        with frame_groups._read_chunks(frame_groups._CHUNK):
            second_in.set()
            first_out.wait(10)
            seen["after the first ended"] = config.settings.buffered_read_size

    threads = [threading.Thread(target=first), threading.Thread(target=second)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(20)
    assert seen == {"after the first ended": max(before, frame_groups._CHUNK)}
    assert config.settings.buffered_read_size == before and frame_groups._CHUNKS.saves == 0


@pytest.mark.skipif(not hasattr(os, "copy_file_range"), reason="os.copy_file_range is Linux's only")
@pytest.mark.parametrize("kernel", ["refused", "stops half way"])
def test_the_pixels_appended_without_the_kernel_copy_are_the_same_bytes(kernel: str, tmp_path: Path,
                                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    """The pixel data appended after pydicom's save (_save_pixels_copied) from a spooled file, where the kernel
    refuses to copy between the two files or stops part of the way: the rest copied through a buffer, the same
    bytes as pydicom's own save."""
    ds = _multiframe(n_frames=64)
    ds.PixelData = bytes(range(256)) * 512  # 128 KiB
    spool = tmp_path / "spool"
    spool.write_bytes(ds.PixelData)
    calls: list[int] = []

    def copy(src: int, dst: int, count: int, offset_src: int | None = None, *args: Any) -> int:
        calls.append(count)
        if kernel == "refused":
            raise OSError(18, "Invalid cross-device link")
        if len(calls) > 1:
            return 0
        return real(src, dst, count // 3, offset_src)

    real = os.copy_file_range
    ds.save_as(tmp_path / "plain.dcm")
    monkeypatch.setattr(frame_groups.os, "copy_file_range", copy)
    with open(spool, "rb") as fh:
        from pydicom.dataelem import DataElement

        ds["PixelData"] = DataElement(0x7FE00010, "OB", fh)
        frame_groups.save_as(ds, tmp_path / "encoded.dcm")
        assert fh.tell() == 0  # the buffer back where it was: a second save writes the same pixels
    assert calls  # the kernel was asked first
    assert (tmp_path / "encoded.dcm").read_bytes() == (tmp_path / "plain.dcm").read_bytes()


@pytest.mark.parametrize("what", ["an element after the pixels", "a deflated transfer syntax"])
def test_pixels_not_last_or_not_native_are_saved_by_pydicom(what: str, tmp_path: Path,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    ds = _multiframe()
    if what == "an element after the pixels":
        ds.add_new(0xFFFCFFFC, "OB", b"\x00\x00")  # Data Set Trailing Padding
    else:
        from pydicom.uid import DeflatedExplicitVRLittleEndian

        ds.file_meta.TransferSyntaxUID = DeflatedExplicitVRLittleEndian  # appended bytes would be outside the stream
    calls = _plain_saves(monkeypatch)
    plain, encoded = _both_ways(ds, tmp_path)
    assert calls[:2] == [True, True] and encoded == plain  # the pixels saved by pydicom, from a buffer


def test_spooled_batches_keep_their_order_and_a_write_error_is_raised(tmp_path: Path) -> None:
    """FrameSpool writes frames in batches from a thread of its own: the file holds them in order once flushed,
    and a failed write (a full disk) is raised in the caller, not lost in the thread."""
    frames = [bytes([i % 251]) * 40000 for i in range(300)]  # 12 MB: several batches
    with frame_groups.FrameSpool(tmp_path) as spool:
        for frame in frames:
            spool.write(frame)
        spool.flush()
        spool.file.seek(0)
        assert spool.file.read() == b"".join(frames)

    class Full:
        def write(self, data: bytes) -> int:
            raise OSError(28, "No space left on device")

        def close(self) -> None:
            pass

    with frame_groups.FrameSpool(tmp_path) as spool:
        spool.file.close()
        spool.file = Full()  # type: ignore[assignment]
        with pytest.raises(OSError, match="No space left"):
            for frame in frames:
                spool.write(frame)
            spool.flush()
    assert not [t for t in threading.enumerate() if t.name.startswith("edgeseg-spool")]  # the writer ended
