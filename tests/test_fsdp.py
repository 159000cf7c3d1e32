"""FSDP2 (``fully_shard`` per decoder layer, 2 processes over gloo through ``torchrun``): RoSA with
DLS trains like one process with the same global batch, in skip and freeze mode; the sharded
adapter saves as an ordinary PEFT directory; a checkpointed run resumes to the same weights."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch
import torch.distributed as dist
from peft import PeftModel
from safetensors.torch import load_file

import fsdp_worker
from conftest import REPO
from processes import ENV, HANG_GUARD
from rosa import DLSConfig, DynamicLayerSelector, RoSAConfig, RoSAError, fsdp, get_rosa_model
from test_distributed import free_port

WORKER = str(REPO / "tests" / "fsdp_worker.py")


def torchrun(output, *extra, succeeds=True):
    output.mkdir(parents=True, exist_ok=True)
    for _ in range(3):  # the free port may be taken before the rendezvous binds it
        command = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-port", str(free_port()),
                   WORKER, str(output), "--sharded", *extra]
        done = subprocess.run(command, env=ENV, cwd=REPO, capture_output=True, text=True, timeout=HANG_GUARD)
        if "address already in use" not in done.stderr.lower():
            break
    if succeeds:
        assert done.returncode == 0, done.stderr[-4000:]
        return output
    return done


def results(output):
    histories = [json.loads(path.read_text())["history"] for path in sorted(output.glob("rank*.json"))]
    return histories, load_file(output / "adapter" / "adapter_model.safetensors")


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("fsdp")
    out = {}
    for mode in ("skip", "freeze"):
        (root / f"one-{mode}").mkdir()
        fsdp_worker.train(root / f"one-{mode}", steps=6, mode=mode, sharded=False)
        out[f"one-{mode}"] = root / f"one-{mode}"
        out[f"two-{mode}"] = torchrun(root / f"two-{mode}", "--mode", mode)
    torchrun(root / "resumed", "--stop-after", "3")
    out["resumed"] = torchrun(root / "resumed", "--resume", str(root / "resumed" / "checkpoint"))
    return out


@pytest.mark.parametrize("mode", ["skip", "freeze"])
def test_two_sharded_processes_train_like_one_process(runs, mode):
    (one,), one_weights = results(runs[f"one-{mode}"])
    two, two_weights = results(runs[f"two-{mode}"])
    assert len(two) == 2 and two[0] == two[1], "every process makes the same selections"
    assert len(one) == 3 and [h["selected"] for h in two[0]] == [h["selected"] for h in one]
    for sharded, single in zip(two[0], one):
        # FSDP averaged the shards' gradients once; the scores sum squares over shards, not average again.
        assert sharded["scores"] == pytest.approx(single["scores"], rel=1e-5)
    assert two_weights.keys() == one_weights.keys()
    for name, tensor in one_weights.items():
        torch.testing.assert_close(two_weights[name], tensor, rtol=1e-5, atol=1e-6)
    assert any(name.endswith("q_B") and tensor.abs().sum() > 0 for name, tensor in two_weights.items()), "B starts at zero"


def test_a_resumed_sharded_run_ends_with_the_uninterrupted_runs_weights_and_selections(runs):
    histories, weights = results(runs["resumed"])
    expected_histories, expected = results(runs["two-skip"])
    assert histories == expected_histories
    assert weights.keys() == expected.keys() and all(torch.equal(weights[k], expected[k]) for k in weights)


def test_the_sharded_adapter_loads_without_a_process_group(runs):
    """What process 0 wrote is an ordinary PEFT adapter: it loads into an unsharded model and predicts
    like the adapter trained on one process."""
    tokens = fsdp_worker.global_batch(99)
    logits = []
    for run in ("one-skip", "two-skip"):
        model = PeftModel.from_pretrained(fsdp_worker.tiny_rosa_model().get_base_model(), str(runs[run] / "adapter")).eval()
        with torch.no_grad():
            logits.append(model(tokens).logits)
    torch.testing.assert_close(logits[1], logits[0], rtol=1e-5, atol=1e-5)


def test_a_failed_write_on_process_0_stops_every_process_with_the_reason(tmp_path):
    """Without this, process 1 would wait in a barrier until the collective's timeout."""
    done = torchrun(tmp_path / "run", "--steps", "1", "--adapter-dir", "/sys/rosa-adapter", succeeds=False)
    assert done.returncode != 0
    assert "process 0 failed to write" in done.stderr  # process 1's error
    assert not (tmp_path / "run" / "adapter").exists()


def test_sharding_needs_a_process_group():
    with pytest.raises(RoSAError, match="launch with torchrun"):
        fsdp.shard_model(fsdp_worker.tiny_rosa_model())


@pytest.fixture
def one_process_group():
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{free_port()}", rank=0, world_size=1)
    try:
        yield
    finally:
        dist.destroy_process_group()


def test_a_checkpoint_is_refused_for_another_setup_with_the_reason(tmp_path, one_process_group):
    model = fsdp.shard_model(fsdp_worker.tiny_rosa_model())
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    with pytest.raises(RoSAError, match="not a rosa FSDP checkpoint: adapter.safetensors, optimizer.safetensors"):
        fsdp.load_checkpoint(tmp_path, model, optimizer)
    fsdp.save_checkpoint(tmp_path / "checkpoint", model, optimizer, step=0)
    selector = DynamicLayerSelector(model, DLSConfig())
    with pytest.raises(RoSAError, match="saved without a DLS selector"):
        fsdp.load_checkpoint(tmp_path / "checkpoint", model, optimizer, selector)
    selector.remove()
    wider = fsdp.shard_model(get_rosa_model(fsdp_worker.tiny_rosa_model().unload(), RoSAConfig(targets=("q", "k"), init_seed=0)))
    wider_optimizer = torch.optim.AdamW([p for p in wider.parameters() if p.requires_grad], lr=1e-2)
    with pytest.raises(RoSAError, match="holds another adapter than this model's"):
        fsdp.load_checkpoint(tmp_path / "checkpoint", wider, wider_optimizer)
