"""Which OpenVINO devices edgeseg runs on, and whether one is on this PC: the one rule that the watcher's
configuration, ``edgeseg doctor`` and the engine share.

edgeseg compiles a bundle part on ``CPU``, on an Intel iGPU (``GPU``; ``GPU.<n>`` when OpenVINO lists several) or on
``AUTO`` (OpenVINO picks; ``AUTO:GPU,CPU`` names the candidates, each from the same list). Its precision fallback,
fp16 output and memory handling are made for those. Other OpenVINO devices (``NPU``, ``HETERO:...``,
``MULTI:...``) are refused up front, where the configuration is checked, instead of failing at every series.
Names are case-insensitive; :func:`normalize_device` gives the spelling used everywhere else.
"""
from __future__ import annotations

import re
from typing import Sequence

#: the supported device names, for messages
SUPPORTED_DEVICES = "CPU, GPU (Intel iGPU), GPU.<n>, AUTO or AUTO:<devices> (e.g. AUTO:GPU,CPU)"

_ONE = r"(?:CPU|GPU(?:\.\d+)?)"
_RULE = re.compile(rf"(?:{_ONE}|AUTO(?::{_ONE}(?:,{_ONE})*)?)")


def normalize_device(name: str) -> str:
    """``name`` as edgeseg spells it: stripped, upper case ("gpu.1 " -> "GPU.1")."""
    return name.strip().upper()


def device_problem(name: object) -> str | None:
    """Why edgeseg does not run on the device ``name`` (None: it does, whatever the case of the letters)."""
    if not isinstance(name, str):
        return f"must be a device name, got {name!r}"
    if not _RULE.fullmatch(normalize_device(name)):
        return f"{name!r} is not a device edgeseg runs on"
    return None


def device_present(name: str, available: Sequence[str]) -> bool:
    """Whether the supported device ``name`` can run on a PC whose OpenVINO lists ``available`` (e.g. ["CPU",
    "GPU"]; a single iGPU is listed as "GPU" and answers to "GPU.0" too). ``AUTO``: any of its candidates (any
    device, without a list) is there."""
    name = normalize_device(name)
    if name.startswith("AUTO"):
        wanted = name.partition(":")[2]
        return any(device_present(d, available) for d in wanted.split(",")) if wanted else bool(available)
    if name == "GPU":
        return any(d.startswith("GPU") for d in available)
    return name in available or (name == "GPU.0" and "GPU" in available)
