"""``accelerate launch --num_processes 2`` (gloo on CPU): RoSA with DLS trains the same on every
process, and like one process with the same global batch."""

from __future__ import annotations

import json
import socket
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file

from conftest import DATA, REPO, STORIES, require
from processes import ENV, HANG_GUARD

WORKER = str(REPO / "tests" / "distributed_worker.py")
LAUNCH = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_machines", "1", "--mixed_precision", "no",
          "--dynamo_backend", "no", "--num_cpu_threads_per_process", "1"]
# global batch 8 = 2 micro-batches of 2 x 2 accumulation steps on 1 process, x 1 step on each of 2
TRAIN = ["train", "--model", str(STORIES), "--data", "commonsense_mix", "--data-dir", str(DATA), "--method", "rosa",
         "--max-steps", "8", "--max-samples", "96", "--batch-size", "8", "--micro-batch-size", "2",
         "--set", "training.cutoff_len=128", "--set", "training.lr=0.01", "--set", "dls.warmup=2", "--set", "dls.interval=2"]


def free_port() -> int:
    """A port nobody listens on now, so parallel test runs do not collide on the rendezvous."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def launch(tmp_path, name, processes, *extra):
    record = tmp_path / f"{name}-record"
    record.mkdir()
    for _ in range(3):  # the free port may be taken before the rendezvous binds it (another test run beside this one)
        command = [*LAUNCH, "--main_process_port", str(free_port()), "--num_processes", str(processes), WORKER] if processes > 1 else [sys.executable, WORKER]
        done = subprocess.run([*command, *TRAIN, "--output-dir", str(tmp_path / name), *extra], env={**ENV, "ROSA_TEST_RECORD": str(record)},
                              cwd=REPO, capture_output=True, text=True, timeout=HANG_GUARD)
        if "address already in use" not in done.stderr.lower():
            break
    return done, record


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    require(STORIES), require(DATA)
    tmp_path = tmp_path_factory.mktemp("ddp")
    single, single_record = launch(tmp_path, "single", 1)
    assert single.returncode == 0, single.stderr
    double, double_record = launch(tmp_path, "double", 2)
    assert double.returncode == 0, double.stderr
    return tmp_path, single_record, double_record


def test_every_process_makes_the_same_selections_and_ends_with_identical_weights(runs):
    tmp_path, _, record = runs
    states = [json.loads((record / f"rank{rank}.json").read_text()) for rank in (0, 1)]
    assert [s["world_size"] for s in states] == [2, 2]
    assert states[0]["history"] == states[1]["history"] and len(states[0]["history"]) == 4
    weights = [load_file(record / f"rank{rank}.safetensors") for rank in (0, 1)]
    assert weights[0].keys() == weights[1].keys() and all(torch.equal(weights[0][k], weights[1][k]) for k in weights[0])
    # process 0 saved the run, and what it saved is what every process holds
    saved = load_file(tmp_path / "double" / "adapter" / "adapter_model.safetensors")
    assert saved.keys() == weights[0].keys() and all(torch.equal(saved[k], weights[0][k]) for k in saved)


def test_two_processes_match_one_process_with_the_same_global_batch(runs):
    _, single, double = runs
    one, two = (json.loads((record / "rank0.json").read_text())["history"] for record in (single, double))
    assert [(h["step"], h["selected"], h["kind"]) for h in one] == [(h["step"], h["selected"], h["kind"]) for h in two]
    for a, b in zip(one, two):
        assert b["scores"] == pytest.approx(a["scores"], rel=1e-4)
    weights_one, weights_two = (load_file(record / "rank0.safetensors") for record in (single, double))
    # the same examples per step; only the summation order of the gradients differs
    for name, tensor in weights_one.items():
        torch.testing.assert_close(weights_two[name], tensor, rtol=1e-4, atol=1e-6)


@pytest.fixture(scope="module")
def freeze_runs(tmp_path_factory):
    require(STORIES), require(DATA)
    tmp_path = tmp_path_factory.mktemp("ddp-freeze")
    records = []
    for name, processes in (("single", 1), ("double", 2)):
        done, record = launch(tmp_path, name, processes, "--set", "dls.mode=freeze")
        assert done.returncode == 0, done.stderr
        records.append(record)
    return records


def test_dls_freeze_on_two_processes_trains_like_one_process(freeze_runs):
    """rosa train asks DDP to find the parameters each selection leaves without a gradient, so freeze
    mode runs data-parallel: the same selections as one process with the same global batch, and weights equal
    within the summation-order tolerance."""
    single, double = freeze_runs
    one, two = (json.loads((record / "rank0.json").read_text())["history"] for record in (single, double))
    assert [(h["step"], h["selected"]) for h in one] == [(h["step"], h["selected"]) for h in two]
    assert json.loads((double / "rank1.json").read_text())["history"] == two
    weights_one, weights_two = (load_file(record / "rank0.safetensors") for record in (single, double))
    for name, tensor in weights_one.items():
        torch.testing.assert_close(weights_two[name], tensor, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("settings", [
    {"ddp_find_unused_parameters": False},
    {"ddp_find_unused_parameters": True, "ddp_static_graph": True},
    {"ddp_find_unused_parameters": None, "activation_checkpointing": True},  # transformers then skips the search
], ids=["no-search", "static-graph", "unset-with-checkpointing"])
def test_dls_freeze_is_refused_on_several_processes_where_ddp_would_fail(settings):
    from types import SimpleNamespace

    from conftest import tiny_model
    from rosa import DLSCallback, DLSConfig, RoSAError

    callback = DLSCallback(DLSConfig(mode="freeze"))
    args = SimpleNamespace(world_size=2, **settings)
    with pytest.raises(RoSAError, match="needs DDP to look for unused parameters"):
        callback.on_train_begin(args, None, None, model=tiny_model("llama"), optimizer=object())


def test_rosa_train_under_accelerates_fsdp_is_refused_before_anything_is_written(tmp_path):
    """On a CPU, ``accelerate launch --use_fsdp`` would run two independent unsharded trainings and exit 0."""
    require(STORIES), require(DATA)
    command = [sys.executable, "-m", "accelerate.commands.launch", "--use_fsdp", "--num_machines", "1", "--mixed_precision", "no",
               "--dynamo_backend", "no", "--num_cpu_threads_per_process", "1", "--main_process_port", str(free_port()),
               "--num_processes", "2", WORKER, *TRAIN, "--output-dir", str(tmp_path / "fsdp")]
    done = subprocess.run(command, env={**ENV, "ROSA_TEST_RECORD": str(tmp_path)}, cwd=REPO, capture_output=True, text=True,
                          timeout=HANG_GUARD)
    assert done.returncode != 0
    assert "rosa train does not shard with FSDP" in done.stderr and "rosa.fsdp" in done.stderr
    assert not (tmp_path / "fsdp").exists()
