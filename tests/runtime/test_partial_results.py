"""No silent output failure (issue 11, item 6): a requested output that could not be written makes the result
*partial* (manifest ``status`` and ``missing_outputs``, the command line's partial exit code), and a folder where
some series were segmented and others not exits with the "some failed" code."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from edgeseg.cli import main
from edgeseg.demo.dicom_series import write_dicom_series
from edgeseg.errors import EXIT_PARTIAL, EXIT_SOME_FAILED, InvalidSeriesError
from edgeseg.runtime.options import OutputOptions
from edgeseg.runtime.read import read_series
from edgeseg.runtime.write import COMPLETE, PARTIAL, results as results_module, write_results

NO_EXTRAS = OutputOptions(per_structure=False, dicom_seg=False, statistics=False, preview=False)


def small_series(folder: Path, n: int = 6, *, seed: int = 0, description: str = "t1 small", **kwargs: object
                 ) -> list[Path]:
    """A 12 x 10 x n classic MR series at 2 mm (demo writer), values 0..999."""
    array = np.random.default_rng(seed).integers(0, 1000, size=(12, 10, n)).astype(np.int16)
    return write_dicom_series((array, np.diag([2.0, 2.0, 2.0, 1.0])), folder, series_description=description,
                              **kwargs)  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny real OpenVINO bundle (threshold model: label 1 where the image is bright)."""
    from helpers.synthetic import make_bundle

    return make_bundle(tmp_path_factory.mktemp("bundle") / "b", patch=(8, 8, 8), spacing=(2.0, 2.0, 2.0),
                       threshold=500.0)


def _manifest(result_dir: Path) -> dict:
    return json.loads((result_dir / "manifest.json").read_text(encoding="utf-8"))


def test_a_complete_result_says_so(tmp_path: Path, mr_path: Path, seg_array: np.ndarray,
                                   labels: dict[int, str]) -> None:
    vol = read_series(mr_path)
    result = write_results(vol, seg_array, labels, NO_EXTRAS, {}, out_parent=tmp_path)
    assert result.status == COMPLETE and result.missing_outputs == {}
    manifest = _manifest(result.output_dir)
    assert manifest["status"] == COMPLETE and manifest["missing_outputs"] == {}


def test_an_optional_output_that_fails_makes_the_result_partial(tmp_path: Path, mr_path: Path,
                                                                seg_array: np.ndarray, labels: dict[int, str],
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    """The preview renderer crashing no longer discards the masks: they are published, and the manifest says the
    preview is missing and why."""
    def boom(path: Path, *args: object, **kwargs: object) -> None:
        Path(path).write_bytes(b"half a png")
        raise RuntimeError("preview renderer crashed")

    monkeypatch.setattr(results_module, "write_preview", boom)
    vol = read_series(mr_path)
    result = write_results(vol, seg_array, labels, OutputOptions(preview=True, statistics=True), {},
                           out_parent=tmp_path)
    assert result.status == PARTIAL
    assert result.missing_outputs == {"preview": "RuntimeError: preview renderer crashed"}
    assert sorted(p.name for p in result.output_dir.iterdir()) == [
        "manifest.json", "seg.labels.json", "seg.nii.gz", "statistics.json"]  # the half-written preview is gone
    manifest = _manifest(result.output_dir)
    assert manifest["status"] == PARTIAL and "preview" not in manifest["outputs"]
    assert manifest["missing_outputs"]["preview"].endswith("preview renderer crashed")


def test_a_refused_dicom_seg_makes_the_result_partial(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Where issue 11 found it: highdicom refusing a source was caught and only noted under ``warnings``."""
    def refuse(*args: object, **kwargs: object) -> None:
        raise ValueError("source images have inconsistent geometry")

    monkeypatch.setattr(results_module, "write_dicom_seg", refuse)
    small_series(tmp_path / "s")
    vol = read_series(tmp_path / "s")
    result = write_results(vol, np.ones(vol.shape, np.uint8), {1: "spleen"}, OutputOptions(preview=False), {})
    assert result.status == PARTIAL and "seg.dcm" not in {p.name for p in result.output_dir.iterdir()}
    assert result.missing_outputs == {  # the DICOM SR measures the SEG's segments: missing with it
        "dicom_seg": "ValueError: source images have inconsistent geometry",
        "dicom_sr": "needs the DICOM-SEG, which was not written: ValueError: source images have inconsistent geometry"}
    assert any("inconsistent geometry" in w for w in result.manifest["warnings"])


def test_segment_exits_with_the_partial_code(tmp_path: Path, bundle: Path, monkeypatch: pytest.MonkeyPatch,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    def refuse(*args: object, **kwargs: object) -> None:
        raise ValueError("highdicom refuses this source")

    monkeypatch.setattr(results_module, "write_dicom_seg", refuse)
    small_series(tmp_path / "exam")
    assert main(["-q", "segment", str(tmp_path / "exam"), "--bundle", str(bundle), "--no-cache"]) == EXIT_PARTIAL
    out = capsys.readouterr().out
    assert "PARTIAL: DICOM-SEG (seg.dcm) not written: ValueError: highdicom refuses this source" in out
    (result,) = (tmp_path / "exam").glob("*.edgeseg")
    assert _manifest(result)["status"] == PARTIAL and (result / "seg.nii.gz").is_file()


def test_a_folder_where_one_series_segments_and_another_is_refused(tmp_path: Path, bundle: Path,
                                                                   capsys: pytest.CaptureFixture[str]) -> None:
    """Issue 11: this exited 6, as if nothing worked. Now: the good series' results, the refused one's reason
    logged, and the "some failed" exit code."""
    small_series(tmp_path / "exam", description="t1 good", seed=1, series_number=1)
    gappy = small_series(tmp_path / "exam", description="t2 gappy", seed=2, series_number=2)
    gappy[3].unlink()  # a slice missing in the middle: refused (the headers still announce 6)
    code = main(["segment", str(tmp_path / "exam"), "--bundle", str(bundle), "--no-cache", "--no-dicom-seg"])
    assert code == EXIT_SOME_FAILED
    captured = capsys.readouterr()
    assert [p.name.split("_")[0] for p in (tmp_path / "exam").glob("*.edgeseg")] == ["t1"]
    assert "slice(s) missing" in captured.err
    # the same folder without the good series: nothing segmented, the refusal's own code
    for result in (tmp_path / "exam").glob("*.edgeseg"):
        import shutil

        shutil.rmtree(result)
    good = [p for p in (tmp_path / "exam").iterdir() if p not in gappy]
    for p in good:
        p.unlink()
    assert main(["-q", "segment", str(tmp_path / "exam"), "--bundle", str(bundle), "--no-cache",
                 "--no-dicom-seg"]) == InvalidSeriesError.exit_code
