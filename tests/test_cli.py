"""The ``rosa`` console script."""

from __future__ import annotations

import subprocess
import sys

import transformers as T

from conftest import STORIES, require, tiny_config


def rosa(*args):
    return subprocess.run([sys.executable, "-m", "rosa.cli", *args], capture_output=True, text=True, timeout=120)


def test_info_reports_geometry_and_the_trainable_count_of_a_real_model():
    result = rosa("info", str(require(STORIES)), "--targets", "q,k")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert "low-frequency pairs [3]  (r_low=0.25)" in lines
    assert "DLS norms per layer ['input_layernorm', 'post_attention_layernorm']" in lines
    # 5 layers x (q: 8*64 + 8*8 heads*2 dims, k: 8*64 + 8*4 heads*2 dims)
    assert any(line.startswith("trainable params: 6,080 ||") for line in lines)


def test_info_refuses_a_model_without_rope_with_exit_code_2(tmp_path):
    T.GPT2Config(vocab_size=97, n_embd=32, n_layer=2, n_head=2).save_pretrained(tmp_path)
    result = rosa("info", str(tmp_path))
    assert result.returncode == 2
    assert "model type 'gpt2' has no rotary position embedding" in result.stderr


def test_info_names_a_missing_model_directory(tmp_path):
    result = rosa("info", str(tmp_path / "missing"))
    assert result.returncode == 2
    assert "does not exist" in result.stderr


def test_info_works_on_a_partial_rotary_config(tmp_path):
    tiny_config("phi").save_pretrained(tmp_path)
    result = rosa("info", str(tmp_path))
    assert result.returncode == 0, result.stderr
    assert "rotary pairs        4 (rotary dims 8 of 16)" in result.stdout.splitlines()
