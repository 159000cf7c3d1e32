"""Shared fixtures: tiny randomly initialised models of every RoPE family, and the real assets."""

from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path

import pytest
import torch
import transformers as T

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("ROSA_SHARED_DIR", REPO.parent / "shared"))
STORIES = SHARED / "models" / "stories260K-hf"
TINYSTORIES = SHARED / "models" / "TinyStories-656K"
SMOLLM2_GGUF = SHARED / "models" / "SmolLM2-135M-Instruct-GGUF" / "SmolLM2-135M-Instruct.Q4_1.gguf"
DATA = SHARED / "data" / "llm-adapters"

# The suite runs in pytest-xdist workers (pyproject.toml): each takes an equal share of the cores for
# torch's threads, so that together they do not oversubscribe the machine.
if os.environ.get("PYTEST_XDIST_WORKER_COUNT"):
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    torch.set_num_threads(max(1, usable // int(os.environ["PYTEST_XDIST_WORKER_COUNT"])))

VOCAB = 97
COMMON = dict(
    vocab_size=VOCAB,
    hidden_size=64,
    intermediate_size=96,
    num_hidden_layers=3,
    num_attention_heads=4,
    max_position_embeddings=128,
    initializer_range=0.2,  # large enough that attention patterns, and so adapters, matter
    pad_token_id=0,
    bos_token_id=1,
    eos_token_id=2,
)

# family -> (config class, extra config, fraction of each head that RoPE rotates)
FAMILIES = {
    "llama": (T.LlamaConfig, dict(num_key_value_heads=2), 1.0),
    "mistral": (T.MistralConfig, dict(num_key_value_heads=2), 1.0),
    "qwen2": (T.Qwen2Config, dict(num_key_value_heads=2), 1.0),
    "qwen3": (T.Qwen3Config, dict(num_key_value_heads=2, head_dim=16), 1.0),
    "gemma": (T.GemmaConfig, dict(num_key_value_heads=2, head_dim=16), 1.0),
    "gemma2": (T.Gemma2Config, dict(num_key_value_heads=2, head_dim=16), 1.0),
    "phi3": (T.Phi3Config, dict(num_key_value_heads=2), 1.0),
    "olmo2": (T.Olmo2Config, dict(num_key_value_heads=2), 1.0),
    "granite": (T.GraniteConfig, dict(num_key_value_heads=2), 1.0),
    "phi": (T.PhiConfig, dict(partial_rotary_factor=0.5), 0.5),
    "gpt_neox": (T.GPTNeoXConfig, dict(rotary_pct=0.5), 0.5),
}


def tiny_config(family: str, **overrides):
    cls, extra, _ = FAMILIES[family]
    return cls(**{**COMMON, **extra, **overrides})


def tiny_model(family: str, attn: str = "eager", seed: int = 0, dtype=torch.float32, **overrides):
    torch.manual_seed(seed)
    model = T.AutoModelForCausalLM.from_config(tiny_config(family, **overrides), attn_implementation=attn)
    return model.to(dtype).eval()


def randomize_adapters(model, std: float = 0.5, seed: int = 1) -> None:
    """Give every RoAE B a non-zero value so the adapter changes the model."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for adapter in model.roae_adapters().values():
            for name, weight in adapter.named_parameters():
                if name.endswith("_B"):
                    weight.copy_(torch.randn(weight.shape, generator=generator) * std)


def stop_training_after(monkeypatch, step: int, message: str = "killed") -> None:
    """Make every training step after optimizer step ``step`` raise ``RuntimeError(message)``, as a
    crash at that point would (the checkpoints written until then stay); ``monkeypatch.undo()`` ends it."""
    from rosa.train.trainer import RoSATrainer

    original = RoSATrainer.training_step

    def stopped(self, *args, **kwargs):
        if self.state.global_step >= step:
            raise RuntimeError(message)
        return original(self, *args, **kwargs)

    monkeypatch.setattr(RoSATrainer, "training_step", stopped)


def load_script(path: str):
    """The repository's script at ``path`` (``scripts/rope_coverage.py``) as a module: scripts, benchmarks
    and studies are not a package. Registered in ``sys.modules`` under its stem, where dataclasses look
    their module up, with its folder on the import path."""
    name = Path(path).stem
    folder = str((REPO / path).parent)
    if folder not in sys.path:  # as when run as a script: it imports its neighbours (benchmarks/host.py)
        sys.path.append(folder)
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, REPO / path)
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    return sys.modules[name]


def require(path: Path) -> Path:
    if not path.exists():
        pytest.fail(f"{path} is missing: the tests need the project's ../shared assets (see README).")
    return path


@pytest.fixture
def tokens():
    return torch.randint(3, VOCAB, (2, 12), generator=torch.Generator().manual_seed(7))


@pytest.fixture(autouse=True, scope="session")
def private_rosa_cache(tmp_path_factory):
    """Keep the suite's GGUF conversions (and any attempt at one) out of the user's ~/.cache."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("ROSA_CACHE_DIR", str(tmp_path_factory.mktemp("rosa-cache")))
        yield


class RealModel:
    """SmolLM2-135M-Instruct (a real 135M Llama) from its GGUF file, dequantised once per test session.

    ``base(precision)`` is a fresh, independent base model on every call, re-read from the session's
    cached conversion: that takes a fraction of a second (``copy.deepcopy`` of a loaded model takes
    longer), so a test may attach adapters to it, train it or unload it without affecting another.
    """

    def __init__(self, file: Path, cache: Path):
        from rosa.loading import load_tokenizer

        self.file, self.cache = file, cache
        with pytest.MonkeyPatch.context() as patch:
            patch.setenv("ROSA_CACHE_DIR", str(cache))
            self.tokenizer = load_tokenizer(str(file))  # converts the file: the session's one ~20 s conversion

    def base(self, precision: str = "fp32"):
        from rosa.loading import load_base_model

        with pytest.MonkeyPatch.context() as patch:  # this session's cache, even where a module set its own
            patch.setenv("ROSA_CACHE_DIR", str(self.cache))
            return load_base_model(str(self.file), precision=precision, device=torch.device("cpu")).eval()


@pytest.fixture(scope="session")
def real_smollm2(private_rosa_cache) -> RealModel:
    """The real model's tokenizer and fresh fp32 / bf16 base models (see :class:`RealModel`)."""
    return RealModel(require(SMOLLM2_GGUF), Path(os.environ["ROSA_CACHE_DIR"]))
