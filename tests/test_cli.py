"""The ``rosa`` console script."""

from __future__ import annotations

import subprocess
import sys

import pytest
import transformers as T

from conftest import STORIES, require, tiny_config
from processes import HANG_GUARD
from rosa.cli import main


def console(*args):
    """``rosa ARGS`` as a user types it: the console script in a process of its own."""
    return subprocess.run([sys.executable, "-m", "rosa.cli", *args], capture_output=True, text=True, timeout=HANG_GUARD)


@pytest.fixture
def rosa(capsys):
    """``rosa ARGS`` run by the console script's ``main`` in this process (a process of its own would spend
    seconds importing torch for a command that takes a fraction of one): its exit code and what it printed."""

    def run(*args):
        capsys.readouterr()
        code = main(list(args))
        out, err = capsys.readouterr()
        return subprocess.CompletedProcess(args, code, out, err)

    return run


def test_info_reports_geometry_and_the_trainable_count_of_a_real_model():
    result = console("info", str(require(STORIES)), "--targets", "q,k")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert "  low-frequency     pairs [3] -> dims [3, 7]  (r_low=0.25)" in lines
    assert "  heads             8 query / 4 key (as RoPE hands them to attention)" in lines
    assert "DLS norms per layer ['input_layernorm', 'post_attention_layernorm']" in lines
    # 5 layers x (q: 8*64 + 8*8 heads*2 dims, k: 8*64 + 8*4 heads*2 dims)
    assert any(line.startswith("trainable params: 6,080 ||") for line in lines)


def test_info_refuses_a_model_without_rope_with_exit_code_2(tmp_path, rosa):
    T.GPT2Config(vocab_size=97, n_embd=32, n_layer=2, n_head=2).save_pretrained(tmp_path)
    result = rosa("info", str(tmp_path))
    assert result.returncode == 2
    assert "model type 'gpt2' has no rotary position embedding" in result.stderr


def test_info_names_a_missing_model_directory(tmp_path, rosa):
    result = rosa("info", str(tmp_path / "missing"))
    assert result.returncode == 2
    assert "does not exist" in result.stderr


def test_info_works_on_a_partial_rotary_config(tmp_path, rosa):
    tiny_config("phi").save_pretrained(tmp_path)
    result = rosa("info", str(tmp_path))
    assert result.returncode == 0, result.stderr
    # Phi splits the 16-dim head before RoPE: its rotary function only ever sees the 8 rotated dims
    assert "  rotary            apply_rotary_pos_emb, rotate_half layout, 4 pairs = 8 of the 8 dims it receives (head dim 16)" in result.stdout.splitlines()


def test_info_reports_one_shared_key_head_on_falcon_multi_query(tmp_path, rosa):
    T.FalconConfig(vocab_size=97, hidden_size=64, num_hidden_layers=3, num_attention_heads=4, multi_query=True,
                   new_decoder_architecture=False).save_pretrained(tmp_path)
    result = rosa("info", str(tmp_path), "--targets", "q,k")
    assert result.returncode == 0, result.stderr
    assert "  heads             4 query / 1 key (as RoPE hands them to attention)" in result.stdout.splitlines()


def test_info_reports_the_interleaved_layout_and_its_dims(tmp_path, rosa):
    T.CohereConfig(vocab_size=97, hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
                   num_key_value_heads=2).save_pretrained(tmp_path)
    result = rosa("info", str(tmp_path))
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert "  rotary            apply_rotary_pos_emb, interleaved layout, 8 pairs = 16 of the 16 dims it receives (head dim 16)" in lines
    assert "  low-frequency     pairs [6, 7] -> dims [12, 13, 14, 15]  (r_low=0.25)" in lines


def test_info_refuses_gptj_with_the_true_reason(tmp_path, rosa):
    T.GPTJConfig(vocab_size=97, n_embd=64, n_layer=2, n_head=4, rotary_dim=8).save_pretrained(tmp_path)
    result = rosa("info", str(tmp_path))
    assert result.returncode == 2
    assert "rotates the query and the key in separate calls" in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize(
    "config",
    [
        T.LlamaConfig(vocab_size=97, hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
                      num_key_value_heads=2, rope_parameters={"rope_type": "dynamic", "factor": 2.0, "rope_theta": 10000.0}),
        T.Phi3Config(vocab_size=97, pad_token_id=0, bos_token_id=1, eos_token_id=2, hidden_size=64, intermediate_size=96,
                     num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
                     rope_parameters={"rope_type": "longrope", "rope_theta": 10000.0, "original_max_position_embeddings": 32,
                                      "short_factor": [1.0] * 8, "long_factor": [2.0] * 8}),
    ],
    ids=["dynamic", "longrope"],
)
def test_info_measures_rope_whose_frequencies_update_at_run_time_on_the_meta_device(config, tmp_path, rosa):
    """Dynamic NTK and LongRoPE update their frequencies inside the rotary embedding's forward, which
    cannot run on the meta device: rosa info computes them where the frequencies live."""
    config.save_pretrained(tmp_path)
    result = rosa("info", str(tmp_path))
    assert result.returncode == 0, result.stderr
    assert "  low-frequency     pairs [6, 7] -> dims [6, 7, 14, 15]  (r_low=0.25)" in result.stdout.splitlines()
