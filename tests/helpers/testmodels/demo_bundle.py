"""Rebuild the packaged demo bundle (``edgeseg/demo/bundle``) from the committed small real model.

    python tests/helpers/testmodels/demo_bundle.py [--out edgeseg/demo/bundle]

Exports ``tests/fixtures/models/Dataset900_EdgesegDemoMR`` (trained on ONE real abdominal MRI: a demo and test
model, not a clinical one) with FP32 and INT8 (NNCF, calibrated on that MRI), RAS reorientation as in
training, and the 50 total_mr label names. The validation report inside the bundle records the figures.
"""
from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[3]
MODEL = REPO / "tests" / "fixtures" / "models" / "Dataset900_EdgesegDemoMR"
MRI = REPO / "edgeseg" / "demo" / "mri" / "example_mr_sm.nii.gz"
LABELS = REPO / "edgeseg" / "demo" / "mri" / "total_mr_labels.json"


def command(out: Path, calibration: Path) -> list[str]:
    folder = next(MODEL.glob("*__nnUNetPlans__3d_fullres"))
    return ["export", str(folder), "--reorient", "RAS", "--labels", str(LABELS), "--calibration", str(calibration),
            "--out", str(out), "--force", "--precisions", "fp32,int8",
            "--name", "edgeseg-demo-total_mr-3mm",
            "--description", "Small PlainConvUNet (nnU-Net v2 format) with the 50 TotalSegmentator MRI labels at "
                             "3 mm, trained on one real abdominal MRI; see tests/fixtures/models/.../"
                             "TRAINING_RECORD.md",
            "--intended-use", "DEMO AND TESTS ONLY: trained on a single case; not a clinical model",
            "--bundle-version", "1", "--not-for-clinical-use"]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, default=REPO / "edgeseg" / "demo" / "bundle")
    args = p.parse_args(argv)
    from edgeseg.cli import main as cli

    with tempfile.TemporaryDirectory() as tmp:
        calib = Path(tmp) / "calibration"
        calib.mkdir()
        shutil.copy(MRI, calib / MRI.name)
        return cli(command(args.out, calib))


if __name__ == "__main__":
    sys.exit(main())
