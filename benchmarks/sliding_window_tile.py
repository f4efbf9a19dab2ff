"""Per-tile cost of the sliding window against the network alone, on a TotalSegmentator-sized network.

    python benchmarks/sliding_window_tile.py --work /tmp/edgeseg-bench [--precision int8 fp32] [--rounds 3]

The network is the TS-sized 3 mm model (``tests/helpers/testmodels/ts_sized.py`` "852": PlainConvUNet, 128^3
patch, 51 outputs, random weights: speed only). Its IRs are built once into ``--work/ts51`` by the cheapest
route: torch -> ONNX -> FP32 IR, and ``nncf.quantize`` on ``--calibration-patches`` noise patches for INT8 (no
fidelity gate, no remedies: ``edgeseg export`` does those and takes many minutes; the per-tile cost of the
window does not depend on what the weights are).

Each precision is compiled as the runtime's engine compiles it (``engine.compile_model``: INT8 with the bf16
hint where the CPU has it, fp16 logits) and measured in its own child process:

* ``network s/tile``: the engine's request run tile after tile on the same input (median of ``--repeats`` per
  round);
* ``window s/tile``: ``sliding_window`` over a volume of ``--grid`` tiles (2x2x2 at step 0.5 by default), wall
  seconds of the whole call / tiles (cutting, inference, Gaussian weighting, fp16 accumulation), the way the
  segmenter calls it: where the network infers in bf16, with the update inside the network
  (``engine.accumulating_model``; ``--separate``: the plain network and the separate update), else the engine's
  requests;
* ``readout s``: ``Aggregated.argmax`` once at the end (not per tile).

The two are measured in ``--rounds`` rounds, the network alone then the window, in turn: a 2-core VM's speed drifts
by more than the 10 % looked for between one minute and the next, and a drift then reaches both sides of a round.
The table gives the median of the rounds' ratios and their range.
"""
from __future__ import annotations

import edgeseg  # noqa: F401 - before numpy: the process set-up edgeseg's own commands have (edgeseg/_memory.py)

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))  # helpers: the TS-sized plans
from _common import machine, peak_rss_mb, print_table, run_child, write_json  # noqa: E402

PATCH = (128, 128, 128)


def build_irs(work: Path, patches: int) -> dict[str, Path]:
    """FP32 and INT8 IRs of the TS-sized 51-class network under ``work`` (made once)."""
    out = {"fp32": work / "fp32.xml", "int8": work / "int8.xml"}
    if all(p.is_file() for p in out.values()):
        return out
    import openvino as ov
    import torch
    from helpers.testmodels import _nnunet_folder as nf
    from helpers.testmodels.ts_sized import model_plans

    from edgeseg.export.convert import export_onnx, save_ir, to_openvino
    from edgeseg.export.quantize import QuantizeSettings, quantize

    work.mkdir(parents=True, exist_ok=True)
    plans, dataset = model_plans("852")
    arch = plans["configurations"][nf.CONFIGURATION]["architecture"]
    torch.manual_seed(852)
    net = nf.build_network(arch, 1, nf.num_segmentation_heads(dataset)).eval()
    t0 = time.perf_counter()
    onnx_path = export_onnx(net, (1, 1, *PATCH), work / "model.onnx")
    model = to_openvino(onnx_path)
    save_ir(model, out["fp32"])
    print(f"FP32 IR in {time.perf_counter() - t0:.0f} s", flush=True)
    rng = np.random.default_rng(0)
    calib = [rng.standard_normal((1, 1, *PATCH)).astype(np.float32) for _ in range(patches)]
    t0 = time.perf_counter()
    q = quantize(ov.Core().read_model(str(out["fp32"])), calib, QuantizeSettings(subset_size=patches))
    save_ir(q, out["int8"])
    print(f"INT8 IR (NNCF, {patches} noise patches) in {time.perf_counter() - t0:.0f} s", flush=True)
    onnx_path.unlink()
    return out


def worker(args: argparse.Namespace) -> dict[str, Any]:
    from edgeseg.runtime.infer import engine, sliding_window as sw

    if hasattr(engine, "compile_model"):
        compiled, used = engine.compile_model(Path(args.xml), args.precision, "CPU", args.threads)
    else:  # the code before the engine had it (for a before/after comparison): the same configuration
        compiled, used = _compile_like_engine(Path(args.xml), args.precision, args.threads)
    request = compiled.create_infer_request()
    num_outputs = int(compiled.outputs[0].get_partial_shape()[1].get_length())
    rng = np.random.default_rng(0)
    tile = rng.standard_normal((1, 1, *PATCH)).astype(np.float32)
    request.infer({0: tile}, share_inputs=True, share_outputs=True)  # warm-up (allocation)

    def network_alone() -> list[float]:
        times = []
        for _ in range(args.repeats):
            t0 = time.perf_counter()
            request.infer({0: tile}, share_inputs=True, share_outputs=True)
            times.append(time.perf_counter() - t0)
        return times

    side = [p + p // 2 * (n - 1) for p, n in zip(PATCH, args.grid)]  # n tiles per axis at step 0.5
    data = rng.standard_normal((1, *side)).astype(np.float32)
    kwargs: dict[str, Any] = {}
    window_model: Any = None
    path = "separate update"
    if hasattr(engine, "accumulating_model") and used.endswith("+bf16") and not args.separate:
        window_model = _accumulating_window_model(engine, sw, Path(args.xml), args.threads)
        jobs, path = 1, "update in the network"
    if window_model is None and hasattr(sw, "window_jobs"):  # as segment.py calls it: the engine's requests in turn
        jobs = args.jobs or sw.window_jobs()
        window_model = [request, *(compiled.create_infer_request() for _ in range(jobs - 1))]
        kwargs["threads"] = args.aggregation_threads
    elif window_model is None:  # before: the engine's one request, tile after tile (segment.py on <= 4 cores)
        jobs, window_model = 1, request
    sw.sliding_window(data[:, :PATCH[0], :PATCH[1], :PATCH[2]], window_model, PATCH, num_outputs, 0.5,
                      **kwargs)  # compiles the aggregation kernels
    tiles = int(np.prod(args.grid))
    # rounds of (the network alone, the window) in turn: a drift of the machine's speed (other guests of the host,
    # the clock) reaches both sides of a round alike; each round's ratio, and their median
    times: list[float] = []
    rounds = []
    for _ in range(args.rounds):
        alone = network_alone()
        t0 = time.perf_counter()
        agg = sw.sliding_window(data, window_model, PATCH, num_outputs, 0.5, **kwargs)
        per_tile = (time.perf_counter() - t0) / tiles
        times += alone
        rounds.append({"network_s": float(np.median(alone)), "window_s": per_tile,
                       "overhead_pct": 100 * (per_tile / float(np.median(alone)) - 1)})
    t0 = time.perf_counter()
    agg.argmax()
    readout = time.perf_counter() - t0
    return {"precision_used": used, "classes": num_outputs, "jobs": jobs, "path": path,
            "aggregation_threads": kwargs.get("threads") or "default", "network_s": float(np.median(times)),
            "network_min_s": min(times), "window_s": float(np.median([r["window_s"] for r in rounds])),
            "tiles": tiles, "rounds": rounds, "overhead_pct": float(np.median([r["overhead_pct"] for r in rounds])),
            "overhead_range": " … ".join(f"{f(r['overhead_pct'] for r in rounds):+.1f}" for f in (min, max)),
            "readout_s": readout, "volume": "x".join(map(str, side)), "peak_rss_mb": peak_rss_mb()}


def _accumulating_window_model(engine: Any, sw: Any, xml: Path, threads: int | None) -> Any:
    """The network with the window's update inside (as ``compile_part`` builds it where the network infers in
    bf16), warmed up, as an ``AccumulatingRequest``; None where the compiled graph does not keep it exact."""
    from edgeseg.runtime.infer.tiling import gaussian_importance

    config: dict[str, Any] = {"PERFORMANCE_HINT": "LATENCY", "INFERENCE_PRECISION_HINT": "bf16"}
    if threads:
        config["INFERENCE_NUM_THREADS"] = threads
    compiled = engine.core().compile_model(engine.accumulating_model(xml, gaussian_importance(PATCH)), "CPU", config)
    if not engine.accumulates_exactly(compiled):
        return None
    request = compiled.create_infer_request()
    request.infer(engine.zero_inputs(compiled))  # warm-up, as compile_part does
    return sw.AccumulatingRequest(request)


def _compile_like_engine(xml: Path, precision: str, threads: int | None) -> tuple[Any, str]:
    import openvino as ov

    from edgeseg.runtime.infer.engine import _supports_bf16, core

    hint = "bf16" if precision == "int8" and _supports_bf16("CPU") else "f32"
    model = core().read_model(str(xml))
    if precision != "fp32":
        ppp = ov.preprocess.PrePostProcessor(model)
        ppp.output(0).tensor().set_element_type(ov.Type.f16)
        model = ppp.build()
    config: dict[str, Any] = {"PERFORMANCE_HINT": "LATENCY", "INFERENCE_PRECISION_HINT": hint}
    if threads:
        config["INFERENCE_NUM_THREADS"] = threads
    return core().compile_model(model, "CPU", config), f"{precision}+{hint}"


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--work", type=Path, default=Path("/tmp/edgeseg-bench"))
    p.add_argument("--precision", nargs="+", default=["int8", "fp32"])
    p.add_argument("--grid", type=int, nargs=3, default=[2, 2, 2], help="tiles per axis of the window's volume")
    p.add_argument("--repeats", type=int, default=5, help="network-alone runs per round")
    p.add_argument("--rounds", type=int, default=3,
                   help="rounds of (network alone, window) in turn; the table gives the median round's ratio")
    p.add_argument("--calibration-patches", type=int, default=3)
    p.add_argument("--threads", type=int, help="the network's inference threads (default: OpenVINO's)")
    p.add_argument("--jobs", type=int, help="infer requests used in turn (default: the runtime's)")
    p.add_argument("--aggregation-threads", type=int, help="default: the runtime's")
    p.add_argument("--separate", action="store_true",
                   help="the plain network and the separate update even where the runtime updates in the network")
    p.add_argument("--label", default="", help="a name for this code state in the table (e.g. before/after)")
    p.add_argument("--json", type=Path)
    p.add_argument("--worker", action="store_true")
    p.add_argument("--xml")
    args = p.parse_args()
    if args.worker:
        args.precision = args.precision[0]
        print(json.dumps(worker(args)))
        return 0
    irs = build_irs(args.work / "ts51", args.calibration_patches)
    rows = []
    for prec in args.precision:
        cmd = [str(Path(__file__).resolve()), "--worker", "--xml", str(irs[prec]), "--precision", prec,
               "--repeats", str(args.repeats), "--rounds", str(args.rounds), "--grid", *map(str, args.grid)]
        for flag in ("threads", "jobs", "aggregation_threads"):
            if getattr(args, flag):
                cmd += [f"--{flag.replace('_', '-')}", str(getattr(args, flag))]
        cmd += ["--separate"] if args.separate else []
        result, _ = run_child(cmd)
        result["config"] = f"{args.label} {prec}".strip()
        rows.append(result)
        print(f"  measured {result['config']}: network {result['network_s']:.3f} s/tile, window "
              f"{result['window_s']:.3f} s/tile", flush=True)
    print()
    print_table(rows, [("config", "configuration"), ("precision_used", "precision"), ("path", "window"),
                       ("classes", "classes"),
                       ("volume", "volume"), ("tiles", "tiles"), ("jobs", "requests"),
                       ("aggregation_threads", "agg threads"), ("network_s", "network s/tile"),
                       ("network_min_s", "network min s"), ("window_s", "window s/tile"),
                       ("overhead_pct", "window over network % (median round)"),
                       ("overhead_range", "rounds' range %"), ("readout_s", "readout s"),
                       ("peak_rss_mb", "peak RSS MB")])
    write_json(args.json, {"machine": machine(), "results": rows})
    return 0


if __name__ == "__main__":
    sys.exit(main())
