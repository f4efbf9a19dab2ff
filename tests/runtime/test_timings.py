"""The run's timings in the manifest: every stage, each writer, adding up to the wall time; a series past its time
budget is marked in the manifest and logged as a WARNING (the demo bundle on the real MRI)."""
from __future__ import annotations

import json
import logging
import shutil
import time
from pathlib import Path

import pytest

from edgeseg.runtime.options import OutputOptions, SegmentOptions
from edgeseg.runtime.plan import STAGES
from edgeseg.runtime.segmenter import Segmenter

DEMO_BUNDLE = Path(__file__).resolve().parents[2] / "edgeseg" / "demo" / "bundle"


def test_manifest_timings_cover_every_stage_and_add_up_to_the_wall_time(tmp_path: Path, real_mri: Path,
                                                                        caplog: pytest.LogCaptureFixture) -> None:
    src = tmp_path / "case" / real_mri.name
    src.parent.mkdir()
    shutil.copy(real_mri, src)
    options = SegmentOptions(time_budget_s=0.001, outputs=OutputOptions(per_structure=False))
    segmenter = Segmenter(DEMO_BUNDLE, options, latency_path=tmp_path / "latency.json")
    runs = []
    for _ in range(2):
        started = time.monotonic()
        with caplog.at_level(logging.WARNING, logger="edgeseg.runtime.segmenter"):
            result = segmenter.segment(src)
        runs.append((time.monotonic() - started, json.loads(result.files["manifest"].read_text())))
    for wall, manifest in runs:
        timings = manifest["run"]["timings_s"]
        assert set(timings) == {*STAGES, "total"}
        assert timings["write"] > 0 and timings["infer"] > 0 and timings["read"] > 0
        assert sum(v for k, v in timings.items() if k != "total") == pytest.approx(timings["total"], abs=0.01)
        assert wall - 0.25 <= timings["total"] <= wall  # only publishing the folder comes after the manifest
        assert {"labelmap", "statistics", "preview"} <= set(manifest["run"]["write_s"])
        assert sum(manifest["run"]["write_s"].values()) == pytest.approx(timings["write"], abs=0.01)
        over = manifest["run"]["over_budget"]
        assert over["budget_s"] == 0.001 and over["seconds"] == timings["total"]
        assert over["predicted_s"] == manifest["plan"]["predicted_s"]
    warnings = [r for r in caplog.records if "over its time budget" in r.getMessage()]
    assert len(warnings) == 2 and all(r.levelno == logging.WARNING for r in warnings)
    # the second series was predicted stage by stage from the first one's measured stages
    first, second = runs[0][1], runs[1][1]
    assert "stages" not in first["plan"]["details"]
    predicted = second["plan"]["details"]["stages"]
    assert predicted["read"] == pytest.approx(first["run"]["timings_s"]["read"], rel=0.01, abs=0.002)
    assert second["plan"]["predicted_s"] == pytest.approx(sum(predicted.values()), abs=0.01)
