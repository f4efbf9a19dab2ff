"""A small planner world without a model: bundles of real schema parts with a fake identity, a typical volume, and
latency tables given as dicts (the planner's tests and the watcher's time-ceiling tests use them)."""
from __future__ import annotations

from typing import Callable

from edgeseg.bundle import ModelFile, Normalization, Part, Resampling, Variant
from edgeseg.runtime.read import SeriesGeometry


def make_part(name: str, spacing: float, patch: int = 32, step: float = 0.5, mirror: bool = False,
              tf: tuple[int, int, int] = (0, 1, 2)) -> Part:
    tb = tuple(tf.index(i) for i in range(3))
    return Part(name=name, label_map={1: 1}, num_input_channels=1, num_outputs=2, spacing=(spacing,) * 3,
                patch_size=(patch,) * 3, transpose_forward=tf, transpose_backward=tb,
                normalization=(Normalization("ZScoreNormalization"),), resampling_data=Resampling(),
                resampling_probabilities=Resampling(), tile_step_size=step, use_gaussian=True, use_mirroring=mirror,
                mirror_axes=(0, 1, 2) if mirror else (), folds=("0",),
                models={"int8": ModelFile("int8", f"{name}.xml", f"{name}.bin")})


class FakeBundle:
    """What the planner reads of a bundle: variants (with rank) and the recorded file hashes."""

    def __init__(self, *variants: Variant) -> None:
        self.variants = variants
        self.files = {"a.xml": "0" * 64}
        self.name = "fake"


ACCURATE = Variant("accurate_1.5mm", 0, "RAS", None, (make_part("organs", 1.5), make_part("muscles", 1.5)))
FAST = Variant("fast_3mm", 1, "RAS", None, (make_part("all", 3.0),))
BUNDLE = FakeBundle(FAST, ACCURATE)  # listed out of rank order on purpose
TYPICAL = SeriesGeometry((256, 208, 160), (1.5, 1.5, 1.5))
NO_OVERHEAD = (0.0, 0.0)


def latency(seconds: dict[str, float]) -> Callable[[Part], float | None]:
    return lambda part: seconds.get(part.name)
