"""Two `m2f train` processes on CPU (gloo) joined through the pod env contract: DDP and FSDP2 keep every rank's
weights identical; a missing peer fails the job within train.distributed_timeout_s."""

from __future__ import annotations

import hashlib
import json
import re
import socket
import time

import pytest
import torch
from test_train_loop import LATEST, m2f_process, read_jsonl

from m2f_trainer.data.synth import synthesize

DIGEST = re.compile(r"rank (\d) final weights sha256 ([0-9a-f]{64})")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def digest_of(state_dict: dict) -> str:
    digest = hashlib.sha256()
    for name, tensor in state_dict.items():
        digest.update(name.encode())
        digest.update(tensor.to(torch.float32).contiguous().numpy().tobytes())
    return digest.hexdigest()


def rank_env(rank: int, port: int) -> dict:
    return {"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), "NODE_RANK": str(rank), "WORLD_SIZE": "2",
            "NUM_GPU_PER_NODE": "1"}


@pytest.mark.slow
@pytest.mark.parametrize("strategy", ["ddp", "fsdp"])
def test_two_nodes_train_and_end_with_identical_weights(strategy, tmp_path):
    spec = synthesize("coco_panoptic", tmp_path / "data", num_images=4, size=64)
    results = tmp_path / "results"
    port = free_port()
    args = ["train", "-e", str(spec), f"results_dir={results}", "train.num_nodes=2", "train.num_epochs=1",
            f"train.distributed_strategy={strategy}"]  # the default collective timeout (600 s): a loaded machine is slow
    logs = [tmp_path / f"rank{rank}.log" for rank in (0, 1)]
    procs = [m2f_process(args, logs[rank], **rank_env(rank, port)) for rank in (0, 1)]
    try:
        codes = [proc.wait(timeout=800) for proc in procs]
    finally:
        for proc in procs:
            proc.kill()
    assert codes == [0, 0], "\n".join(log.read_text()[-2000:] for log in logs)

    digests = dict(m.groups() for log in logs for m in DIGEST.finditer(log.read_text()))
    assert set(digests) == {"0", "1"} and digests["0"] == digests["1"]
    # Rank 0 alone writes the checkpoint: it holds the same (gathered, for FSDP) weights.
    state = torch.load(results / "train" / LATEST, map_location="cpu", weights_only=False)["state_dict"]
    assert digest_of(state) == digests["0"]

    records = read_jsonl(results / "train" / "metrics.jsonl")
    assert records[0]["world_size"] == 2
    # Two images per rank and step: 4 images make one step per epoch; each rank saw its own half.
    assert [r["step"] for r in records if r["event"] == "step"] == [1]
    validations = [r for r in records if r["event"] == "validation"]
    assert [r["val/num_images"] for r in validations] == [4]  # gathered from both ranks, no padding


@pytest.mark.slow
def test_missing_peer_fails_within_the_collective_timeout(tmp_path):
    spec = synthesize("coco_panoptic", tmp_path / "data", num_images=2, size=64)
    args = ["train", "-e", str(spec), f"results_dir={tmp_path / 'results'}", "train.num_nodes=2",
            "train.distributed_timeout_s=5"]
    started = time.monotonic()
    proc = m2f_process(args, tmp_path / "rank0.log", **rank_env(0, free_port()))
    try:
        code = proc.wait(timeout=240)
    finally:
        proc.kill()
    log = (tmp_path / "rank0.log").read_text()
    assert code not in (0, 2, 143), log[-2000:]
    assert time.monotonic() - started < 200
    assert not (tmp_path / "results" / "train" / LATEST).exists()
    assert json.dumps(code)  # a plain integer exit status the operator's failure policy can read


@pytest.mark.slow
def test_one_node_runs_num_gpu_per_node_processes_on_cpu(tmp_path):
    """NUM_GPU_PER_NODE=2 on a CPU node: Lightning's launcher starts local rank 1 next to rank 0."""
    spec = synthesize("coco_panoptic", tmp_path / "data", num_images=4, size=64)
    results = tmp_path / "results"
    proc = m2f_process(["train", "-e", str(spec), f"results_dir={results}", "train.num_gpus=2",
                        "train.num_epochs=1"], tmp_path / "node.log", NUM_GPU_PER_NODE="2")
    try:
        code = proc.wait(timeout=400)
    finally:
        proc.kill()
    log = (tmp_path / "node.log").read_text()
    assert code == 0, log[-2000:]
    digests = dict(DIGEST.findall(log))
    assert set(digests) == {"0", "1"} and digests["0"] == digests["1"]
    assert read_jsonl(results / "train" / "metrics.jsonl")[0]["world_size"] == 2
