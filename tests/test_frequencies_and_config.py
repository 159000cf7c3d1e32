"""Low-frequency set from the model's own rotary frequencies; config validation."""

from __future__ import annotations

import pytest
import torch

from conftest import tiny_model
from rosa import DLSConfig, RoSAConfig, RoSAConfigError, get_rosa_model
from rosa.config import round_half_up
from rosa.roae.frequencies import RotarySpec, rotary_spec


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
    spec = rotary_spec(model)
    assert spec.inv_freq == tuple(float(f) for f in inv_freq)
    lowest_two = sorted(torch.argsort(inv_freq)[:2].tolist())
    assert spec.low_frequency_pairs(2) == lowest_two == [6, 7]
    rosa = get_rosa_model(model, RoSAConfig(r_low=0.25))
    assert rosa.geometry.low_frequency_pairs == (6, 7)


def test_partial_rotary_never_selects_unrotated_dims():
    model = tiny_model("phi")  # head_dim 16, partial_rotary_factor 0.5 -> 4 rotary pairs
    spec = rotary_spec(model)
    assert spec.n_pairs == 4 and spec.rotary_dim == 8
    assert spec.low_frequency_dims(2) == [2, 3, 6, 7]
    assert max(spec.low_frequency_dims(4)) < 8


def test_ties_prefer_the_higher_pair_index():
    assert RotarySpec((1.0, 0.5, 0.5, 0.25)).low_frequency_pairs(2) == [2, 3]


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


def test_config_round_trips_through_a_dict():
    config = RoSAConfig(rank=4, targets=("q", "k"), layers=(1, 2))
    assert RoSAConfig.from_dict(config.to_dict()) == config
    with pytest.raises(RoSAConfigError, match="unknown field"):
        RoSAConfig.from_dict({**config.to_dict(), "lora_alpha": 16})
