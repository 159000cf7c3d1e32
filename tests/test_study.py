"""The study's report states only what its numbers support: the verdict sentences are computed."""

from __future__ import annotations

from conftest import REPO, load_script

study = load_script("studies/smollm2_study.py")


def paired_tests(*deltas_and_flags):
    """Paired tests of "X above Y" as the study computes them: delta is X minus Y, in points."""
    return [{"micro": {"delta": delta, "significant": significant}} for delta, significant in deltas_and_flags]


def test_a_claim_is_supported_only_when_every_seed_shows_it():
    assert study.claim_verdict("RoSA above LoRA", paired_tests((3.0, True), (2.0, True), (4.0, True))).startswith(
        "**supported** (mean difference +3.00 points; significant in 3 of 3 seeds for it, 0 against")
    assert study.claim_verdict("RoSA above LoRA", paired_tests((3.0, True), (2.0, False), (4.0, True))).startswith(
        "**not shown** (mean difference +3.00 points; significant in 2 of 3 seeds for it, 0 against")


def test_a_claim_the_other_way_round_is_contradicted_and_a_mixed_one_inconsistent():
    assert study.claim_verdict("x", paired_tests((-5.0, True), (-1.0, False), (-3.0, False))).startswith(
        "**contradicted** (mean difference -3.00 points; significant in 0 of 3 seeds for it, 1 against")
    assert study.claim_verdict("x", paired_tests((5.0, True), (-6.0, True), (0.0, False))).startswith("**inconsistent**")


def test_no_significant_difference_is_reported_as_none():
    assert study.significance_verdict({}, 15, 3).startswith("None does: this study finds no accuracy difference")


def test_significant_differences_are_listed_with_seeds_and_direction_against_chance():
    verdict = study.significance_verdict({"dora": [9.5, 21.9, -4.3], "lora": [2.0]}, 15, 3)
    assert verdict == ("4 do: dora in 3 of 3 seeds (2 above RoSA, 1 below); lora in 1 of 3 seeds (1 above RoSA, 0 below). "
                       "About 0.8 would be expected by chance at a 5% level.")


def test_loss_gaps_are_called_beyond_the_spread_only_when_they_are():
    points = [{"method": m, "train_loss": str(loss)} for m, losses in {
        "rosa": (3.0, 3.1, 3.2), "roae": (3.05, 3.15, 3.25), "lora-dls": (1.0, 1.1, 1.2),
        "lora": (3.0, 3.1, 3.2), "dora": (3.0, 3.1, 3.2), "pissa": (3.0, 3.1, 3.2)}.items() for loss in losses]
    lines = study.loss_lines(points)
    assert lines[0].startswith("- roae: mean training loss 3.1500 vs RoSA 3.1000 (+0.0500), within")
    assert lines[1].startswith("- lora-dls: mean training loss 1.1000 vs RoSA 3.1000 (-2.0000), beyond")


def test_each_size_names_its_runs_as_the_sweep_does():
    from rosa.sweep.plan import point_name

    for size in study.SIZES.values():
        for lr in size.lrs:
            assert study.grid_point(REPO, "rosa", lr).name == point_name({"method": "rosa", "training.lr": lr})


def test_committed_predictions_keep_no_test_item_text(tmp_path):
    import json

    path = tmp_path / "grid" / "runs" / "p" / "eval" / "greedy" / "predictions.jsonl"
    path.parent.mkdir(parents=True)
    items = [{"task": "boolq", "index": i, "prompt": "Please answer ... question", "generation": "the correct answer is true",
              "extracted": "true", "label": "true", "correct": i == 0} for i in range(2)]
    path.write_text("".join(json.dumps(item) + "\n" for item in items))
    study.keep_no_test_items(tmp_path)
    study.keep_no_test_items(tmp_path)  # idempotent
    assert [json.loads(line) for line in path.read_text().splitlines()] == [
        {"task": "boolq", "index": 0, "extracted": "true", "correct": True},
        {"task": "boolq", "index": 1, "extracted": "true", "correct": False}]
