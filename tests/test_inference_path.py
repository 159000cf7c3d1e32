"""Without autograd RoAE modulates the freshly rotated states in place: the same bits as the training path."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from conftest import randomize_adapters, tiny_model
from rosa import RoSAConfig, get_rosa_model
from rosa.roae.modulation import LowDims, scale_low_dims


@pytest.mark.parametrize("family", ["llama", "phi", "gpt_neox"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("alpha", [1.0, 0.7])
def test_inference_gives_the_training_paths_logits_and_generations(family, dtype, alpha, tokens):
    model = get_rosa_model(tiny_model(family, dtype=dtype), RoSAConfig(targets=("q", "k"), alpha=alpha, init_seed=0))
    randomize_adapters(model)
    with torch.no_grad():
        inference = model(tokens).logits
        generated = model.generate(tokens, max_new_tokens=6, do_sample=False)
        uncached = model.generate(tokens, max_new_tokens=6, do_sample=False, use_cache=False)
    training = model(tokens).logits  # adapter parameters require grad: the autograd path
    assert training.requires_grad and torch.equal(inference, training.detach())
    assert torch.equal(generated, uncached)


@pytest.mark.parametrize("context", [torch.no_grad, torch.inference_mode], ids=["no_grad", "inference_mode"])
@pytest.mark.parametrize("dims", [[1, 5], [1, 2, 4]], ids=["strided", "gathered"])
def test_the_in_place_path_copies_a_view_instead_of_writing_through_it(dims, context):
    """Under inference_mode a view does not record its base: RoAE must still not write through it."""
    low = LowDims(dims, 8)
    index = torch.tensor(dims)
    with context():
        whole = torch.randn(2, 3, 4, 8, generator=torch.Generator().manual_seed(0))
        before = whole.clone()
        view = whole[:, :2]
        signal = torch.randn(2, 4, 2, *low.shape, generator=torch.Generator().manual_seed(1))  # [batch, seq, heads, ...]
        out = scale_low_dims(view, signal, 1.0, low, index, heads_axis=1)
        assert torch.equal(whole, before)  # the tensor behind the view is untouched
        expected = view.clone()
        expected[..., dims] = view[..., dims] + view[..., dims] * F.silu(signal).flatten(-len(low.shape)).transpose(1, 2)
        assert torch.equal(out, expected)
        fresh = view.clone()
        assert scale_low_dims(fresh, signal, 1.0, low, index, heads_axis=1) is fresh and torch.equal(fresh, out)
