"""Low-frequency set from the model's own rotary frequencies; config validation."""

from __future__ import annotations

import json

import pytest
import torch
from peft import PeftConfig

from conftest import tiny_model
from rosa import DLSConfig, RoSAConfig, RoSAConfigError, get_rosa_model
from rosa.config import round_half_up
from rosa.errors import UnsupportedModelError
from rosa.roae import RotaryLayout, rotary_geometry
from rosa.roae.layout import measure_layout


@pytest.mark.parametrize(
    "rope_parameters",
    [
        {"rope_type": "linear", "factor": 4.0, "rope_theta": 10000.0},
        {"rope_type": "dynamic", "factor": 2.0, "rope_theta": 10000.0},
        {"rope_type": "yarn", "factor": 4.0, "rope_theta": 10000.0, "original_max_position_embeddings": 32},
        {
            "rope_type": "llama3", "factor": 8.0, "rope_theta": 500000.0, "low_freq_factor": 1.0,
            "high_freq_factor": 4.0, "original_max_position_embeddings": 32,
        },
    ],
    ids=lambda p: p["rope_type"],
)
def test_scaled_rope_uses_the_scaled_frequencies(rope_parameters):
    model = tiny_model("llama", rope_parameters=rope_parameters)
    inv_freq = model.model.rotary_emb.inv_freq
    layout = rotary_geometry(model).layers[0].layout
    assert layout.frequencies == pytest.approx(inv_freq.tolist(), rel=1e-6)
    lowest_two = sorted(torch.argsort(inv_freq)[:2].tolist())
    assert layout.low_frequency_pairs(2) == lowest_two == [6, 7]
    rosa = get_rosa_model(model, RoSAConfig(r_low=0.25))
    assert rosa.geometry.rotary[0].low_frequency_pairs == (6, 7)


def test_partial_rotary_never_selects_unrotated_dims():
    model = tiny_model("phi")  # head_dim 16, partial_rotary_factor 0.5 -> 4 rotary pairs
    layout = rotary_geometry(model).layers[0].layout
    assert layout.n_pairs == 4 and layout.rotary_dim == 8
    assert layout.low_frequency_dims(2) == [2, 3, 6, 7]
    assert max(layout.low_frequency_dims(4)) < 8


def test_ties_prefer_the_higher_pair_index():
    layout = RotaryLayout(dim=8, pairs=((0, 4), (1, 5), (2, 6), (3, 7)), frequencies=(1.0, 0.5, 0.5, 0.25))
    assert layout.low_frequency_pairs(2) == [2, 3]


def _cos_sin(inv_freq, repeat):
    def at(position):
        angles = position * torch.tensor(inv_freq)
        angles = angles.repeat_interleave(2) if repeat == "interleave" else torch.cat([angles, angles])
        return angles.cos()[None, None], angles.sin()[None, None]

    return at


def _rotate_half(x):
    half = x.shape[-1] // 2
    return torch.cat([-x[..., half:], x[..., :half]], dim=-1)


def _rotate_pairs(x):
    return torch.stack([-x[..., 1::2], x[..., ::2]], dim=-1).flatten(-2)


@pytest.mark.parametrize(
    ("rotate", "repeat", "pairs", "name"),
    [
        (lambda s, c, n: s * c + _rotate_half(s) * n, "cat", ((0, 3), (1, 4), (2, 5)), "rotate_half"),
        (lambda s, c, n: s * c + _rotate_pairs(s) * n, "interleave", ((0, 1), (2, 3), (4, 5)), "interleaved"),
        # attention scaling (YaRN) multiplies cos and sin alike: it must not change the measured angles
        (lambda s, c, n: 1.3 * (s * c + _rotate_half(s) * n), "cat", ((0, 3), (1, 4), (2, 5)), "rotate_half"),
    ],
    ids=["rotate_half", "interleaved", "scaled"],
)
def test_measured_layout_finds_the_pairs_and_their_frequencies(rotate, repeat, pairs, name):
    inv_freq = [1.0, 0.1, 0.01]
    layout = measure_layout(rotate, 6, 1, _cos_sin(inv_freq, repeat), "test")
    assert (layout.pairs, layout.name) == (pairs, name)
    assert layout.frequencies == pytest.approx(inv_freq, rel=1e-6)
    assert layout.low_frequency_dims(1) == sorted(pairs[2])


def test_a_rotation_that_is_not_pairwise_is_refused():
    def mixes_three(states, cos, sin):
        return states * cos + states.roll(1, -1) * sin + states.roll(2, -1) * sin

    with pytest.raises(UnsupportedModelError, match="not with one partner"):
        measure_layout(mixes_three, 6, 1, _cos_sin([1.0, 0.1, 0.01], "cat"), "layer 0")


@pytest.mark.parametrize(("r_low", "n_pairs", "expected"), [(0.25, 8, 2), (0.1, 8, 1), (0.1, 4, 1), (0.3, 5, 2), (0.5, 5, 3), (1.0, 8, 8)])
def test_n_low_rounds_half_up_with_a_minimum_of_one(r_low, n_pairs, expected):
    assert RoSAConfig(r_low=r_low).n_low_pairs(n_pairs) == expected


@pytest.mark.parametrize(("k_ratio", "n", "expected"), [(0.5, 5, 3), (0.5, 4, 2), (0.1, 5, 1), (1.0, 7, 7), (0.25, 2, 1)])
def test_dls_k_rounds_half_up_with_a_minimum_of_one(k_ratio, n, expected):
    assert DLSConfig(k_ratio=k_ratio).k(n) == expected


def test_round_half_up_is_not_bankers_rounding():
    assert [round_half_up(x) for x in (0.5, 1.5, 2.5, 2.4999)] == [1, 2, 3, 2]


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (dict(rank=0), "rank must be a positive integer"),
        (dict(r_low=0.0), "r_low must be in"),
        (dict(r_low=1.5), "r_low must be in"),
        (dict(targets=("v",)), "targets must be a non-empty subset"),
        (dict(targets=()), "targets must be a non-empty subset"),
        (dict(alpha=float("nan")), "alpha must be a finite"),
        (dict(layers=(-1,)), "layers must be None"),
        (dict(adapter_dtype="int8"), "adapter_dtype"),
    ],
)
def test_invalid_rosa_config_values_are_refused(kwargs, message):
    with pytest.raises(RoSAConfigError, match=message):
        RoSAConfig(**kwargs)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (dict(k_ratio=0.0), "k_ratio must be in"),
        (dict(k_ratio=1.2), "k_ratio must be in"),
        (dict(p_exploit=-0.1), "p_exploit must be a probability"),
        (dict(p_exploit=1.1), "p_exploit must be a probability"),
        (dict(warmup=0), "warmup must be an integer >= 1"),
        (dict(interval=0), "interval must be an integer >= 1"),
        (dict(mode="drop"), "mode must be one of"),
    ],
)
def test_invalid_dls_config_values_are_refused(kwargs, message):
    with pytest.raises(RoSAConfigError, match=message):
        DLSConfig(**kwargs)


def test_layer_out_of_range_is_refused():
    with pytest.raises(RoSAConfigError, match=r"layers \[5\] do not exist: the model has 3 layers"):
        get_rosa_model(tiny_model("llama"), RoSAConfig(layers=(0, 5)))


def test_config_round_trips_through_its_settings_and_peft_files(tmp_path):
    config = RoSAConfig(rank=4, targets=("q", "k"), layers=(1, 2))
    settings = config.settings()
    assert settings == {"rank": 4, "alpha": 1.0, "r_low": 0.25, "targets": ["q", "k"], "layers": [1, 2],
                        "adapter_dtype": "float32", "init_seed": None}
    assert json.loads(json.dumps(settings)) == settings  # plain values
    assert RoSAConfig(**settings) == config
    assert RoSAConfig.from_peft_type(**config.to_dict()) == config  # PEFT's dict: every field, bookkeeping too
    config.save_pretrained(tmp_path)
    assert PeftConfig.from_pretrained(tmp_path) == config
    with pytest.raises(TypeError, match="lora_alpha"):
        RoSAConfig(**{**settings, "lora_alpha": 16})
