"""The paths that make RoSA cheap to train (issue 5): RoAE's hand-written modulation backward, DLS
``freeze`` truncating backward (with and without gradient checkpointing), and torch.compile."""

from __future__ import annotations

import pytest
import torch
import torch._dynamo
import torch.nn.functional as F

from conftest import tiny_model
from rosa import DLSConfig, DynamicLayerSelector, RoSAConfig, get_rosa_model
from rosa.roae.modulation import LowDims, scale_low_dims

N_LAYERS = 4
CHECKPOINTING = {"plain": None, "non-reentrant": {"use_reentrant": False}, "reentrant": {"use_reentrant": True}}


def plain_modulation(states, signal, low_dims, heads_axis=1, alpha=1.0):
    """The straightforward autograd formulation (what RoAE.modulate did before): the reference. ``signal`` is
    the projections' output before the SiLU, ``[batch, seq, heads * d_low]``."""
    scale = (alpha * F.silu(signal)).unflatten(-1, (-1, len(low_dims)))
    scale = scale.transpose(1, 2) if heads_axis == 1 else scale
    low32 = states.index_select(-1, low_dims).to(scale.dtype)
    return states.index_copy(-1, low_dims, (low32 + low32 * scale).to(states.dtype))


def rosa_modulation(states, signal, low_dims, heads_axis=1, alpha=1.0):
    """RoAE's modulation, with the signal in the shape it reads the low dims in."""
    low = LowDims(low_dims.tolist(), states.shape[-1])
    heads = states.shape[heads_axis]
    return scale_low_dims(states, signal.unflatten(-1, (heads, *low.shape)), alpha, low, low_dims, heads_axis)


ROTATED = {  # what a rotary function may hand RoAE: a fresh tensor is modulated in place, the others copied first
    "leaf": lambda states: states,
    "view": lambda states: (states * 1)[:, :],
    "fresh": lambda states: states * 1,
}


def modulation_results(function, states, signal, low_dims, grad, heads_axis, alpha, rotated="leaf"):
    states, signal = states.detach().requires_grad_(), signal.detach().requires_grad_()
    out = function(ROTATED[rotated](states), signal, low_dims, heads_axis, alpha)
    out.backward(grad)
    return out.flatten(), states.grad, signal.grad


@pytest.mark.parametrize("alpha", [1.0, 2.0])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("rotated", list(ROTATED))
@pytest.mark.parametrize(
    "low_dims", [[6, 7, 14, 15], [12, 13, 14, 15], [0, 2, 3, 8, 10, 11]], ids=["rotate-half", "interleaved", "scattered"]
)
@pytest.mark.parametrize("heads_axis", [1, 2], ids=["heads-first", "seq-first"])
def test_modulation_is_bitwise_the_plain_autograd_formulation(dtype, rotated, low_dims, heads_axis, alpha):
    generator = torch.Generator().manual_seed(0)
    # 3 heads, 5 positions, as the transposed view q and k leave RoPE as ([batch, heads, seq, dim] when
    # heads_axis is 1); the signal as the projections leave it, [batch, seq, heads * d_low].
    states = torch.randn(2, 5, 3, 16, generator=generator).to(dtype)
    states = states.transpose(1, 2) if heads_axis == 1 else states[:, :, :, :]
    signal = torch.randn(2, 5, 3 * len(low_dims), generator=generator)
    grad = torch.randn(*states.shape, generator=generator).to(dtype)
    index = torch.tensor(low_dims)
    expected = modulation_results(plain_modulation, states, signal, index, grad, heads_axis, alpha)
    actual = modulation_results(rosa_modulation, states, signal, index, grad, heads_axis, alpha, rotated)
    for name, a, e in zip(("output", "states grad", "signal grad"), actual, expected):
        assert torch.equal(a, e), name
    with torch.no_grad():  # the inference path: in place on a fresh tensor, in the signal's dtype throughout
        assert torch.equal(rosa_modulation(ROTATED[rotated](states), signal, index, heads_axis, alpha).flatten(), expected[0])


@pytest.mark.parametrize("dims,runs", [([6, 7, 14, 15], (8, 0, 2, 6, 2)), ([12, 13, 14, 15], (16, 0, 1, 12, 4)),
                                       ([3, 7], (4, 0, 2, 3, 1)), ([0, 2, 3, 8, 10, 11], None), ([6, 7, 12, 13], None)])
def test_low_dims_are_read_as_a_strided_view_under_regular_layouts(dims, runs):
    assert LowDims(dims, 16).runs == runs


@pytest.mark.parametrize("low_dims", [[2, 3, 6, 7], [1, 2, 5]], ids=["strided", "gathered"])
def test_modulation_gradients_pass_gradcheck(low_dims):
    generator = torch.Generator().manual_seed(1)
    states = torch.randn(1, 2, 3, 8, dtype=torch.float64, generator=generator, requires_grad=True)
    signal = torch.randn(1, 3, 2 * len(low_dims), dtype=torch.float64, generator=generator, requires_grad=True)
    assert torch.autograd.gradcheck(lambda s, c: rosa_modulation(s * 1, c, torch.tensor(low_dims), alpha=2.0), (states, signal))


def rosa_model(checkpointing: str = "plain"):
    model = get_rosa_model(tiny_model("llama", num_hidden_layers=N_LAYERS), RoSAConfig(init_seed=0)).train()
    if CHECKPOINTING[checkpointing] is not None:
        model.gradient_checkpointing_enable(CHECKPOINTING[checkpointing])
    return model


def tokens_for(step: int) -> torch.Tensor:
    return torch.randint(3, 97, (4, 10), generator=torch.Generator().manual_seed(100 + step))


def backward_with_reach(model, tokens) -> set[int]:
    """Run one forward/backward; return the decoder layers whose backward ran."""
    reached: set[int] = set()
    handles = [
        layer.register_full_backward_pre_hook(lambda module, grad, i=i: reached.add(i))
        for i, layer in enumerate(model.get_base_model().model.layers)
    ]
    try:
        model(tokens, labels=tokens).loss.backward()
    finally:
        for handle in handles:
            handle.remove()
    return reached


def finish_step(selector, optimizer) -> None:
    selector.step()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)


@pytest.mark.parametrize("checkpointing", list(CHECKPOINTING))
def test_freeze_backward_stops_below_the_lowest_selected_layer_except_on_scoring_steps(checkpointing):
    """warmup=1, interval=2: steps 0 and 2 are scoring steps (every layer is scored), step 1 runs
    under the first selection. Gradient checkpointing makes the embedding output require grad, which
    without the selector's cut would drag every backward down to layer 0."""
    model = rosa_model(checkpointing)
    selector = DynamicLayerSelector(model, DLSConfig(warmup=1, interval=2, p_exploit=0.0, mode="freeze", seed=1))
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    everything = set(range(N_LAYERS))
    assert backward_with_reach(model, tokens_for(0)) == everything
    finish_step(selector, optimizer)
    lowest = min(selector.selected)
    assert lowest > 0, "seed chosen so the selection leaves layer 0 out"
    assert backward_with_reach(model, tokens_for(1)) == set(range(lowest, N_LAYERS))
    assert all(p.grad is not None for i in selector.selected for p in selector.groups[i].adapter_parameters)
    finish_step(selector, optimizer)
    assert backward_with_reach(model, tokens_for(2)) == everything
    finish_step(selector, optimizer)
    assert len(selector.history) == 2


@pytest.mark.parametrize("checkpointing", ["plain", "non-reentrant"])
def test_skip_mode_still_runs_the_full_backward(checkpointing):
    model = rosa_model(checkpointing)
    selector = DynamicLayerSelector(model, DLSConfig(warmup=1, interval=2, p_exploit=0.0, mode="skip", seed=1))
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    for step in range(3):
        assert backward_with_reach(model, tokens_for(step)) == set(range(N_LAYERS))
        finish_step(selector, optimizer)
    assert selector._cut is None


@pytest.mark.parametrize("checkpointing", ["non-reentrant", "reentrant"])
def test_freeze_under_gradient_checkpointing_gives_the_plain_gradients_every_step(checkpointing):
    def run(kind: str):
        model = rosa_model(kind)
        selector = DynamicLayerSelector(model, DLSConfig(warmup=1, interval=2, p_exploit=0.5, mode="freeze", seed=4))
        optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
        grads = []
        for step in range(5):
            tokens = tokens_for(step)
            model(tokens, labels=tokens).loss.backward()
            grads.append({n: p.grad.clone() for n, p in model.named_parameters() if "rosa_roae" in n and p.grad is not None})
            finish_step(selector, optimizer)
        return grads, [record["selected"] for record in selector.history]

    plain_grads, plain_selections = run("plain")
    checkpointed_grads, checkpointed_selections = run(checkpointing)
    assert checkpointed_selections == plain_selections
    for plain, checkpointed in zip(plain_grads, checkpointed_grads):
        assert plain and checkpointed.keys() == plain.keys()
        for name in plain:
            torch.testing.assert_close(checkpointed[name], plain[name], rtol=1e-5, atol=1e-7)


def test_remove_takes_the_cut_away():
    model = rosa_model("non-reentrant")
    selector = DynamicLayerSelector(model, DLSConfig(warmup=1, interval=2, p_exploit=0.0, mode="freeze", seed=1))
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    backward_with_reach(model, tokens_for(0))
    finish_step(selector, optimizer)
    selector.remove()
    assert backward_with_reach(model, tokens_for(1)) == set(range(N_LAYERS))


def test_torch_compile_captures_rosa_whole_and_trains_with_dls_freeze_like_eager():
    """The adapted blocks publish their adapter to the rotary wrapper through a stack dynamo traces (a
    ContextVar outside a trace), so ``fullgraph=True`` captures the whole model; freeze mode's
    ``requires_grad`` changes recompile. It must train like eager: same selections, same losses.
    ``aot_eager`` traces forward and backward like inductor does, without inductor's C++ compile (over a
    minute on this CPU)."""

    def run(compiled: bool):
        base = tiny_model("llama", attn="sdpa", num_hidden_layers=N_LAYERS)
        model = get_rosa_model(base, RoSAConfig(targets=("q", "k"), init_seed=0)).train()
        selector = DynamicLayerSelector(model, DLSConfig(warmup=1, interval=2, p_exploit=0.5, mode="freeze", seed=1))
        optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
        forward = torch.compile(model, backend="aot_eager", fullgraph=True) if compiled else model
        losses = []
        for step in range(4):
            tokens = tokens_for(step)
            loss = forward(tokens, labels=tokens).loss
            loss.backward()
            finish_step(selector, optimizer)
            losses.append(loss.item())
        return losses, selector.history

    torch._dynamo.reset()
    torch._dynamo.utils.counters.clear()
    eager_losses, eager_history = run(False)
    compiled_losses, compiled_history = run(True)
    assert [r["selected"] for r in compiled_history] == [r["selected"] for r in eager_history]
    torch.testing.assert_close(compiled_losses, eager_losses, rtol=1e-5, atol=1e-6)
    assert not torch._dynamo.utils.counters["graph_break"]
    torch._dynamo.reset()


def test_a_plain_model_beside_a_rosa_model_compiles_without_graph_breaks():
    """RoSA wraps the modeling module's ``apply_rotary_pos_emb`` for the whole process; while no block
    publishes an adapter or observer the wrapper returns before the ``ContextVar`` lookups dynamo
    cannot trace, so a plain model of the same family (a baseline, a reference model) compiles whole,
    and the RoSA model beside it still applies its adapters. A forward that raises leaves nothing published."""
    from rosa.roae import rotary_hook

    rosa = get_rosa_model(tiny_model("llama", attn="sdpa", num_hidden_layers=2), RoSAConfig(targets=("q", "k"), init_seed=0))
    plain = tiny_model("llama", attn="sdpa", num_hidden_layers=2)
    tokens = tokens_for(0)
    torch._dynamo.reset()
    explanation = torch._dynamo.explain(plain)(tokens)
    assert explanation.graph_break_count == 0 and explanation.graph_count == 1
    with torch.no_grad():
        torch.testing.assert_close(torch.compile(plain, backend="eager")(tokens).logits, plain(tokens).logits)
    assert rotary_hook._published == 0
    rosa(tokens)  # each adapted block checks that its adapter was applied, and raises if not
    with pytest.raises(RuntimeError, match="boom"):
        with rotary_hook.observe_rotary_states(rosa, lambda *args: (_ for _ in ()).throw(RuntimeError("boom"))):
            rosa(tokens)
    assert rotary_hook._published == 0
    torch._dynamo.reset()


def plain_roae(adapter, q, k, hidden, heads_axis=1):
    """RoAE as the spec writes it, with ``F.linear`` projections: the reference for ``RoAE.modulate``."""
    rows = hidden.to(adapter.q_A.dtype)
    adapted = []
    for target, states in (("q", q), ("k", k)):
        A, B = getattr(adapter, f"{target}_A"), getattr(adapter, f"{target}_B")
        adapted.append(plain_modulation(states, F.linear(F.linear(rows, A), B), adapter.low_dims, heads_axis, adapter.alpha))
    return adapted


@pytest.mark.parametrize("alpha", [1.0, 2.0])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_roae_is_bitwise_the_spec_formulation_with_linear_projections(dtype, alpha):
    """The adapter projects with ``torch.mm`` on the input's rows, the call ``F.linear`` dispatches to: outputs
    and every gradient (states, block input, A and B) keep the bits of ``F.linear``."""
    from rosa.roae.layer import RoAE

    generator = torch.Generator().manual_seed(2)
    adapter = RoAE(layer_index=0, d_model=24, rank=4, alpha=alpha, heads={"q": 4, "k": 2}, low_dims=[6, 7, 14, 15],
                   low_frequencies=[0.1, 0.01, 0.1, 0.01], dim=16, rotary_function="apply_rotary_pos_emb",
                   dtype=torch.float32, generator=generator)
    with torch.no_grad():
        for name in ("q_B", "k_B"):
            getattr(adapter, name).copy_(torch.randn(getattr(adapter, name).shape, generator=generator))
    q, k = (torch.randn(2, 5, heads, 16, generator=generator).to(dtype).transpose(1, 2) for heads in (4, 2))
    hidden = torch.randn(2, 5, 24, generator=generator).to(dtype)
    grads = [torch.randn(states.shape, generator=generator).to(dtype) for states in (q, k)]

    def results(function):
        adapter.zero_grad()
        inputs = [tensor.detach().requires_grad_() for tensor in (q, k, hidden)]
        outputs = function(*(tensor * 1 for tensor in inputs[:2]), inputs[2])  # fresh, as a rotary function returns
        torch.autograd.backward(outputs, grads)
        return [*outputs, *(tensor.grad for tensor in inputs), *(p.grad.clone() for p in adapter.parameters())]

    expected = results(lambda q, k, hidden: plain_roae(adapter, q, k, hidden))
    actual = results(lambda q, k, hidden: adapter.modulate(q, k, hidden, 1))
    for a, e in zip(actual, expected, strict=True):
        assert torch.equal(a, e)
    with torch.no_grad():
        assert all(torch.equal(a, e) for a, e in zip(adapter.modulate(q * 1, k * 1, hidden, 1), expected[:2]))
