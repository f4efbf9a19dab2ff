"""The time ceiling covers writing (issue 19: a 46 s ceiling, a 50.5 s run, published): the segmenter's
``Checkpoint`` is called before each output is written, so a series whose writing runs past the ceiling is
cancelled with TimeCeilingError and nothing is published."""
from __future__ import annotations

import shutil
import time
from pathlib import Path

import numpy as np
import pytest

import edgeseg.runtime.write.results as results
from edgeseg.errors import TimeCeilingError
from edgeseg.runtime.options import OutputOptions
from edgeseg.runtime.read import read_series
from edgeseg.runtime.segmenter import Checkpoint


def test_a_ceiling_passed_while_writing_publishes_nothing(tmp_path: Path, real_mri: Path,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    shutil.copyfile(real_mri, tmp_path / "case.nii.gz")
    volume = read_series(tmp_path / "case.nii.gz")
    labelmap = np.zeros(volume.shape, dtype=np.uint8)
    labelmap[10:20, 10:20, 5:10] = 1
    slow_statistics = results.write_statistics

    def slow(*args, **kwargs):  # a slow output: the ceiling passes while it is written
        time.sleep(0.6)
        return slow_statistics(*args, **kwargs)

    monkeypatch.setattr(results, "write_statistics", slow)
    stages: list[str] = []
    checkpoint = Checkpoint("case", time.monotonic(), ceiling_s=0.5,
                            progress=lambda stage, fraction: stages.append(stage))
    with pytest.raises(TimeCeilingError, match=r"case: cancelled after .* \(at write preview\), past the time "
                                               r"ceiling of 0.5 s"):
        results.write_results(volume, labelmap, {1: "liver"}, OutputOptions(preview=True, statistics=True), {},
                              checkpoint=checkpoint)
    assert stages == ["write statistics", "write preview"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["case.nii.gz"]  # no result, no hidden folder left
