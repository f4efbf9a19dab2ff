"""The time-budget planner (runtime/plan.py) with a fake latency table (no model runs)."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from edgeseg.bundle import Variant
from edgeseg.runtime.infer.tiling import tile_count
from edgeseg.runtime.plan import (
    DEFAULT_COMPILE_S,
    DEFAULT_DICOM_RESULT_S,
    DEFAULT_NIFTI_S_PER_MVOXEL,
    DEFAULT_READ_S_PER_INSTANCE,
    DEFAULT_WRITE_S_PER_INSTANCE,
    LatencyTable,
    Planner,
    bundle_identity,
    network_shape,
    part_tiles,
    plan_series,
)
from edgeseg.runtime.read import SeriesGeometry
from helpers.plan_fakes import ACCURATE, BUNDLE, NO_OVERHEAD, TYPICAL, latency, make_part


def test_network_shape_follows_ras_sitk_order_and_transpose() -> None:
    geometry = SeriesGeometry((100, 80, 50), (1.0, 1.0, 2.0), world_axes=(0, 1, 2))  # 100 x 80 x 100 mm
    part = make_part("p", 2.0)
    assert network_shape(geometry, ACCURATE, part) == (50, 40, 50)  # (z, y, x)
    sagittal = SeriesGeometry((50, 80, 100), (2.0, 1.0, 1.0), world_axes=(2, 1, 0))  # i along z, k along x
    assert network_shape(sagittal, ACCURATE, part) == (50, 40, 50)
    transposed = make_part("t", 2.0, tf=(2, 0, 1))
    assert network_shape(geometry, ACCURATE, transposed) == (50, 50, 40)
    plain = Variant("plain", 0, "none", None, (part,))  # array as stored: (k, j, i)
    assert network_shape(geometry, plain, part) == (50, 40, 50)


def test_tiles_match_nnunet_sliding_window_and_mirroring() -> None:
    geometry = SeriesGeometry((100, 80, 50), (1.0, 1.0, 2.0))
    part = make_part("p", 2.0, patch=32, step=0.5)
    assert part_tiles(geometry, ACCURATE, part, 0.5) == 3 * 2 * 3 == tile_count((50, 40, 50), (32, 32, 32), 0.5)
    mirrored = make_part("m", 2.0, patch=32, step=0.5, mirror=True)
    assert part_tiles(geometry, ACCURATE, mirrored, 0.5) == 18 * 8
    assert part_tiles(geometry, ACCURATE, part, 1.0) < 18


def test_most_accurate_plan_when_it_fits() -> None:
    plan = plan_series(BUNDLE, TYPICAL, 2000.0, latency({"organs": 0.5, "muscles": 0.5, "all": 0.5}), NO_OVERHEAD)
    assert plan.variant == "accurate_1.5mm" and plan.tile_step_size is None and plan.fits
    expected_tiles = 2 * tile_count((160, 208, 256), (32, 32, 32), 0.5)
    assert plan.tiles == expected_tiles
    assert plan.predicted_s == pytest.approx(expected_tiles * 0.5)
    assert "most accurate plan fits" in plan.reason


def test_coarser_tile_step_of_the_same_variant_before_a_less_accurate_variant() -> None:
    lat = latency({"organs": 0.5, "muscles": 0.5, "all": 0.01})
    full = plan_series(BUNDLE, TYPICAL, None, lat, NO_OVERHEAD)
    assert full.variant == "accurate_1.5mm" and full.predicted_s is None  # no budget: no prediction needed
    own = 2 * tile_count((160, 208, 256), (32, 32, 32), 0.5) * 0.5
    at_08 = 2 * tile_count((160, 208, 256), (32, 32, 32), 0.8) * 0.5
    plan = plan_series(BUNDLE, TYPICAL, (own + at_08) / 2, lat, NO_OVERHEAD)
    assert (plan.variant, plan.tile_step_size, plan.fits) == ("accurate_1.5mm", 0.8, True)
    assert plan.predicted_s == pytest.approx(at_08)
    assert "tile step 0.8" in plan.reason


def test_less_accurate_variant_when_the_accurate_one_cannot_fit() -> None:
    lat = latency({"organs": 0.5, "muscles": 0.5, "all": 0.1})
    plan = plan_series(BUNDLE, TYPICAL, 30.0, lat, NO_OVERHEAD)
    assert plan.variant == "fast_3mm" and plan.fits and plan.tile_step_size is None


def test_nothing_fits_runs_the_fastest_and_says_so() -> None:
    lat = latency({"organs": 5.0, "muscles": 5.0, "all": 5.0})
    plan = plan_series(BUNDLE, TYPICAL, 1.0, lat, (0.5, 2.0))
    assert not plan.fits
    assert (plan.variant, plan.tile_step_size) == ("fast_3mm", 1.0)
    assert "no plan fits the 1 s budget" in plan.reason and "fastest" in plan.reason
    voxels = TYPICAL.voxels + 86 * 70 * 54  # input + the 3 mm network grid
    tiles = tile_count((80, 104, 128), (32, 32, 32), 1.0)
    assert plan.predicted_s == pytest.approx(tiles * 5.0 + 0.5 * voxels / 1e6 + 2.0, rel=0.02)


def test_unknown_latency_or_geometry_gives_an_unplanned_most_accurate_run() -> None:
    plan = plan_series(BUNDLE, TYPICAL, 60.0, latency({"organs": 0.5}), NO_OVERHEAD)
    assert plan.variant == "accurate_1.5mm" and plan.predicted_s is None and not plan.fits
    assert "muscles" in plan.reason
    plan = plan_series(BUNDLE, None, 60.0, latency({}), NO_OVERHEAD)
    assert plan.variant == "accurate_1.5mm" and "volume size unknown" in plan.reason


def test_latency_table_is_cached_on_disk_and_measured_once(tmp_path: Path) -> None:
    path = tmp_path / "latency.json"
    calls: list[tuple] = []

    def measure(bundle, part, precision, device, threads):
        calls.append((part.name, precision, device, threads))
        return {"organs": 0.4, "muscles": 0.6, "all": 0.2}[part.name]

    planner = Planner(BUNDLE, LatencyTable(path), "CPU", "int8", 2, measure)
    plan = planner.plan(TYPICAL, 1000.0)
    assert plan.fits and sorted(calls) == [("muscles", "int8", "CPU", 2), ("organs", "int8", "CPU", 2)]
    data = json.loads(path.read_text())
    bid = bundle_identity(BUNDLE)
    assert data["tiles"][f"{bid}|organs|int8|CPU|2"]["seconds_per_tile"] == 0.4
    assert plan.details["measuring_s"] >= 0.0  # the seconds spent measuring are in the first prediction
    again = Planner(BUNDLE, LatencyTable(path), "CPU", "int8", 2, measure)
    second = again.plan(TYPICAL, 1000.0)
    assert second.details["measuring_s"] == 0.0
    assert second.predicted_s == pytest.approx(plan.predicted_s - plan.details["measuring_s"])
    assert len(calls) == 2  # cached: not measured again
    Planner(BUNDLE, LatencyTable(path), "GPU", "int8", 2, measure).plan(TYPICAL, 1000.0)
    assert len(calls) == 4  # another device is another key


def test_failed_measurement_does_not_stop_planning(tmp_path: Path) -> None:
    def broken(*args):
        raise RuntimeError("no device")

    plan = Planner(BUNDLE, LatencyTable(tmp_path / "l.json"), "GPU", "auto", None, broken).plan(TYPICAL, 60.0)
    assert plan.predicted_s is None and plan.variant == "accurate_1.5mm"


def test_overhead_is_refined_from_real_runs(tmp_path: Path) -> None:
    table = LatencyTable(tmp_path / "l.json")
    for name, s in {"organs": 0.1, "muscles": 0.1, "all": 0.1}.items():
        table.put(bundle_identity(BUNDLE), name, "int8", "CPU", None, s)
    planner = Planner(BUNDLE, table, "CPU", "int8", None)
    plan = planner.plan(TYPICAL, 1000.0)
    mvox = plan.details["mvoxels"]
    actual = plan.details["tile_seconds"] + 3.0 + 4.0 * mvox  # the machine spends 4 s per Mvoxel
    planner.record(plan, actual)
    assert planner.plan(TYPICAL, 1000.0).predicted_s == pytest.approx(actual)  # learnt for this size
    reloaded = Planner(BUNDLE, LatencyTable(tmp_path / "l.json"), "CPU", "int8", None)
    assert reloaded.plan(TYPICAL, 1000.0).predicted_s == pytest.approx(actual)  # and kept on disk
    planner.record(plan, actual / 2)  # later runs move it by a moving average, not all the way
    assert actual / 2 < planner.plan(TYPICAL, 1000.0).predicted_s < actual


def test_prediction_is_per_stage_once_a_run_reported_its_stages(tmp_path: Path) -> None:
    """After one run with its stage timings, the planner predicts every stage from the rates measured on this PC
    (the same series: exactly what it took, stage by stage), for another size in proportion to its units, and keeps
    the rates on disk; inference is the tile-seconds times the measured window/network ratio."""
    table = LatencyTable(tmp_path / "l.json")
    for name in ("organs", "muscles", "all"):
        table.put(bundle_identity(BUNDLE), name, "int8", "CPU", None, 0.2)
    planner = Planner(BUNDLE, table, "CPU", "int8", None)
    plan = planner.plan(TYPICAL, 1e6, instances=160)
    assert "stages" not in plan.details  # nothing measured yet: the overhead model
    tiles_s = plan.details["tile_seconds"]
    stages = {"read": 3.2, "plan": 0.0, "preprocess": 2.0, "compile": 0.0, "infer": 1.1 * tiles_s, "resample": 4.0,
              "postprocess": 0.5, "write": 6.0, "other": 0.3}
    planner.record(plan, sum(stages.values()), stages={**stages, "total": sum(stages.values())})
    again = planner.plan(TYPICAL, 1e6, instances=160)
    assert again.details["stages"] == pytest.approx(stages)
    assert again.predicted_s == pytest.approx(sum(stages.values()))
    reloaded = Planner(BUNDLE, LatencyTable(tmp_path / "l.json"), "CPU", "int8", None)
    bigger = type(TYPICAL)((TYPICAL.shape[0], TYPICAL.shape[1], 2 * TYPICAL.shape[2]), TYPICAL.spacing)
    big = reloaded.plan(bigger, 1e6, instances=320)
    assert big.details["stages"]["read"] == pytest.approx(2 * 3.2)  # per instance
    assert big.details["stages"]["write"] == pytest.approx(6.0 / 2 + 2 * 6.0 / 2)  # one run: half of it per file
    assert big.details["stages"]["infer"] == pytest.approx(1.1 * big.details["tile_seconds"])
    assert big.details["stages"]["other"] == pytest.approx(0.3)  # fixed
    # a NIfTI input has no reading or writing rates of its own yet: the DICOM runs' per-voxel rates stand in (none
    # from one DICOM size: the NIfTI guess), the other stages are the same
    nifti = reloaded.plan(TYPICAL, 1e6)
    mvoxels = nifti.details["input_mvoxels"]
    assert nifti.details["stages"]["read"] == pytest.approx(DEFAULT_NIFTI_S_PER_MVOXEL * mvoxels, abs=1e-3)
    assert nifti.details["stages"]["write"] == pytest.approx(DEFAULT_NIFTI_S_PER_MVOXEL * mvoxels, abs=1e-3)
    assert nifti.details["stages"]["preprocess"] == pytest.approx(2.0)


def test_the_first_dicom_series_after_nifti_ones_adds_the_dicom_costs_to_the_nifti_rates(tmp_path: Path) -> None:
    """A PC that has run NIfTI series only predicts its first DICOM series from the NIfTI reading and writing rates
    plus the DICOM-only guesses: each file read, each plane's SEG frames, the SEG's and SR's per-series cost (without
    that cost the first DICOM series on the 2-core AMD EPYC was predicted -46 %)."""
    table = LatencyTable(tmp_path / "l.json")
    for name in ("organs", "muscles", "all"):
        table.put(bundle_identity(BUNDLE), name, "int8", "CPU", None, 0.2)
    planner = Planner(BUNDLE, table, "CPU", "int8", None)
    plan = planner.plan(TYPICAL, 1e6)
    stages = {"read": 0.3, "plan": 0.0, "preprocess": 2.0, "compile": 0.0, "infer": plan.details["tile_seconds"],
              "resample": 4.0, "postprocess": 0.5, "write": 0.4, "other": 0.3}
    planner.record(plan, sum(stages.values()), stages=stages)
    dicom = planner.plan(TYPICAL, 1e6, instances=160)
    assert dicom.details["stages"]["read"] == pytest.approx(0.3 + 160 * DEFAULT_READ_S_PER_INSTANCE, abs=1e-3)
    assert dicom.details["stages"]["write"] == pytest.approx(0.4 + DEFAULT_DICOM_RESULT_S
                                                             + 160 * DEFAULT_WRITE_S_PER_INSTANCE, abs=1e-3)
    assert dicom.details["stages"]["resample"] == pytest.approx(4.0)


def test_compilation_is_predicted_for_the_parts_the_segmenter_has_not_compiled() -> None:
    """A part the segmenter keeps compiled costs nothing to compile (a watcher's later series, or one whose
    latency was measured on the kept engine); one not compiled costs the guess until a series measured it, then
    the last measured seconds per part."""
    kept: set[str] = set()
    table = LatencyTable()
    for name in ("organs", "muscles", "all"):
        table.put(bundle_identity(BUNDLE), name, "int8", "CPU", None, 0.2)
    planner = Planner(BUNDLE, table, "CPU", "int8", None, compiled=lambda part: part.name in kept)
    cold = planner.plan(TYPICAL, 1e6)
    kept.update({"organs", "muscles"})
    warm = planner.plan(TYPICAL, 1e6)
    assert cold.details["uncompiled_parts"] == 2 and warm.details["uncompiled_parts"] == 0
    assert cold.predicted_s - warm.predicted_s == pytest.approx(2 * DEFAULT_COMPILE_S)
    stages = {"read": 0.3, "plan": 0.0, "preprocess": 2.0, "compile": 6.0, "infer": cold.details["tile_seconds"],
              "resample": 4.0, "postprocess": 0.5, "write": 0.4, "other": 0.3}
    planner.record(cold, sum(stages.values()), stages=stages)  # the two parts compiled in 6 s
    assert planner.plan(TYPICAL, 1e6).details["stages"]["compile"] == 0.0
    kept.discard("muscles")
    assert planner.plan(TYPICAL, 1e6).details["stages"]["compile"] == pytest.approx(3.0)


def test_a_stage_is_a_fixed_cost_plus_a_cost_per_unit_once_two_sizes_ran() -> None:
    """Writing a DICOM-SEG and SR has a fixed part (the SR, the headers) and a part per voxel: one size alone
    cannot tell them apart (proportional), two sizes can (a line), a fitted term never goes negative, and the
    latest runs weigh most (a shared PC's load changes)."""
    from edgeseg.runtime.plan import fit_stage

    assert fit_stage([(0.2, 1.0)]) == pytest.approx((0.0, 5.0))
    assert fit_stage([(0.2, 1.0), (6.0, 1.58), (25.0, 3.48)]) == pytest.approx((0.98, 0.1), abs=1e-6)
    fixed, per = fit_stage([(1.0, 2.0), (2.0, 1.0)])  # slower on the smaller: no slope, the later run weighs most
    assert per == 0.0 and 1.0 < fixed < 1.5
    assert fit_stage([(1.0, 0.5), (2.0, 2.0)])[0] == 0.0  # a negative fixed part: proportional instead
    assert fit_stage([(1.0, 9.0), (1.0, 0.2)], last_only=True) == (0.0, 0.2)  # compiled once, not again
    assert fit_stage([(1.0, 9.0), (2.0, 6.0)], last_only=True) == (0.0, 3.0)  # two parts compiled: 3 s each
    assert 1.1 < fit_stage([(1.0, 1.2), (4.0, 4.4)], proportional=True)[1] < 1.2
    assert fit_stage([(1.0, 4.0), (1.0, 1.0)])[1] < 1.2  # the machine got faster: the last run tells


def test_nifti_reading_and_writing_from_one_size_are_mostly_fixed_until_a_second_size_ran() -> None:
    """A 117x91x20 NIfTI series' outputs took 0.056 s (the manifest, statistics, preview: mostly fixed); all of it
    per voxel predicted 1.6 s for a 320x260x72 series that took 0.14 s. From one size the default rate per Mvoxel
    is the variable part and the rest fixed; a series cheaper than that rate is all variable; two sizes fit a
    line as before."""
    from edgeseg.runtime.plan import LatencyTable, fit_stage

    assert fit_stage([(0.213, 0.056)], prior_per_unit=DEFAULT_NIFTI_S_PER_MVOXEL) == pytest.approx(
        (0.056 - 0.213 * DEFAULT_NIFTI_S_PER_MVOXEL, DEFAULT_NIFTI_S_PER_MVOXEL))
    assert fit_stage([(2.0, 0.01)], prior_per_unit=DEFAULT_NIFTI_S_PER_MVOXEL) == pytest.approx((0.0, 0.005))
    two = [(0.2, 1.0), (6.0, 1.58), (25.0, 3.48)]
    assert fit_stage(two, prior_per_unit=DEFAULT_NIFTI_S_PER_MVOXEL) == pytest.approx(fit_stage(two))

    table = LatencyTable()
    units = {"read:mvoxel": 0.213, "write:mvoxel": 0.213, "resample:grid_mvoxel": 0.213}
    table.record_stages("b", "CPU", None, units, {"read": 0.005, "write": 0.056, "resample": 0.05, "total": 0.5})
    rates = table.stage_rates("b", "CPU", None)
    fixed, per = rates["write:mvoxel"]
    assert 0.10 < fixed + per * 6.08 < 0.2  # measured: 0.138 s
    assert rates["resample:grid_mvoxel"][1] == pytest.approx(0.05 / 0.213)  # other stages as before


def test_a_dicom_series_write_prices_its_voxels_at_the_nifti_rate_and_fits_the_rest_on_its_instances() -> None:
    """The TS-sized scaling rows as measured (2026-12-07): three 320x260 DICOM series (instances and Mvoxels grow
    together) fitted jointly put the SEG's cost on the voxels and predicted the 512x512x200 series' write at 7.7 s;
    it took 3.42 s. With the NIfTI runs' rate per Mvoxel for the voxels and the rest per instance: within 20 %."""
    from edgeseg.runtime.plan import LatencyTable

    table = LatencyTable()
    for dicom, nifti in [((20, 0.213, 0.696, 16.78), (0.213, 0.105, 17.6)), ((72, 6.08, 1.611, 20.14),
                         (6.08, 0.195, 19.32)), ((300, 25.35, 3.972, 53.61), (25.35, 0.319, 48.8))]:
        table.record_stages("b", "CPU", None, {"write:dicom_instance+mvoxel": dicom[:2]},
                            {"write": dicom[2], "infer": dicom[3] - dicom[2]})
        table.record_stages("b", "CPU", None, {"write:mvoxel": nifti[0]},
                            {"write": nifti[1], "infer": nifti[2] - nifti[1]})
    rates = table.stage_rates("b", "CPU", None)
    fixed, per_instance, per_mvoxel = rates["write:dicom_instance+mvoxel"]
    assert per_mvoxel == pytest.approx(rates["write:mvoxel"][1])
    assert 0.8 * 3.42 < fixed + per_instance * 200 + per_mvoxel * 52.4 < 1.2 * 3.42
    assert 0.8 * 6.49 < fixed + per_instance * 400 + per_mvoxel * 104.9 < 1.2 * 6.49  # 512x512x400: 6.49 s

    only_dicom = LatencyTable()  # no NIfTI runs: the joint fit as before
    only_dicom.record_stages("b", "CPU", None, {"write:dicom_instance+mvoxel": (20, 0.213)}, {"write": 0.7})
    assert only_dicom.stage_rates("b", "CPU", None)["write:dicom_instance+mvoxel"] == pytest.approx(
        (0.35, 0.35 / 20, 0.0))


def test_each_run_weighs_by_its_total_so_a_near_zero_stage_of_a_small_series_does_not_pin_the_line() -> None:
    """Preprocessing seconds of the demo bundle as series_scaling measured them (units, seconds, the run's total):
    the 117x91x20 rows are already on the network's spacing (a few milliseconds, 10x apart from run to run).
    Weighed by their own seconds they pinned the line at them and 512x512x400 was predicted at 1.4 s instead of
    about 14 s; weighed by their run's total (what a prediction is judged by) the line follows the big series."""
    from edgeseg.runtime.plan import fit_stage

    samples = [(0.4, 0.003, 0.7), (0.4, 0.027, 1.4), (6.2, 0.93, 3.1), (25.8, 3.43, 11.5), (52.9, 7.8, 27.5)]
    fixed, per = fit_stage(samples)
    assert 0.75 * 14.0 < fixed + per * 105.9 < 1.25 * 14.0
    old_fixed, old_per = fit_stage([s[:2] for s in samples])  # a table written before totals were kept
    assert old_fixed + old_per * 105.9 < 3.0


def test_input_voxels_count_for_preprocessing_and_resampling_back_only_where_the_input_is_resampled() -> None:
    """On the network's own spacing preprocessing is a copy and resampling back an argmax over the network grid:
    other work, with keys of its own and the network grid as their only unit (where the input is resampled, its
    voxels count too, fitted apart from the network grid's)."""
    from edgeseg.runtime.plan import predict, stage_units

    variant = Variant("default", 0, "RAS", None, (make_part("p", 1.5),))
    native = SeriesGeometry((120, 100, 80), (1.5, 1.5, 1.5))
    finer = SeriesGeometry((180, 150, 120), (1.0, 1.0, 1.0))
    _, _, same = predict(native, variant, None, latency({"p": 0.1}), NO_OVERHEAD)
    _, _, zoomed = predict(finer, variant, None, latency({"p": 0.1}), NO_OVERHEAD)
    assert same["resampled"] is False and zoomed["resampled"] is True
    units, zoomed_units = stage_units(same, False), stage_units(zoomed, False)
    grid = 120 * 100 * 80 / 1e6
    assert units["preprocess:grid_mvoxel"] == pytest.approx(grid)
    assert units["resample:grid_mvoxel"] == units["preprocess:grid_mvoxel"]
    assert "resample:grid+input_mvoxel" not in units and "resample:grid_mvoxel" not in zoomed_units
    assert zoomed_units["preprocess:grid+input_mvoxel"] == pytest.approx((grid, 180 * 150 * 120 / 1e6))
    assert units["postprocess:mvoxel"] == pytest.approx(2 * grid)  # merging the parts: every grid


#: the demo bundle's runs in benchmarks/series_scaling.py's order (2026-12-07, 2-core AMD EPYC Zen 4, a fresh
#: state folder): size, network-grid and input Mvoxels (0: on the network's spacing), preprocessing and resampling
#: back seconds, the run's total seconds
DEMO_RUNS = [("117x91x20", 0.21294, 0.0, 0.005, 0.09, 0.57), ("117x91x20", 0.21294, 0.0, 0.03, 0.05, 0.84),
             ("320x260x72", 0.470916, 5.9904, 0.25, 0.69, 1.79), ("320x260x72", 0.470916, 5.9904, 0.29, 0.69, 2.57),
             ("320x260x300", 1.96215, 24.96, 0.90, 2.71, 6.71), ("320x260x300", 1.96215, 24.96, 0.98, 2.64, 8.99),
             ("512x512x200", 0.484075, 52.4288, 1.61, 2.24, 5.39)]


def _demo_stage_predictions(runs: list[tuple[str, float, float, float, float, float]],
                            size: tuple[float, float]) -> tuple[float, float]:
    from edgeseg.runtime.plan import LatencyTable, predict_stages, stage_units

    table = LatencyTable()
    for _, grid, inp, prep, resample, total in runs:
        details = {"mvoxels": grid + (inp or 0.21294), "input_mvoxels": inp or 0.21294, "resampled": inp > 0}
        units = {k: v for k, v in stage_units(details, False).items() if k.startswith(("preprocess", "resample"))}
        table.record_stages("b", "CPU", None, units, {"preprocess": prep, "resample": resample, "total": total})
    grid, inp = size
    details = {"mvoxels": grid + (inp or 0.21294), "input_mvoxels": inp or 0.21294, "resampled": inp > 0,
               "tile_seconds": 1.0}
    rates = {**table.stage_rates("b", "CPU", None), "read:mvoxel": (0.0, 0.0), "write:mvoxel": (0.0, 0.0),
             "postprocess:mvoxel": (0.0, 0.0), "plan:fixed": (0.0, 0.0), "other:fixed": (0.0, 0.0),
             "compile:part": (0.0, 0.0), "infer:tile_s": (0.0, 0.0)}
    stages = predict_stages(details, rates)
    assert stages is not None
    return stages["preprocess"], stages["resample"]


def test_resampled_and_own_spacing_series_are_fitted_apart_and_input_voxels_weigh_less_until_spanned() -> None:
    """The demo bundle's measured runs: on the network's own spacing resampling back is an argmax (0.26 s per grid
    Mvoxel), where the input is resampled it is the band and the gather (0.92 s per grid Mvoxel and 0.035 per input
    Mvoxel): one plane through both predicted a 320x260x72 series' resampling back at 0.39 s after a history of
    all sizes (took 0.69-0.78 s), the 117x91x20 one's at 0.17 s (took 0.05-0.09 s), and from the 320x260 series
    alone, one rate for both units put a 512x512x200 series' at 5.5 s (took 2.2 s). Each stage within 25 % of what
    its runs took now."""
    own, first_zoom = DEMO_RUNS[:2], DEMO_RUNS[2]
    prep, resample = _demo_stage_predictions(own, first_zoom[1:3])  # the first resampled series
    assert 0.75 * 0.69 < resample < 1.25 * 0.69 and 0.75 * 0.25 < prep < 1.25 * 0.25
    prep, resample = _demo_stage_predictions(DEMO_RUNS[:6], DEMO_RUNS[6][1:3])  # the first at 0.5 mm
    assert 0.75 * 2.24 < resample < 1.25 * 2.24 and 0.75 * 1.61 < prep < 1.25 * 1.61
    history = DEMO_RUNS * 2
    _, resample = _demo_stage_predictions(history, own[0][1:3])
    assert 0.75 * 0.05 < resample < 1.25 * 0.09
    _, resample = _demo_stage_predictions(history, first_zoom[1:3])
    assert 0.75 * 0.69 < resample < 1.25 * 0.78


def test_a_table_from_before_keeps_its_own_spacing_runs_under_their_new_keys(tmp_path: Path) -> None:
    """Runs on the network's own spacing recorded under the resampled keys (0 input Mvoxels) by an older version
    are read as the own-spacing keys' runs, not fitted into the resampled plane."""
    from edgeseg.runtime.plan import LatencyTable

    path = tmp_path / "latency.json"
    samples = {"resample:grid+input_mvoxel": [[0.21294, 0.0, 0.057, 0.44], [0.470916, 5.9904, 0.78, 1.96]]}
    path.write_text(json.dumps({"version": 1, "tiles": {}, "overheads": {
        "b|CPU|auto": {"seconds_per_mvoxel": 0.3, "fixed_s": 0.5, "stage_samples": samples}}}), encoding="utf-8")
    rates = LatencyTable(path).stage_rates("b", "CPU", None)
    assert rates["resample:grid_mvoxel"] == pytest.approx((0.0, 0.057 / 0.21294))
    fixed, per_grid, per_input = rates["resample:grid+input_mvoxel"]
    assert fixed + per_grid * 0.470916 + per_input * 5.9904 == pytest.approx(0.78)


def test_a_stage_of_one_kind_of_series_stands_in_for_the_other_until_it_ran() -> None:
    """Before this PC has run a series on the network's own spacing, its preprocessing and resampling back take the
    resampled runs' fixed seconds and grid rate (the resampled work costs more); before it has run a resampled one,
    the own-spacing rates plus the default per input Mvoxel. Each with as many rates as its key has units."""
    from edgeseg.runtime.plan import DEFAULT_RESAMPLED_S_PER_INPUT_MVOXEL, _substitute

    rates = {"resample:grid+input_mvoxel": (0.1, 0.9, 0.035), "preprocess:grid_mvoxel": (0.002, 0.014)}
    assert _substitute("resample:grid_mvoxel", rates) == (0.1, 0.9)
    assert _substitute("preprocess:grid+input_mvoxel", rates) == (
        0.002, 0.014, DEFAULT_RESAMPLED_S_PER_INPUT_MVOXEL["preprocess"])
    assert _substitute("preprocess:grid_mvoxel", {}) is None and _substitute("resample:grid+input_mvoxel", {}) is None


def test_an_older_tables_own_spacing_runs_move_to_their_keys_and_stay_there(tmp_path: Path) -> None:
    """An older table's own-spacing runs (under the resampled keys, 0 input Mvoxels) go ahead of the runs recorded
    under the new keys, for both stages, the last STAGE_SAMPLES kept; the next recorded run writes the table so
    moved, and twelve resampled runs after it no longer push the own-spacing ones out."""
    from edgeseg.runtime.plan import STAGE_SAMPLES, LatencyTable, _on_own_spacing_apart

    old = [[0.21, 0.0, round(0.05 + i / 1000, 3), 0.5] for i in range(5)]
    samples = {"resample:grid+input_mvoxel": [*old[:3], [0.47, 6.0, 0.7, 1.8]],
               "preprocess:grid+input_mvoxel": [[0.21, 0.0, 0.003]],
               "resample:grid_mvoxel": [[0.21, round(0.06 + i / 1000, 3), 0.5] for i in range(11)]}
    moved = _on_own_spacing_apart(samples)
    assert moved["resample:grid+input_mvoxel"] == [[0.47, 6.0, 0.7, 1.8]]
    assert moved["preprocess:grid_mvoxel"] == [[0.21, 0.003]] and "preprocess:grid+input_mvoxel" not in [
        k for k, v in moved.items() if v]
    own = moved["resample:grid_mvoxel"]
    # the moved runs ahead of the newer ones, the last STAGE_SAMPLES of the 14 kept: the two oldest dropped
    assert len(own) == STAGE_SAMPLES and own[:2] == [[0.21, 0.052, 0.5], [0.21, 0.06, 0.5]]
    assert own[-1] == [0.21, 0.07, 0.5]

    path = tmp_path / "latency.json"
    path.write_text(json.dumps({"version": 1, "tiles": {}, "overheads": {"b|CPU|auto": {
        "stage_samples": {"resample:grid+input_mvoxel": old}}}}), encoding="utf-8")
    table = LatencyTable(path)
    for _ in range(STAGE_SAMPLES):
        table.record_stages("b", "CPU", None, {"resample:grid+input_mvoxel": (0.47, 6.0)}, {"resample": 0.7})
    stored = json.loads(path.read_text(encoding="utf-8"))["overheads"]["b|CPU|auto"]["stage_samples"]
    assert stored["resample:grid_mvoxel"] == [[0.21, row[2], 0.5] for row in old]
    assert LatencyTable(path).stage_rates("b", "CPU", None)["resample:grid_mvoxel"][1] == pytest.approx(
        float(np.mean([row[2] for row in old])) / 0.21, rel=0.05)


def test_a_dicom_stage_is_fitted_per_file_and_per_voxel_together() -> None:
    """Writing a DICOM series' results costs per source plane (the SEG's frames, the SR) and per voxel (the
    masks): runs of different shapes give back both rates and predict a new shape; a first run predicts in
    proportion to its files (a small series' fixed costs), never extrapolated from its few voxels."""
    from edgeseg.runtime.plan import fit_stage_joint, predict_stages, stage_units, units_of_key

    def cost(inst: float, mv: float) -> float:
        return 0.7 + 0.025 * inst + 0.1 * mv

    sizes = [(20, 0.21), (72, 6.1), (300, 25.4), (200, 52.4)]
    runs = [(inst, mv, cost(inst, mv), 10.0) for inst, mv in sizes]
    fixed, per_file, per_mv = fit_stage_joint(runs, 2)
    assert (fixed, per_file, per_mv) == pytest.approx((0.7, 0.025, 0.1), rel=1e-6)
    first = fit_stage_joint(runs[:1], 2, "half")  # one series: half per series, half per file
    assert first[2] == 0.0 and first[0] == pytest.approx(cost(20, 0.21) / 2)
    assert first[0] + first[1] * 72 == pytest.approx(cost(20, 0.21) / 2 * (1 + 72 / 20))
    # two runs of one in-plane size (files and voxels in proportion): a line in the files
    assert fit_stage_joint(runs[1:3], 2)[2] == 0.0
    # units of one kind (network-grid and input Mvoxels) before the runs span a plane: one line through their
    # sum, each unit at its weight's share of the rate (all 1 unless given)
    grids = [(0.2, 0.0, 0.06, 1.0), (1.0, 6.0, 0.88, 2.0)]
    fixed_g, per_grid, per_input = fit_stage_joint(grids, 2, "sum")
    assert per_grid == per_input and fixed_g + per_grid * 7.0 == pytest.approx(0.88)
    fixed_w, per_grid_w, per_input_w = fit_stage_joint(grids, 2, "sum", (1.0, 0.5))
    assert per_input_w == pytest.approx(per_grid_w / 2) and fixed_w + per_grid_w * 4.0 == pytest.approx(0.88)
    # one size seen: in proportion to that sum
    assert fit_stage_joint(grids[1:], 2, "sum", (1.0, 0.5)) == pytest.approx((0.0, 0.22, 0.11))
    assert fit_stage_joint(runs[:1], 2) == pytest.approx((0.0, cost(20, 0.21) / 20, 0.0))  # files alone
    details = {"instances": 400, "input_mvoxels": 104.9, "mvoxels": 110.0, "tile_seconds": 5.0,
               "resampled": True}
    units = stage_units(details, True)
    assert units["write:dicom_instance+mvoxel"] == (400.0, 104.9)
    assert units["read:instance+mvoxel"] == (400.0, 104.9)
    rates = {key: (0.0,) * (1 + units_of_key(key)) for key in units}
    rates["write:dicom_instance+mvoxel"] = (fixed, per_file, per_mv)
    rates["read:instance+mvoxel"] = (0.1, 0.001, 0.01)
    stages = predict_stages(details, rates)
    assert stages is not None
    assert stages["write"] == pytest.approx(cost(400, 104.9))
    assert stages["read"] == pytest.approx(0.1 + 0.4 + 1.049)


def test_stage_samples_of_several_units_are_recorded_and_fitted(tmp_path: Path) -> None:
    """The latency table keeps a DICOM run's files and voxels with its seconds and fits them again after a
    reload (a table from before, with one unit per key, is simply not used for the new keys)."""
    from edgeseg.runtime.plan import LatencyTable

    table = LatencyTable(tmp_path / "latency.json")
    for inst, mv in [(20, 0.2), (72, 6.0), (300, 25.0), (200, 52.0)]:
        table.record_stages("b", "CPU", None, {"write:dicom_instance+mvoxel": (float(inst), mv)},
                            {"write": 1.0 + 0.02 * inst + 0.1 * mv, "infer": 5.0})
    again = LatencyTable(tmp_path / "latency.json")
    fixed, per_file, per_mv = again.stage_rates("b", "CPU", None)["write:dicom_instance+mvoxel"]
    assert (fixed, per_file, per_mv) == pytest.approx((1.0, 0.02, 0.1), rel=1e-6)


def test_a_joint_fit_never_predicts_with_a_negative_rate() -> None:
    """Runs whose plane would need a negative rate (here: seconds falling with the voxels) get that rate 0 and the
    best plane through the others, as scipy's nnls would give (the frozen app leaves scipy.optimize out)."""
    from edgeseg.runtime.plan import _nonnegative_lstsq, fit_stage_joint

    runs = [(20.0, 1.0, 3.0, 9.0), (200.0, 50.0, 6.0, 9.0), (300.0, 20.0, 9.0, 9.0), (100.0, 80.0, 2.0, 9.0)]
    rates = fit_stage_joint(runs, 2)
    assert min(rates) >= 0.0 and rates[2] == 0.0
    rng = np.random.default_rng(0)
    for _ in range(50):
        a, b = rng.normal(size=(6, 3)), rng.normal(size=6)
        x = _nonnegative_lstsq(a, b)
        assert (x >= 0).all()
        err = np.sum((a @ x - b) ** 2)
        for _ in range(50):  # no non-negative point nearby does better
            y = np.maximum(0.0, x + rng.normal(scale=0.1, size=3))
            assert np.sum((a @ y - b) ** 2) >= err - 1e-9
