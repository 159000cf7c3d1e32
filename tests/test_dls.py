"""Dynamic Layer Selection: schedule, modes, randomness, scoring, state (spec section 3)."""

from __future__ import annotations

import json

import pytest
import torch
from peft import LoraConfig, get_peft_model

from conftest import tiny_model
from rosa import DLSConfig, DynamicLayerSelector, RoSAConfig, RoSAError, get_rosa_model

N_LAYERS = 4


def rosa_model(seed: int = 0):
    return get_rosa_model(tiny_model("llama", seed=seed, num_hidden_layers=N_LAYERS), RoSAConfig(init_seed=seed)).train()


def adapter_parameters(model) -> dict[str, torch.nn.Parameter]:
    """Every RoAE parameter by name (``...self_attn.rosa_roae.default.q_A``)."""
    named = {n: p for n, p in model.named_parameters() if "rosa_roae" in n}
    assert len(named) == 2 * N_LAYERS  # q_A, q_B per layer
    return named


def batch(step: int, size: int = 4):
    return torch.randint(3, 97, (size, 10), generator=torch.Generator().manual_seed(1000 + step))


def adamw(model, weight_decay: float = 0.1):
    return torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2, weight_decay=weight_decay)


def train_step(model, selector, optimizer, step: int) -> float:
    tokens = batch(step)
    loss = model(tokens, labels=tokens).loss
    loss.backward()
    selector.step()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return float(loss.detach())


def layer_parameters(selector, index):
    return selector.groups[index].adapter_parameters


def snapshot(selector, optimizer, index):
    params = [p.detach().clone() for p in layer_parameters(selector, index)]
    states = [{k: v.clone() for k, v in optimizer.state[p].items()} for p in layer_parameters(selector, index)]
    return params, states


def identical(a, b) -> bool:
    params_a, states_a = a
    params_b, states_b = b
    return all(torch.equal(x, y) for x, y in zip(params_a, params_b)) and all(
        sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa) for sa, sb in zip(states_a, states_b)
    )


def test_schedule_trains_every_layer_during_warmup_then_reselects_every_interval():
    model = rosa_model()
    selector = DynamicLayerSelector(model, DLSConfig(warmup=3, interval=4, k_ratio=0.5, seed=0))
    optimizer = adamw(model)
    selected_per_step = []
    for step in range(12):
        selected_per_step.append(list(selector.selected))
        train_step(model, selector, optimizer, step)
    assert selected_per_step[:3] == [[0, 1, 2, 3]] * 3
    assert [record["step"] for record in selector.history] == [3, 7, 11]
    assert [record["scored_at_step"] for record in selector.history] == [2, 6, 10]
    for record in selector.history:
        assert len(record["selected"]) == 2 and len(record["scores"]) == N_LAYERS
        assert record["kind"] in ("exploit", "explore")
        assert all(s > 0 for s in record["scores"])
        start = record["step"]
        assert all(selected_per_step[t] == record["selected"] for t in range(start, min(start + 4, 12)))


@pytest.mark.parametrize("mode", ["skip", "zero", "freeze"])
def test_mode_semantics_with_adamw_and_weight_decay(mode):
    model = rosa_model()
    selector = DynamicLayerSelector(model, DLSConfig(warmup=1, interval=1000, k_ratio=0.5, mode=mode, seed=0))
    optimizer = adamw(model, weight_decay=0.1)
    train_step(model, selector, optimizer, 0)  # all layers train and get optimizer state
    unselected = [i for i in range(N_LAYERS) if i not in selector.selected]
    assert len(unselected) == 2
    before = {i: snapshot(selector, optimizer, i) for i in range(N_LAYERS)}

    tokens = batch(1)
    model(tokens, labels=tokens).loss.backward()
    if mode == "freeze":
        # no weight gradient was computed for the layers that are not selected
        for i in unselected:
            assert all(not p.requires_grad and p.grad is None for p in layer_parameters(selector, i))
    else:
        assert all(p.grad is not None for i in unselected for p in layer_parameters(selector, i))
    selector.step()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)

    after = {i: snapshot(selector, optimizer, i) for i in range(N_LAYERS)}
    for i in selector.selected:
        assert not identical(before[i], after[i])
    for i in unselected:
        if mode == "zero":
            # stale AdamW momentum and weight decay still move them: the documented hazard of "zero"
            assert not any(torch.equal(x, y) for x, y in zip(before[i][0], after[i][0]))
        else:
            assert identical(before[i], after[i])


def test_freeze_truncates_backward_below_the_lowest_selected_layer():
    model = rosa_model()
    selector = DynamicLayerSelector(model, DLSConfig(warmup=1, interval=2, p_exploit=0.0, mode="freeze", seed=1))
    optimizer = adamw(model)
    train_step(model, selector, optimizer, 0)
    lowest = min(selector.selected)
    assert lowest > 0, "seed chosen so the selection leaves layer 0 out"
    needs_grad = {}
    hooks = [
        layer.register_forward_hook(lambda m, a, out, i=i: needs_grad.__setitem__(i, out[0].requires_grad if isinstance(out, tuple) else out.requires_grad))
        for i, layer in enumerate(model.get_base_model().model.layers)
    ]
    tokens = batch(1)
    model(tokens, labels=tokens).loss.backward()  # step 1: not a scoring step
    assert needs_grad == {i: i >= lowest for i in range(N_LAYERS)}
    selector.step()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    model(tokens, labels=tokens).loss.backward()  # step 2 scores the next selection: every layer is reached
    assert needs_grad == {i: True for i in range(N_LAYERS)}
    for hook in hooks:
        hook.remove()


def selection_sequence(seed: int, steps: int = 14) -> list[list[int]]:
    model = rosa_model()
    selector = DynamicLayerSelector(model, DLSConfig(warmup=1, interval=1, k_ratio=0.5, p_exploit=0.5, seed=seed))
    optimizer = adamw(model)
    for step in range(steps):
        train_step(model, selector, optimizer, step)
    return [record["selected"] + [record["kind"]] for record in selector.history]


def test_same_seed_gives_the_same_selections_and_another_seed_does_not():
    assert selection_sequence(0) == selection_sequence(0)
    assert selection_sequence(0) != selection_sequence(1)


def test_exploit_and_explore_frequencies_match_p_exploit():
    """1500 selections; binomial sd of the exploit share is 0.0103 at p=0.8, tolerance 0.035 (3.4 sd).
    Explore picks must be uniform: each layer's share of explore picks within 0.06 of k/N=0.5."""
    model = get_rosa_model(tiny_model("llama", num_hidden_layers=N_LAYERS, hidden_size=16, intermediate_size=16, num_attention_heads=2, num_key_value_heads=1)).train()
    selector = DynamicLayerSelector(model, DLSConfig(warmup=1, interval=1, k_ratio=0.5, p_exploit=0.8, seed=0))
    tokens = torch.randint(3, 97, (1, 4), generator=torch.Generator().manual_seed(0))
    for _ in range(1500):
        model(tokens, labels=tokens).loss.backward()
        selector.step()
    kinds = [record["kind"] for record in selector.history]
    assert len(kinds) == 1500
    assert abs(kinds.count("exploit") / 1500 - 0.8) < 0.035
    explore = [record["selected"] for record in selector.history if record["kind"] == "explore"]
    for layer in range(N_LAYERS):
        assert abs(sum(layer in s for s in explore) / len(explore) - 0.5) < 0.06
    for record in selector.history:
        if record["kind"] == "exploit":
            top = sorted(range(N_LAYERS), key=lambda i: -record["scores"][i])[:2]
            assert record["selected"] == sorted(top)


@pytest.mark.parametrize("mode", ["skip", "zero", "freeze"])
def test_norm_weights_are_bit_identical_after_training_even_inside_the_optimizer(mode):
    model = rosa_model()
    norms_before = {n: p.detach().clone() for n, p in model.named_parameters() if "norm" in n}
    selector = DynamicLayerSelector(model, DLSConfig(warmup=1, interval=2, mode=mode))
    everything = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.1)  # norms included on purpose
    for step in range(8):
        train_step(model, selector, everything, step)
    assert len(selector.history) == 4
    assert all(torch.equal(p, norms_before[n]) for n, p in model.named_parameters() if "norm" in n)


def test_scores_use_the_gradient_accumulated_over_all_micro_batches():
    def scores(micro_batches: int) -> list[float]:
        model = rosa_model()
        selector = DynamicLayerSelector(model, DLSConfig(warmup=1, interval=10))
        tokens = batch(0, size=4)
        for chunk in tokens.chunk(micro_batches):
            (model(chunk, labels=chunk).loss / micro_batches).backward()
        selector.step()
        return selector.history[0]["scores"]

    full_batch = scores(1)
    torch.testing.assert_close(scores(2), full_batch, rtol=1e-4, atol=1e-7)
    torch.testing.assert_close(scores(4), full_batch, rtol=1e-4, atol=1e-7)


def test_state_dict_resume_continues_exactly_like_an_uninterrupted_run():
    def run(steps, selector_state=None, model_state=None, optimizer_state=None, start=0):
        model = rosa_model()
        selector = DynamicLayerSelector(model, DLSConfig(warmup=2, interval=2, p_exploit=0.5, mode="freeze", seed=5))
        optimizer = adamw(model)
        if selector_state is not None:
            with torch.no_grad():
                for name, tensor in adapter_parameters(model).items():
                    tensor.copy_(model_state[name])
            optimizer.load_state_dict(optimizer_state)
            selector.load_state_dict(json.loads(json.dumps(selector_state)))
        for step in range(start, steps):
            train_step(model, selector, optimizer, step)
        weights = {n: p.detach().clone() for n, p in adapter_parameters(model).items()}
        return selector, weights, optimizer

    full, full_weights, _ = run(12)
    half, half_weights, half_optimizer = run(6)
    resumed, resumed_weights, _ = run(12, half.state_dict(), half_weights, half_optimizer.state_dict(), start=6)
    assert resumed.history == full.history and len(full.history) == 6
    assert all(torch.equal(resumed_weights[n], full_weights[n]) for n in full_weights)


def test_load_state_dict_refuses_another_setup():
    selector = DynamicLayerSelector(rosa_model(), DLSConfig(seed=1))
    other = DynamicLayerSelector(rosa_model(), DLSConfig(seed=2))
    with pytest.raises(RoSAError, match="saved for another setup"):
        other.load_state_dict(selector.state_dict())


def test_step_without_backward_on_a_scoring_step_says_how_to_call_it():
    selector = DynamicLayerSelector(rosa_model(), DLSConfig(warmup=1))
    with pytest.raises(RoSAError, match=r"after loss.backward\(\)"):
        selector.step()


def test_model_without_trainable_layer_parameters_is_refused():
    with pytest.raises(RoSAError, match="no trainable parameter inside the decoder layers"):
        DynamicLayerSelector(tiny_model("llama").requires_grad_(False))


@pytest.mark.parametrize("use_dora", [False, True], ids=["lora", "dora"])
@pytest.mark.parametrize("mode", ["skip", "freeze"])
def test_dls_on_peft_lora_and_dora(use_dora, mode):
    base = tiny_model("qwen2", num_hidden_layers=N_LAYERS)
    model = get_peft_model(base, LoraConfig(r=4, target_modules=["q_proj", "v_proj"], use_dora=use_dora)).train()
    norms_before = {n: p.detach().clone() for n, p in model.named_parameters() if "norm" in n}
    selector = DynamicLayerSelector(model, DLSConfig(warmup=1, interval=1000, mode=mode))
    per_layer = 3 if use_dora else 2  # lora_A, lora_B (+ magnitude) per targeted module
    assert [len(g.adapter_parameters) for g in selector.groups] == [2 * per_layer] * N_LAYERS
    optimizer = adamw(model)
    train_step(model, selector, optimizer, 0)
    unselected = [i for i in range(N_LAYERS) if i not in selector.selected]
    before = {i: snapshot(selector, optimizer, i) for i in unselected}
    train_step(model, selector, optimizer, 1)
    assert all(identical(before[i], snapshot(selector, optimizer, i)) for i in unselected)
    assert all(torch.equal(p, norms_before[n]) for n, p in model.named_parameters() if "norm" in n)


def test_freeze_mode_under_gradient_checkpointing_matches_plain_training():
    def run(checkpointing: bool):
        model = rosa_model()
        if checkpointing:
            model.gradient_checkpointing_enable()
        selector = DynamicLayerSelector(model, DLSConfig(warmup=1, interval=2, p_exploit=0.5, mode="freeze", seed=4))
        optimizer = adamw(model)
        for step in range(6):
            train_step(model, selector, optimizer, step)
        return selector.history, {n: p.detach().clone() for n, p in adapter_parameters(model).items()}

    plain_history, plain_weights = run(False)
    checkpointed_history, checkpointed_weights = run(True)
    assert [r["selected"] for r in checkpointed_history] == [r["selected"] for r in plain_history]
    for name, weight in plain_weights.items():
        torch.testing.assert_close(checkpointed_weights[name], weight, rtol=1e-5, atol=1e-6)
