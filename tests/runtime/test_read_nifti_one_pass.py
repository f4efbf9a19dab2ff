"""The NIfTI reader's one pass (issue 21): values bit for bit those of nibabel's ``get_fdata(dtype=np.float32)``
(NaN/inf replaced by 0) for every integer and float type, scaled or not, gzipped or not, big- or little-endian,
over several slabs; the header and affine as ``nib.load`` gives them; a gzip stream unpacked once, with the same
refusals of truncated, damaged and trailing data."""
from __future__ import annotations

import gzip
import logging
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from edgeseg.errors import InvalidSeriesError
from edgeseg.runtime.read import _nifti, read_series
from edgeseg.runtime.read.limits import check_gzip_stream, nifti_promise

SHAPE = (13, 11, 10)


def expected(path: Path) -> np.ndarray:
    """What the reader did before the one pass: nibabel's float32 data, C-ordered, NaN/inf set to 0."""
    data = np.ascontiguousarray(nib.load(str(path)).get_fdata(dtype=np.float32))
    data[~np.isfinite(data)] = 0.0
    return data


def values(dtype: np.dtype) -> np.ndarray:
    rng = np.random.default_rng(7)
    dtype = np.dtype(dtype)
    if dtype.kind == "f":
        arr = rng.normal(0, 1000, SHAPE).astype(dtype)
        arr.flat[:4] = [1e-30, -0.0, 123456.789, -7.25]
        return arr
    info = np.iinfo(dtype)
    arr = rng.integers(info.min, info.max, SHAPE, dtype=dtype, endpoint=True)
    arr.flat[:2] = [info.min, info.max]
    if dtype.itemsize == 8:  # integers a float64 rounds before float32 does (nibabel's cast goes through float64)
        arr.flat[2:4] = [(1 << 53) + 1, (1 << 40) + (1 << 16) + 1]
    return arr


def save(path: Path, arr: np.ndarray, slope_inter: tuple[float, float] | None, big_endian: bool = False) -> Path:
    """``arr`` stored as it is (nibabel's own writer would rescale it) under a header carrying ``slope_inter``."""
    header = nib.Nifti1Header(endianness=">" if big_endian else "<")
    header.set_data_dtype(arr.dtype)
    header.set_data_shape(arr.shape)
    affine = np.diag([0.5, 0.75, 1.5, 1.0])
    header.set_qform(affine, code=1)
    header.set_sform(affine, code=2)
    if slope_inter is not None:
        header["scl_slope"], header["scl_inter"] = slope_inter
    header.set_data_offset(352)
    blob = header.binaryblock + b"\0\0\0\0" + arr.astype(header.get_data_dtype()).tobytes(order="F")
    if path.name.endswith(".gz"):
        with gzip.open(path, "wb") as fh:
            fh.write(blob)
    else:
        path.write_bytes(blob)
    return path


@pytest.fixture(autouse=True)
def one_pass_in_small_slabs(monkeypatch) -> None:
    monkeypatch.setattr(_nifti, "_SLAB_SLICES", 3)  # 10 slices: slabs of 3, 3, 3 and 1

    def not_here(*args, **kwargs):
        raise AssertionError("nibabel's reader ran: these files are for the one pass")

    monkeypatch.setattr(_nifti, "_read_with_nibabel", not_here)


@pytest.mark.parametrize("dtype", ["uint8", "int8", "int16", "uint16", "int32", "uint32", "int64", "uint64",
                                   "float32", "float64"])
@pytest.mark.parametrize("slope_inter", [None, (2.0, -10.0), (0.3, 1.7)])
@pytest.mark.parametrize("name", ["v.nii", "v.nii.gz"])
def test_values_are_nibabels_bit_for_bit(tmp_path, dtype, slope_inter, name) -> None:
    path = save(tmp_path / name, values(np.dtype(dtype)), slope_inter)
    vol = read_series(path)
    want = expected(path)
    assert vol.array.dtype == np.float32 and vol.array.flags.c_contiguous and vol.shape == SHAPE
    np.testing.assert_array_equal(vol.array.view(np.uint32), want.view(np.uint32))
    img = nib.load(str(path))
    np.testing.assert_array_equal(vol.affine, img.affine)
    assert vol.nifti_header.binaryblock == img.header.binaryblock


@pytest.mark.parametrize("dtype", ["int16", "float64"])
def test_big_endian_files(tmp_path, dtype) -> None:
    path = save(tmp_path / "be.nii.gz", values(np.dtype(dtype)), (1.5, 3.0), big_endian=True)
    assert nib.load(str(path)).header.endianness == ">"
    np.testing.assert_array_equal(read_series(path).array.view(np.uint32), expected(path).view(np.uint32))


def test_non_finite_values_are_zero_with_a_warning(tmp_path, caplog) -> None:
    arr = values(np.dtype(np.float64))
    arr.flat[10:14] = [np.nan, np.inf, -np.inf, 1e300]  # 1e300 overflows float32 to inf
    arr.flat[-1] = np.nan  # in the last slab
    path = save(tmp_path / "nan.nii.gz", arr, None)
    with caplog.at_level(logging.WARNING, logger="edgeseg.runtime.read._nifti"):
        vol = read_series(path)
    assert np.isfinite(vol.array).all()
    assert vol.array.flat[10:14].tolist() == [0.0] * 4 and vol.array[-1, -1, -1] == 0.0
    np.testing.assert_array_equal(vol.array.view(np.uint32), expected(path).view(np.uint32))
    assert np.signbit(vol.array.flat[1])  # -0.0 stays -0.0, as nibabel has it
    assert [r.getMessage().split(": ", 1)[1] for r in caplog.records] == [
        "5 non-finite voxel values (NaN/inf) replaced by 0"]


def test_extensions_and_header_as_nib_load_has_them(tmp_path, mr_image) -> None:
    arr, aff = mr_image
    img = nib.Nifti1Image(arr, aff)
    img.header.extensions.append(nib.nifti1.Nifti1Extension("comment", b"edgeseg one-pass test " * 20))
    path = tmp_path / "ext.nii.gz"
    nib.save(img, str(path))
    loaded = nib.load(str(path))
    assert int(loaded.dataobj.offset) > 352
    vol = read_series(path)
    assert vol.nifti_header.binaryblock == loaded.header.binaryblock
    assert [e.get_content() for e in vol.nifti_header.extensions] == [
        e.get_content() for e in loaded.header.extensions]
    np.testing.assert_array_equal(vol.array, expected(path))
    np.testing.assert_array_equal(vol.affine, loaded.affine)


def test_the_gzip_stream_is_unpacked_once(tmp_path, unpacked, mr_image) -> None:
    path = tmp_path / "once.nii.gz"
    nib.save(nib.Nifti1Image(*mr_image), str(path))
    _, _, end = nifti_promise(path)
    unpacked.clear()
    read_series(path)
    assert end < sum(unpacked) <= 540 + end + 1  # the header check, then header and data once, and one byte


def test_truncated_damaged_and_trailing_streams_are_refused(tmp_path, mr_image) -> None:
    good = tmp_path / "good.nii.gz"
    nib.save(nib.Nifti1Image(*mr_image), str(good))
    data = good.read_bytes()
    _, _, end = nifti_promise(good)
    assert check_gzip_stream(good, end) == end

    cut = tmp_path / "cut.nii.gz"
    cut.write_bytes(data[: len(data) * 3 // 4])
    with pytest.raises(InvalidSeriesError, match="cut.nii.gz: the compressed stream is truncated or damaged"):
        read_series(cut)

    damaged = tmp_path / "damaged.nii.gz"
    blob = bytearray(data)
    blob[len(blob) // 2: len(blob) // 2 + 64] = bytes(64)
    damaged.write_bytes(bytes(blob))
    with pytest.raises(InvalidSeriesError, match="truncated or damaged|truncated"):
        read_series(damaged)

    short = tmp_path / "short.nii.gz"  # a complete gzip stream holding fewer bytes than promised
    short.write_bytes(gzip.compress(gzip.decompress(data)[:-100]))
    with pytest.raises(InvalidSeriesError, match=f"unpacks to {end - 100:,} bytes, fewer than the {end:,}"):
        read_series(short)

    trailing = tmp_path / "trailing.nii.gz"
    trailing.write_bytes(data + gzip.compress(b"\0" * 1000))
    with pytest.raises(InvalidSeriesError, match="decompression bomb"):
        read_series(trailing)

    plain = tmp_path / "plain.nii"
    plain.write_bytes(gzip.decompress(data)[:-10])
    with pytest.raises(InvalidSeriesError, match="shorter than its header says"):
        read_series(plain)


@pytest.mark.parametrize("cores", [1, 2])
def test_one_core_and_the_unpacking_thread_read_the_same(tmp_path, monkeypatch, mr_image, cores) -> None:
    monkeypatch.setattr(_nifti, "usable_cores", lambda: cores)
    threads: list[str] = []
    original = _nifti.PromisedStream.readinto

    def readinto(self, buf):
        import threading

        threads.append(threading.current_thread().name)
        return original(self, buf)

    monkeypatch.setattr(_nifti.PromisedStream, "readinto", readinto)
    path = tmp_path / "mr.nii.gz"
    nib.save(nib.Nifti1Image(*mr_image), str(path))
    vol = read_series(path)
    np.testing.assert_array_equal(vol.array.view(np.uint32), expected(path).view(np.uint32))
    slabs = threads[1:]  # after the header
    assert len(slabs) == 7  # 20 slices in slabs of 3
    assert all(name.startswith("edgeseg-read") for name in slabs) == (cores > 1)


def test_an_error_while_converting_waits_for_the_unpacking_thread(tmp_path, monkeypatch, mr_image) -> None:
    monkeypatch.setattr(_nifti, "usable_cores", lambda: 2)
    done: list[bool] = []
    original = _nifti.PromisedStream.readinto

    def slow_readinto(self, buf):
        import time

        time.sleep(0.05)
        original(self, buf)
        done.append(self._fh is not None)  # the file was still open when the read ended

    def failing_scale(out, raw, slope, inter):
        raise MemoryError("test")

    monkeypatch.setattr(_nifti.PromisedStream, "readinto", slow_readinto)
    monkeypatch.setattr(_nifti, "scale_into", failing_scale)
    path = tmp_path / "mr.nii.gz"
    nib.save(nib.Nifti1Image(*mr_image), str(path))
    with pytest.raises(MemoryError):
        read_series(path)
    assert done and all(done)


@pytest.mark.parametrize("name", ["n2.nii", "n2.nii.gz"])
def test_nifti2_files(tmp_path, mr_image, name) -> None:
    arr, aff = mr_image
    img = nib.Nifti2Image(arr.astype(np.float32) * 0.5, aff)
    img.header.set_slope_inter(1.25, -3.0)
    path = tmp_path / name
    nib.save(img, str(path))
    loaded = nib.load(str(path))
    assert isinstance(loaded, nib.Nifti2Image)
    vol = read_series(path)
    np.testing.assert_array_equal(vol.array.view(np.uint32), expected(path).view(np.uint32))
    np.testing.assert_array_equal(vol.affine, loaded.affine)
    assert vol.nifti_header.binaryblock == loaded.header.binaryblock
