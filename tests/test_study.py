"""The study's report states only what its numbers support: the verdict sentences are computed."""

from __future__ import annotations

import importlib.util

from conftest import REPO

spec = importlib.util.spec_from_file_location("ablation_study", REPO / "studies" / "ablation_study.py")
study = importlib.util.module_from_spec(spec)
spec.loader.exec_module(study)


def test_no_significant_difference_is_reported_as_none():
    facts = {"m": {"significant": {}}}
    assert study.significance_verdict(facts, 0, 15).startswith("None does, so this study finds no accuracy difference")


def test_significant_differences_are_listed_with_seeds_and_direction_against_chance():
    facts = {"small": {"significant": {"dora": [9.5, 21.9, 4.3]}}, "big": {"significant": {"lora": [2.0]}}}
    verdict = study.significance_verdict(facts, 4, 30)
    assert verdict.startswith("4 do: dora on small in 3 of 3 seeds (3 above RoSA, 0 below); lora on big in 1 of 3 seeds (1 above RoSA, 0 below).")
    assert "About 1.5 would be expected by chance" in verdict
    assert "Every significant difference has the other method above RoSA" in verdict


def test_a_mixed_direction_makes_no_one_sided_claim():
    facts = {"m": {"significant": {"lora": [2.0], "dora": [-3.0]}}}
    verdict = study.significance_verdict(facts, 2, 15)
    assert "(0 above RoSA, 1 below)" in verdict
    assert "Every significant difference" not in verdict


def test_loss_gaps_are_called_beyond_the_spread_only_when_they_are():
    points = [{"method": m, "train_loss": str(loss)} for m, losses in {
        "rosa": (3.0, 3.1, 3.2), "roae": (3.05, 3.15, 3.25), "lora-dls": (1.0, 1.1, 1.2),
        "lora": (3.0, 3.1, 3.2), "dora": (3.0, 3.1, 3.2), "pissa": (3.0, 3.1, 3.2)}.items() for loss in losses]
    lines = study.loss_lines(points)
    assert lines[0].startswith("- roae: mean training loss 3.1500 vs RoSA 3.1000 (+0.0500), within")
    assert lines[1].startswith("- lora-dls: mean training loss 1.1000 vs RoSA 3.1000 (-2.0000), beyond")
