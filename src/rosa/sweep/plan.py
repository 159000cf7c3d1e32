"""What a sweep runs: a grid of config assignments over a base configuration, one run per point.

A point is named by its assignments (``method-lora__seed-1``), so the same grid always maps to the
same run directories and a rerun can tell finished points from missing ones.
"""

from __future__ import annotations

import itertools
import re
from dataclasses import dataclass, field
from typing import Any

import yaml

from rosa.errors import RoSAConfigError
from rosa.train.config import ExperimentConfig, resolve_field, with_assignments

# The LoRA-family methods of the ablation get RoSA's parameter budget on the same model and config.
BUDGET_MATCHED = {"match_params": "rosa"}


@dataclass(frozen=True)
class Axis:
    """One swept field. ``extra`` adds assignments to particular values (a preset's matched budgets)."""

    field: str
    values: tuple[Any, ...]
    extra: dict[Any, dict[str, Any]] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"field": self.field, "values": list(self.values), "extra": {str(k): v for k, v in self.extra.items()}}


@dataclass(frozen=True)
class Preset:
    description: str
    fixed: dict[str, Any]
    axes: tuple[Axis, ...]


PRESETS = {
    "ablation": Preset(
        "the paper's ablation: full RoSA, RoAE only, DLS on LoRA, and LoRA, DoRA, PiSSA, each LoRA-family "
        "method at the rank whose trainable parameters are closest to RoSA's",
        fixed={},
        axes=(Axis("method", ("rosa", "roae", "lora-dls", "lora", "dora", "pissa"),
                   extra={m: BUDGET_MATCHED for m in ("lora-dls", "lora", "dora", "pissa")}),),
    ),
    "k_ratio": Preset("the paper's DLS sweep: fraction of layers trained at a time", {"method": "rosa"},
                      (Axis("dls.k_ratio", (0.25, 0.5, 0.75, 1.0)),)),
    "r_low": Preset("the paper's RoAE sweep: fraction of rotary pairs adapted", {"method": "rosa"},
                    (Axis("rosa.r_low", (0.1, 0.25, 0.5, 0.75)),)),
}


@dataclass(frozen=True)
class Point:
    name: str
    assignments: dict[str, Any]
    config: ExperimentConfig


def parse_axis(text: str) -> Axis:
    """``k_ratio=0.25,0.5`` or ``rosa.targets=[q],[q,k]``: values are YAML, read as one flow list."""
    name, sep, values = text.partition("=")
    if not sep or not name.strip() or not values.strip():
        raise RoSAConfigError(f"--grid expects field=value1,value2,..., got {text!r}.")
    try:
        parsed = yaml.safe_load(f"[{values}]")
    except yaml.YAMLError as err:
        raise RoSAConfigError(f"--grid {text!r}: the values are not valid YAML ({err}).") from err
    parsed = [_number(value) for value in parsed]
    if any(a == b for i, a in enumerate(parsed) for b in parsed[i + 1 :]):
        raise RoSAConfigError(f"--grid {text!r} repeats a value.")
    return Axis(resolve_field(name.strip()), tuple(parsed))


def _number(value: Any) -> Any:
    """YAML reads ``1e-4`` (no dot) as a string; a sweep axis needs it as the number it means."""
    if isinstance(value, str) and re.fullmatch(r"[-+]?(\d+\.?\d*|\.\d+)[eE][-+]?\d+", value):
        return float(value)
    return value


def axes_of(preset: str | None, grid: list[Axis]) -> tuple[dict[str, Any], tuple[Axis, ...]]:
    """Fixed assignments and axes of a preset (if any) followed by the user's grid."""
    if preset is not None and preset not in PRESETS:
        raise RoSAConfigError(f"unknown sweep preset {preset!r}; choose one of {', '.join(PRESETS)}.")
    fixed, axes = (dict(PRESETS[preset].fixed), PRESETS[preset].axes) if preset else ({}, ())
    axes = axes + tuple(grid)
    fields = [a.field for a in axes] + list(fixed)
    clash = sorted({f for f in fields if fields.count(f) > 1})
    if clash:
        raise RoSAConfigError(f"field(s) {clash} are set twice (by the preset and --grid); drop one.")
    if not axes:
        raise RoSAConfigError("nothing to sweep: give --preset and/or at least one --grid field=values.")
    return fixed, axes


def point_name(assignments: dict[str, Any]) -> str:
    def text(value: Any) -> str:
        return "+".join(map(str, value)) if isinstance(value, (list, tuple)) else str(value)

    return "__".join(f"{name}-{text(value)}" for name, value in assignments.items()).replace("/", "_")


def expand(base: dict[str, Any], fixed: dict[str, Any], axes: tuple[Axis, ...], runs_dir: str) -> list[Point]:
    """Every point of the grid as a validated config, so a bad value fails before anything runs."""
    points = []
    for values in itertools.product(*(axis.values for axis in axes)):
        swept = {axis.field: value for axis, value in zip(axes, values)}
        extra = {k: v for axis, value in zip(axes, values) if axis.extra for k, v in axis.extra.get(value, {}).items()}
        name = point_name(swept)
        data = with_assignments(base, {**fixed, **extra, **swept, "output_dir": f"{runs_dir}/{name}"})
        try:
            config = ExperimentConfig.from_dict(data)
        except RoSAConfigError as err:
            raise RoSAConfigError(f"sweep point {name}: {err}") from err
        points.append(Point(name, swept, config))
    return points

