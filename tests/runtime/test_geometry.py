"""Geometry is sacred: masks come back on exactly the input's grid, landmarks at the same world position.

A synthetic threshold model (label 1 where the voxel is bright) makes the expected mask known for any affine.
"""
from __future__ import annotations

import numpy as np
import pytest

from edgeseg.bundle import load_bundle
from edgeseg.runtime.read.volume import Volume
from edgeseg.runtime.options import SegmentOptions
from edgeseg.runtime.segmenter import Segmenter
from helpers.synthetic import make_bundle


def _rotation(ax: float, ay: float, az: float) -> np.ndarray:
    cx, sx, cy, sy, cz, sz = np.cos(ax), np.sin(ax), np.cos(ay), np.sin(ay), np.cos(az), np.sin(az)
    rx = np.array([[1, 0, 0], [0, cx, -sx], [0, sx, cx]])
    ry = np.array([[cy, 0, sy], [0, 1, 0], [-sy, 0, cy]])
    rz = np.array([[cz, -sz, 0], [sz, cz, 0], [0, 0, 1]])
    return rz @ ry @ rx


def _affine(columns: np.ndarray, spacing, origin=(10.0, -20.0, 30.0)) -> np.ndarray:
    aff = np.eye(4)
    aff[:3, :3] = columns * np.asarray(spacing)[None, :]
    aff[:3, 3] = origin
    return aff


GEOMETRIES = {
    "RAS axial": (np.eye(3), (1.0, 1.0, 1.0)),
    "LPS axial": (np.diag([-1.0, -1.0, 1.0]), (1.0, 1.0, 1.0)),
    "sagittal": (np.array([[0, 0, -1.0], [1.0, 0, 0], [0, -1.0, 0]]), (1.0, 1.0, 1.0)),
    "coronal": (np.array([[1.0, 0, 0], [0, 0, 1.0], [0, -1.0, 0]]), (1.0, 1.0, 1.0)),
    "oblique": (_rotation(0.3, -0.2, 0.5), (1.0, 1.0, 1.0)),
    "anisotropic LPS": (np.diag([-1.0, -1.0, 1.0]), (1.0, 1.0, 4.0)),
}


def _volume(shape, affine, landmark, value=1.0, background=0.1) -> Volume:
    arr = np.full(shape, background, dtype=np.float32)
    arr[tuple(slice(c, c + 2) for c in landmark)] = value
    return Volume(array=arr, affine=affine, source=None, kind="nifti", name="synthetic")  # type: ignore[arg-type]


def _world_centroid(mask: np.ndarray, affine: np.ndarray) -> np.ndarray:
    idx = np.argwhere(mask).mean(axis=0)
    return (affine @ np.r_[idx, 1.0])[:3]


@pytest.mark.parametrize("name", list(GEOMETRIES))
@pytest.mark.parametrize("reorient", ["none", "RAS"])
def test_mask_matches_input_grid_and_landmark_world_position(tmp_path, name, reorient):
    columns, spacing = GEOMETRIES[name]
    # the network's spacing equals the (reoriented) input spacing: no resampling, so the mask is exact
    oriented_spacing = spacing if reorient == "none" else tuple(
        np.asarray(spacing)[np.argmax(np.abs(columns), axis=1)])
    bundle = load_bundle(make_bundle(tmp_path / "b", spacing=tuple(oriented_spacing)[::-1], reorient=reorient,
                                     patch=(8, 8, 8)))
    vol = _volume((13, 11, 9), _affine(columns, spacing), landmark=(4, 6, 2))
    labels, _ = Segmenter(bundle, SegmentOptions(precision="fp32")).segment_volume(vol)
    assert labels.shape == vol.array.shape
    expected = vol.array > 0.5
    np.testing.assert_array_equal(labels == 1, expected)
    np.testing.assert_allclose(_world_centroid(labels == 1, vol.affine), _world_centroid(expected, vol.affine))


def test_resampled_landmark_lands_within_a_voxel(tmp_path):
    """Input at 2 mm, network at 1 mm (and anisotropic in-plane/z): the blob comes back at the same place."""
    bundle = load_bundle(make_bundle(tmp_path / "b", spacing=(1.0, 1.0, 1.0), patch=(16, 16, 16)))
    affine = _affine(np.diag([-1.0, -1.0, 1.0]), (2.0, 2.0, 3.0))
    vol = _volume((20, 18, 12), affine, landmark=(8, 5, 6), value=10.0)
    labels, _ = Segmenter(bundle, SegmentOptions(precision="fp32")).segment_volume(vol)
    assert labels.shape == vol.array.shape
    got = _world_centroid(labels == 1, affine)
    want = _world_centroid(vol.array > 1, affine)
    assert np.linalg.norm(got - want) < 1.0  # mm, well under one input voxel


def test_volume_smaller_than_patch(tmp_path):
    bundle = load_bundle(make_bundle(tmp_path / "b", patch=(16, 16, 16)))
    vol = _volume((5, 6, 7), np.eye(4), landmark=(1, 2, 3))
    labels, record = Segmenter(bundle, SegmentOptions(precision="fp32")).segment_volume(vol)
    assert labels.shape == (5, 6, 7)
    np.testing.assert_array_equal(labels == 1, vol.array > 0.5)
    assert record["parts"][0]["tiles"] == 1


def test_totalsegmentator_pre_resampling_returns_to_input_grid(tmp_path):
    """TotalSegmentator wrapping: RAS, zoom to 1.5 mm with int32 truncation, back with order 0."""
    bundle = load_bundle(make_bundle(tmp_path / "b", spacing=(1.5, 1.5, 1.5), reorient="RAS", patch=(16, 16, 16),
                                     pre_resample={"spacing": [1.5, 1.5, 1.5], "order": 3, "cast": "int32"},
                                     threshold=500.0))
    affine = _affine(np.diag([-1.0, -1.0, 1.0]), (3.0, 3.0, 3.0))
    vol = _volume((12, 10, 8), affine, landmark=(5, 4, 3), value=1000.0, background=100.0)
    labels, _ = Segmenter(bundle, SegmentOptions(precision="fp32")).segment_volume(vol)
    assert labels.shape == vol.array.shape
    np.testing.assert_array_equal(labels == 1, vol.array > 500)


def test_later_parts_overwrite_earlier_ones_in_the_merged_map(tmp_path):
    bundle = load_bundle(make_bundle(tmp_path / "b", parts=2))
    vol = _volume((10, 10, 10), np.eye(4), landmark=(3, 3, 3))
    labels, record = Segmenter(bundle, SegmentOptions(precision="fp32")).segment_volume(vol)
    assert set(np.unique(labels)) == {0, 2}  # part 2's label 1 is merged label 2
    assert [p["name"] for p in record["parts"]] == ["part0", "part1"]


def test_transpose_forward_is_undone(tmp_path):
    bundle = load_bundle(make_bundle(tmp_path / "b", transpose_forward=(2, 0, 1), patch=(8, 8, 8)))
    vol = _volume((13, 11, 9), np.eye(4), landmark=(4, 6, 2))
    labels, _ = Segmenter(bundle, SegmentOptions(precision="fp32")).segment_volume(vol)
    np.testing.assert_array_equal(labels == 1, vol.array > 0.5)


def test_missing_gpu_and_unknown_device_give_clear_errors(tmp_path):
    from edgeseg.errors import BundleError, ConfigError
    from edgeseg.runtime.infer.engine import available_devices

    bundle = load_bundle(make_bundle(tmp_path / "b"))
    vol = _volume((10, 10, 10), np.eye(4), landmark=(3, 3, 3))
    # deterministic failures are ConfigError / BundleError (the watcher gives them up at once)
    with pytest.raises(ConfigError, match="'TPU' is not a device edgeseg runs on: use CPU, GPU"):
        Segmenter(bundle, SegmentOptions(device="TPU", precision="fp32")).segment_volume(vol)
    if not any(d.startswith("GPU") for d in available_devices()):
        with pytest.raises(ConfigError, match="Device GPU is not on this PC"):
            Segmenter(bundle, SegmentOptions(device="GPU", precision="fp32")).segment_volume(vol)
    with pytest.raises(BundleError, match="has no int8 model"):  # the same class as asking the bundle for it
        Segmenter(bundle, SegmentOptions(precision="int8")).segment_volume(vol)


@pytest.mark.parametrize("order", [0, 1, 3])
@pytest.mark.parametrize("mode", ["nearest", "constant"])
def test_pre_resampling_zooms_the_float32_view_to_totalsegmentators_bits(order: int, mode: str) -> None:
    """TotalSegmentator zooms a float64 copy of the image; zooming the float32 reoriented view into a float64
    output (no copy) gives the same bits, then the same int32 cast."""
    from scipy import ndimage

    from edgeseg.bundle.schema import PreResample
    from edgeseg.runtime.preprocess import _pre_resample

    rng = np.random.default_rng(order)
    image = (rng.random((41, 37, 23), dtype=np.float32) * 1200).astype(np.float32)
    view = image[::-1].transpose(1, 0, 2)
    pre = PreResample(spacing=(1.5, 1.5, 1.5), order=order, cast="int32", mode=mode, order_back=0,
                      header_float32=True)
    out, spacing = _pre_resample(view, (0.7, 0.9, 2.1), pre)
    zoom = np.asarray((0.7, 0.9, 2.1), np.float32).astype(np.float64) / 1.5
    expected = ndimage.zoom(view.astype(np.float64), zoom, order=order, mode=mode).astype(np.int32)
    np.testing.assert_array_equal(out, expected.astype(np.float32))
    assert out.dtype == np.float32


def test_every_part_frees_its_network_memory_after_its_window(tmp_path, monkeypatch):
    """The activations of a part are released once its window is done, the last part's too: the labels are read
    out, resampled and written without them (about 360 MB for a TS-sized network)."""
    from edgeseg.runtime.infer.engine import Engine

    released: list[str] = []
    monkeypatch.setattr(Engine, "release", lambda self: released.append(self.part.name))
    bundle = load_bundle(make_bundle(tmp_path / "b", parts=2))
    vol = _volume((10, 10, 10), np.eye(4), landmark=(3, 3, 3))
    segmenter = Segmenter(bundle, SegmentOptions(precision="fp32"))
    segmenter.segment_volume(vol)
    segmenter.segment_volume(vol)
    assert released == ["part0", "part1", "part0", "part1"]


def test_no_part_holds_an_infer_request_between_series_and_the_next_series_gets_the_same_labels(tmp_path):
    """After each part's window its engine drops its infer requests with their tensors (a window's accumulator
    region in and out: 250 MB for a TS-sized part), so neither another part's window nor the time between series
    holds them; the next series creates them again and gets the same labels."""
    bundle = load_bundle(make_bundle(tmp_path / "b", parts=2))
    vol = _volume((10, 10, 10), np.eye(4), landmark=(3, 3, 3))
    segmenter = Segmenter(bundle, SegmentOptions(precision="fp32"))
    first, _ = segmenter.segment_volume(vol)
    engines = [segmenter.engine(part) for part in bundle.variant(None).parts]
    assert len(engines) == 2
    assert all(e.request is None and not e.spares for e in engines)
    second, _ = segmenter.segment_volume(vol)
    assert all(e.request is None and not e.spares for e in engines)
    np.testing.assert_array_equal(first, second)
    assert first.any()  # the landmark was segmented: the comparison compares labels


def test_series_in_two_threads_take_turns_on_a_parts_requests(tmp_path):
    """A watcher with max_concurrent_series 2 segments two series at once over one segmenter's engines: a window
    has its part's requests alone (Engine.window; another thread's window of the part waits), so each series gets
    the labels it gets alone."""
    from concurrent.futures import ThreadPoolExecutor

    bundle = load_bundle(make_bundle(tmp_path / "b", parts=2))
    volumes = [_volume((10, 10, 10), np.eye(4), landmark=(3, 3, 3)),
               _volume((12, 10, 9), np.eye(4), landmark=(7, 5, 4))]
    segmenter = Segmenter(bundle, SegmentOptions(precision="fp32"))
    alone = [segmenter.segment_volume(v)[0] for v in volumes]
    assert not np.array_equal(alone[0][:10, :10, :9], alone[1][:10, :10, :9])  # tells the two apart
    with ThreadPoolExecutor(2) as pool:
        together = list(pool.map(lambda v: segmenter.segment_volume(v)[0], volumes * 4))
    for i, labels in enumerate(together):
        np.testing.assert_array_equal(labels, alone[i % 2])
