"""One-shot cold start: seconds from starting ``edgeseg run`` in a fresh process to its first result, with an empty
and with a warm persistent model cache (mercure's ``MODULE_PERSISTENCE_DIR``).

Usage:

    python benchmarks/oneshot_cold_start.py                                  # the packaged demo bundle
    python benchmarks/oneshot_cold_start.py --bundle demo --bundle /tmp/edgeseg-bench/ts-bundle --repeats 3 \\
        --json /tmp/oneshot.json

Each run is what mercure does per task: a new process (``python -m edgeseg run``, nothing compiled in memory) with
``MERCURE_IN_DIR``/``MERCURE_OUT_DIR`` and a task folder (the real demo MRI, 117x91x20 @ 3 mm, as a DICOM series
named ``<SeriesUID>#<file>.dcm`` with ``.tags`` and ``task.json``). "empty": a new, empty persistence folder for
every run (OpenVINO compiles the model); "warm": a persistence folder filled by one earlier run (OpenVINO loads the
compiled blob). Reported per bundle and cache state (median of ``--repeats`` runs): wall seconds from the process
start to the first ``*.dcm`` in the output (polled every 10 ms) and to the process exit (result.json written), and
the compile and inference seconds the run recorded in result.json. A TotalSegmentator-sized bundle comes from
``benchmarks/export_ts_sized.py`` (or ``edgeseg export`` of ``tests/helpers/testmodels/ts_sized.py`` models).
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import machine, print_table, write_json  # noqa: E402

REPO = Path(__file__).resolve().parents[1]


def _task_folder(folder: Path, settings: dict[str, Any]) -> Path:
    """The demo MRI as mercure hands it to a module (tests/oneshot/oneshot_helpers.py plays mercure's side)."""
    sys.path.insert(0, str(REPO / "tests"))
    from oneshot.oneshot_helpers import mercure_input

    from edgeseg.demo import demo_mri_path
    from edgeseg.demo.dicom_series import write_dicom_series

    series = write_dicom_series(demo_mri_path(), folder.parent / "series", "t1_vibe_tra")
    return mercure_input(folder, [series], settings)


def _one_run(inp: Path, work: Path, persistence: Path, bundle: str) -> dict[str, Any]:
    out = work / f"out-{time.monotonic_ns()}"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MERCURE_", "MONAI_", "HOLOSCAN_", "EDGESEG_"))}
    env.update(MERCURE_IN_DIR=str(inp), MERCURE_OUT_DIR=str(out), MODULE_PERSISTENCE_DIR=str(persistence))
    t0 = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-m", "edgeseg", "-q", "run", "--bundle", bundle], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    first = None
    while proc.poll() is None:
        if first is None and out.is_dir() and any(out.glob("*.dcm")):
            first = time.perf_counter() - t0
        time.sleep(0.01)
    wall = time.perf_counter() - t0
    stdout, stderr = proc.communicate()
    if proc.returncode != 0:
        raise RuntimeError(f"edgeseg run failed ({proc.returncode}):\n{stderr[-3000:]}")
    if first is None and any(out.glob("*.dcm")):
        first = wall
    result = json.loads((out / "result.json").read_text())
    (series,) = result["series"]
    timings = series["run"]["timings_s"]
    shutil.rmtree(out, ignore_errors=True)
    return {"first_result_s": first, "exit_s": wall, "compile_s": timings["compile"], "infer_s": timings["infer"],
            "precision": ",".join(p["precision"] for p in series["run"]["parts"]),
            "tiles": sum(p["tiles"] for p in series["run"]["parts"])}


def _median(runs: list[dict[str, Any]], key: str) -> float | None:
    values = [r[key] for r in runs if r.get(key) is not None]
    return round(statistics.median(values), 2) if values else None


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bundle", action="append", help="bundle folder or 'demo' (repeatable; default: demo)")
    ap.add_argument("--repeats", type=int, default=3, help="runs per bundle and cache state (default 3)")
    ap.add_argument("--precision", default="auto", help="the task's process.settings.precision (default auto)")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args(argv)
    bundles = args.bundle or ["demo"]

    work = Path(tempfile.mkdtemp(prefix="edgeseg-oneshot-bench-"))
    rows: list[dict[str, Any]] = []
    try:
        inp = _task_folder(work / "in", {"precision": args.precision, "outputs": {"preview": False}})
        for bundle in bundles:
            label = "demo (small real model)" if bundle == "demo" else Path(bundle).name
            empty_runs, warm_runs = [], []
            for i in range(args.repeats):
                persistence = work / f"persist-empty-{i}"
                persistence.mkdir()
                empty_runs.append(_one_run(inp, work, persistence, bundle))
                shutil.rmtree(persistence, ignore_errors=True)
            warm = work / "persist-warm"
            warm.mkdir(exist_ok=True)
            _one_run(inp, work, warm, bundle)  # fills the cache
            cache_mb = sum(p.stat().st_size for p in warm.rglob("*") if p.is_file()) / 1e6
            for _ in range(args.repeats):
                warm_runs.append(_one_run(inp, work, warm, bundle))
            shutil.rmtree(warm, ignore_errors=True)
            for state, runs in (("empty", empty_runs), ("warm", warm_runs)):
                rows.append({"bundle": label, "cache": state, "runs": len(runs), "precision": runs[0]["precision"],
                             "tiles": runs[0]["tiles"], "first_result_s": _median(runs, "first_result_s"),
                             "exit_s": _median(runs, "exit_s"), "compile_s": _median(runs, "compile_s"),
                             "infer_s": _median(runs, "infer_s"),
                             "cache_mb": round(cache_mb, 1) if state == "warm" else 0.0, "all_runs": runs})
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print_table(rows, [("bundle", "bundle"), ("cache", "model cache"), ("runs", "runs"), ("precision", "precision"),
                       ("tiles", "tiles"), ("first_result_s", "to first *.dcm s"), ("exit_s", "to exit s"),
                       ("compile_s", "compile s"), ("infer_s", "infer s"), ("cache_mb", "cache MB")])
    write_json(args.json, {"machine": machine(), "settings": vars(args) | {"json": str(args.json)}, "rows": rows})
    return 0


if __name__ == "__main__":
    sys.exit(main())
