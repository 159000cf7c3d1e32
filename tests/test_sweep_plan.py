"""``rosa sweep`` plans: grid parsing, field names, presets, and validation before anything runs."""

from __future__ import annotations

import pytest

from rosa.errors import RoSAConfigError
from rosa.sweep.plan import PRESETS, Axis, axes_of, expand, parse_axis, point_name
from rosa.sweep.runner import shard_of
from rosa.train.config import resolve_field

BASE = {"model": "m", "data": "commonsense_mix"}


@pytest.mark.parametrize(
    "name, dotted",
    [("k_ratio", "dls.k_ratio"), ("r_low", "rosa.r_low"), ("rank", "rosa.rank"), ("r", "lora.r"),
     ("seed", "seed"), ("method", "method"), ("lr", "training.lr"), ("dls.seed", "dls.seed")],
)
def test_short_field_names_resolve_to_their_section(name, dotted):
    assert resolve_field(name) == dotted


def test_ambiguous_and_unknown_field_names_are_refused_with_the_choices():
    with pytest.raises(RoSAConfigError, match=r"'alpha' is ambiguous: write one of \['lora.alpha', 'rosa.alpha'\]"):
        resolve_field("alpha")
    with pytest.raises(RoSAConfigError, match="unknown config field 'k_ratoi'; valid fields: .*dls.k_ratio"):
        resolve_field("k_ratoi")


def test_grid_values_are_yaml_so_numbers_and_lists_keep_their_types():
    assert parse_axis("k_ratio=0.25,0.5,1") == Axis("dls.k_ratio", (0.25, 0.5, 1))
    assert parse_axis("rosa.targets=[q],[q,k]") == Axis("rosa.targets", (["q"], ["q", "k"]))
    assert parse_axis("method=rosa,lora") == Axis("method", ("rosa", "lora"))
    assert parse_axis("lr=1e-4,2e-4") == Axis("training.lr", (1e-4, 2e-4))  # YAML alone reads strings
    for bad in ("k_ratio", "=1,2", "k_ratio=", "seed=1,1", "k_ratio=1,1.0", "lr=1e-4,0.0001"):
        with pytest.raises(RoSAConfigError):
            parse_axis(bad)


def test_the_grid_is_the_product_of_preset_and_user_axes_with_stable_names():
    fixed, axes = axes_of("k_ratio", [parse_axis("seed=1,2")])
    points = expand(BASE, fixed, axes, runs_dir="sweep/runs")
    assert [p.name for p in points] == [
        f"dls.k_ratio-{k}__seed-{s}" for k in (0.25, 0.5, 0.75, 1.0) for s in (1, 2)
    ]
    first = points[0].config
    assert (first.method, first.dls.k_ratio, first.seed, first.output_dir) == ("rosa", 0.25, 1, "sweep/runs/dls.k_ratio-0.25__seed-1")
    assert point_name({"rosa.targets": ["q", "k"], "model": "org/name"}) == "rosa.targets-q+k__model-org_name"


def test_list_values_become_points_too():
    points = expand(BASE, *axes_of(None, [parse_axis("rosa.targets=[q],[q,k]")]), runs_dir="r")
    assert [(p.name, p.config.rosa.targets) for p in points] == [
        ("rosa.targets-q", ("q",)), ("rosa.targets-q+k", ("q", "k"))]


def test_ablation_preset_matches_lora_family_budgets_to_rosa():
    fixed, axes = axes_of("ablation", [])
    points = {p.config.method: p.config for p in expand(BASE, fixed, axes, runs_dir="r")}
    assert list(points) == ["rosa", "roae", "lora-dls", "lora", "dora", "pissa"]
    assert {m: c.match_params for m, c in points.items()} == {
        "rosa": None, "roae": None, "lora-dls": "rosa", "lora": "rosa", "dora": "rosa", "pissa": "rosa"}


def test_r_low_preset_is_the_papers_sweep():
    assert PRESETS["r_low"].axes == (Axis("rosa.r_low", (0.1, 0.25, 0.5, 0.75)),)
    assert PRESETS["k_ratio"].axes == (Axis("dls.k_ratio", (0.25, 0.5, 0.75, 1.0)),)


def test_bad_plans_fail_before_any_point_runs():
    with pytest.raises(RoSAConfigError, match="set twice"):
        axes_of("ablation", [parse_axis("method=rosa")])
    with pytest.raises(RoSAConfigError, match="unknown sweep preset 'ablations'"):
        axes_of("ablations", [])
    with pytest.raises(RoSAConfigError, match="nothing to sweep"):
        axes_of(None, [])
    with pytest.raises(RoSAConfigError, match=r"sweep point dls.k_ratio-1.5: .*k_ratio"):
        expand(BASE, {}, (parse_axis("k_ratio=0.5,1.5"),), runs_dir="r")


def test_shards_split_the_points_disjointly_and_cover_them_all():
    points = expand(BASE, *axes_of("ablation", [parse_axis("seed=1,2,3")]), runs_dir="r")
    shards = [shard_of(points, i, 4) for i in range(4)]
    numbers = sorted(n for shard in shards for n, _ in shard)
    assert numbers == list(range(1, 19))
    assert [n for n, _ in shards[1]] == [2, 6, 10, 14, 18]
    assert [p.name for _, p in shards[0]][:2] == ["method-rosa__seed-1", "method-roae__seed-2"]
