"""The watcher with the REAL segmenter (edgeseg.runtime.segmenter.Segmenter) and a synthetic OpenVINO bundle
(threshold model, built without torch): the whole path from arriving files to published results."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from watch_helpers import copy_slowly, error_files, results, wait_for, write_series

from edgeseg.runtime.segmenter import Segmenter
from edgeseg.runtime.watch.service import Watcher
from edgeseg.runtime.watch.store import DONE, FAILED

pytest.importorskip("openvino")


@pytest.fixture(scope="module")
def bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from helpers.synthetic import make_bundle

    return make_bundle(tmp_path_factory.mktemp("bundle") / "b", kind="threshold", patch=(16, 16, 16),
                       spacing=(3.0, 3.0, 3.0), reorient="RAS")


@pytest.mark.slow
def test_real_segmenter_end_to_end(make_config, roots, tmp_path, bundle, real_mri) -> None:
    cfg = make_config(bundle=str(bundle), time_budget_s=60.0, max_attempts=1)
    w = Watcher(cfg, settle_s=0.1)  # no segmenter given and no test hook: the real one
    w.start()
    try:
        assert isinstance(w.segmenter, Segmenter) and w.segmenter.planner is not None
        copy_slowly(write_series(tmp_path / "a", 6, description="t1 vibe", seed=1), roots / "exam", delay_s=0.02)
        copy_slowly(write_series(tmp_path / "b", 5, description="t2 haste", seed=2), roots / "exam", delay_s=0.02)
        shutil.copyfile(real_mri, roots / "case.nii.gz")
        copy_slowly(write_series(tmp_path / "c", 6, description="gappy", skip=(2,)), roots / "bad", delay_s=0)
        assert wait_for(lambda: len(results(roots)) == 3 and len(error_files(roots)) == 1, timeout=120), \
            (results(roots), error_files(roots))
        assert w.wait_idle(30)
        rows = {r.name: r for r in w.store.rows()}
        assert {r.state for r in rows.values()} == {DONE, FAILED}
        for r in rows.values():
            if r.state == DONE:
                out = Path(r.output_path)
                assert out.name == f"{r.name}.edgeseg"  # the watcher's name is the reader's name
                assert r.predicted_s is not None and r.plan_dict["fits"] is True
                manifest = json.loads((out / "manifest.json").read_text())
                assert manifest["plan"]["variant"] == "v"
            else:
                err = Path(r.folder) / f"{r.name}.edgeseg-error.json"
                assert err.is_file() and json.loads(err.read_text())["kind"] == "invalid_series"
        exam_results = results(roots / "exam")
        assert len(exam_results) == 2  # two interleaved series in one folder: one result each
        assert (roots / "case.edgeseg").is_dir()
        assert cfg.latency_path.is_file()  # tile latency measured on this machine and cached
        assert w.alive()
    finally:
        assert w.stop()


def test_doctor_with_a_real_bundle_and_a_measured_latency_table(tmp_path, bundle, capsys) -> None:
    from edgeseg.bundle import load_bundle
    from edgeseg.cli import main
    from edgeseg.runtime.plan import LatencyTable, Planner
    from edgeseg.runtime.watch.config import load_config

    (tmp_path / "in").mkdir()
    cfg_path = tmp_path / "watch_config.yaml"
    cfg_path.write_text(f"roots: [in]\nbundle: {bundle}\nstate_dir: state\ntime_budget_s: 60\n")
    assert main(["doctor", "--config", str(cfg_path)]) == 0
    out = capsys.readouterr().out
    assert "OK    bundle:" in out and "files verified" in out
    assert "SKIP  time budget: no latency table yet" in out
    cfg = load_config(cfg_path, env={})
    from edgeseg.runtime.infer.engine import measure_tile_latency

    Planner(load_bundle(bundle), LatencyTable(cfg.latency_path), cfg.device, cfg.precision, cfg.threads,
            measure_tile_latency).plan(None, 60.0)  # no geometry: nothing measured
    table = LatencyTable(cfg.latency_path)
    planner = Planner(load_bundle(bundle), table, cfg.device, cfg.precision, cfg.threads, measure_tile_latency)
    for part in load_bundle(bundle).variants[0].parts:
        planner.latency(part)
    assert main(["doctor", "--config", str(cfg_path)]) == 0
    out = capsys.readouterr().out
    assert "OK    time budget: typical 256x208x160 volume at 1.5 mm: most accurate plan fits" in out
