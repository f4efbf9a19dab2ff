"""Where an INT8 tile's time goes: OpenVINO per-layer performance counters, summed by layer type.

    python benchmarks/layer_profile.py BUNDLE [--variant 1.5mm] [--part 0] [--precision int8]

Compiles the part as the runtime does (with PERF_COUNT on), runs a few tiles of real-looking noise and prints
the share of time per executed layer type and the 10 slowest layers.
"""
from __future__ import annotations

import edgeseg  # noqa: F401 - before numpy: the process set-up edgeseg's own commands have (edgeseg/_memory.py)

import argparse
import sys
from collections import defaultdict
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import print_table  # noqa: E402


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("bundle", type=Path)
    p.add_argument("--variant")
    p.add_argument("--part", type=int, default=0)
    p.add_argument("--precision", default="int8")
    p.add_argument("--hint", default="bf16", help="INFERENCE_PRECISION_HINT (bf16, f32)")
    p.add_argument("--repeats", type=int, default=3)
    args = p.parse_args()
    import openvino as ov

    from edgeseg.bundle import load_bundle

    bundle = load_bundle(args.bundle, verify=False)
    part = bundle.variant(args.variant).parts[args.part]
    compiled = ov.Core().compile_model(str(bundle.model_path(part, args.precision)), "CPU",
                                       {"PERF_COUNT": True, "PERFORMANCE_HINT": "LATENCY",
                                        "INFERENCE_PRECISION_HINT": args.hint})
    request = compiled.create_infer_request()
    tile = np.random.default_rng(0).standard_normal((1, part.num_input_channels, *part.patch_size)).astype(np.float32)
    request.infer({0: tile})  # warm-up
    by_type: dict[str, float] = defaultdict(float)
    layers: dict[str, tuple[str, str, float]] = {}
    for _ in range(args.repeats):
        request.infer({0: tile})
        for info in request.profiling_info:
            us = info.real_time.total_seconds() * 1e6
            by_type[f"{info.node_type} ({info.exec_type})"] += us / args.repeats
            name, exec_type, prev = layers.get(info.node_name, (info.node_type, info.exec_type, 0.0))
            layers[info.node_name] = (name, exec_type, prev + us / args.repeats)
    total = sum(by_type.values())
    rows = [{"layer type (kernel)": k, "ms": v / 1000, "share %": 100 * v / total}
            for k, v in sorted(by_type.items(), key=lambda kv: -kv[1])[:15]]
    print(f"part {part.name}, {args.precision} with hint {args.hint}: {total / 1000:.0f} ms per tile\n")
    print_table(rows, [("layer type (kernel)", "layer type (kernel)"), ("ms", "ms"), ("share %", "share %")])
    print()
    slow = sorted(layers.items(), key=lambda kv: -kv[1][2])[:10]
    print_table([{"layer": n[:60], "type": t[0], "kernel": t[1], "ms": t[2] / 1000} for n, t in slow],
                [("layer", "slowest layers"), ("type", "type"), ("kernel", "kernel"), ("ms", "ms")])
    return 0


if __name__ == "__main__":
    sys.exit(main())
