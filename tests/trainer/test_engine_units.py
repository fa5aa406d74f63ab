"""Engine units: env contract, atomic checkpoints, optimizer groups and schedules, Prometheus, status reporter."""

from __future__ import annotations

import signal
import subprocess
import sys
import urllib.request
from types import SimpleNamespace

import pytest
import torch
from torch import nn

from m2f_trainer.engine import checkpoints, distributed, optim, prometheus
from m2f_trainer.errors import SpecError, UserError


def train_cfg(**overrides):
    values = dict(num_nodes=1, num_gpus=1, gpu_ids=[0], metrics_port=9091)
    values.update(overrides)
    return SimpleNamespace(**values)


# ----------------------------------------------------------------------------------- env contract

@pytest.mark.parametrize(
    "spec, env, expected",
    [
        (dict(), {}, dict(num_nodes=1, processes_per_node=1, node_rank=0, world_size=1, master_port=None)),
        (dict(num_nodes=2), dict(MASTER_ADDR="w0.svc", MASTER_PORT="29500", NODE_RANK="1", WORLD_SIZE="2",
                                 NUM_GPU_PER_NODE="1"),
         dict(num_nodes=2, processes_per_node=1, node_rank=1, world_size=2, master_port=29500,
              master_addr="w0.svc")),
        (dict(num_nodes=2, num_gpus=4), dict(MASTER_ADDR="a", MASTER_PORT="1234", NODE_RANK="0", WORLD_SIZE="8",
                                             NUM_GPU_PER_NODE="4"),
         dict(num_nodes=2, processes_per_node=4, node_rank=0, world_size=8)),
        (dict(num_gpus=2), dict(NUM_GPU_PER_NODE="2"), dict(num_nodes=1, processes_per_node=2, world_size=2)),
    ],
)
def test_launch_plan_follows_the_environment(spec, env, expected):
    plan = distributed.resolve_launch_plan(train_cfg(**spec), environ=env, cuda_available=False)
    for key, value in expected.items():
        assert getattr(plan, key) == value, key
    assert plan.accelerator == "cpu"
    assert plan.devices == plan.processes_per_node


@pytest.mark.parametrize(
    "spec, env, names",
    [
        (dict(num_gpus=1), dict(NUM_GPU_PER_NODE="2"), ["NUM_GPU_PER_NODE=2", "train.num_gpus=1"]),
        (dict(num_nodes=1), dict(WORLD_SIZE="2", NUM_GPU_PER_NODE="1"), ["WORLD_SIZE=2", "train.num_nodes=1"]),
        (dict(num_nodes=3, num_gpus=2), dict(WORLD_SIZE="4", NUM_GPU_PER_NODE="2", MASTER_ADDR="a",
                                             MASTER_PORT="1", NODE_RANK="0"),
         ["WORLD_SIZE=4", "train.num_nodes=3"]),
        (dict(num_gpus=2), dict(WORLD_SIZE="3", NUM_GPU_PER_NODE="2"), ["WORLD_SIZE=3", "NUM_GPU_PER_NODE=2"]),
        (dict(num_nodes=2), dict(MASTER_ADDR="a", MASTER_PORT="1", NODE_RANK="2", WORLD_SIZE="2"),
         ["NODE_RANK=2", "train.num_nodes=2"]),
        (dict(num_gpus=2, gpu_ids=[0, 1, 2]), {}, ["train.gpu_ids=[0, 1, 2]", "train.num_gpus=2"]),
    ],
)
def test_disagreement_names_both_values(spec, env, names):
    with pytest.raises(SpecError) as err:
        distributed.resolve_launch_plan(train_cfg(**spec), environ=env, cuda_available=False)
    for name in names:
        assert name in str(err.value)


def test_multi_node_needs_rendezvous_variables():
    with pytest.raises(UserError, match="MASTER_PORT, NODE_RANK"):
        distributed.resolve_launch_plan(train_cfg(num_nodes=2), environ=dict(MASTER_ADDR="a"), cuda_available=False)
    with pytest.raises(UserError, match="MASTER_PORT='x'"):
        distributed.resolve_launch_plan(train_cfg(), environ=dict(MASTER_PORT="x"), cuda_available=False)


def test_default_gpu_ids_expand_and_gpu_devices_are_ids():
    plan = distributed.resolve_launch_plan(train_cfg(num_gpus=2), environ={}, cuda_available=True)
    assert plan.accelerator == "gpu" and plan.devices == [0, 1]
    plan = distributed.resolve_launch_plan(train_cfg(num_gpus=2, gpu_ids=[2, 3]), environ={}, cuda_available=True)
    assert plan.devices == [2, 3]


def test_cluster_environment_ignores_foreign_schedulers(monkeypatch):
    for name, value in dict(SLURM_NTASKS="8", SLURM_JOB_NAME="x", TORCHELASTIC_RUN_ID="y", RANK="5").items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("LOCAL_RANK", raising=False)
    plan = distributed.resolve_launch_plan(
        train_cfg(num_nodes=2), environ=dict(MASTER_ADDR="w0", MASTER_PORT="2950", NODE_RANK="1", WORLD_SIZE="2"),
        cuda_available=False)
    env = distributed.ContractEnvironment(plan)
    assert (env.main_address, env.main_port, env.node_rank(), env.local_rank()) == ("w0", 2950, 1, 0)
    assert not env.creates_processes_externally
    monkeypatch.setenv("LOCAL_RANK", "1")
    assert env.creates_processes_externally and env.local_rank() == 1


def test_strategy_and_precision_mapping():
    from datetime import timedelta

    from lightning.pytorch.strategies import DDPStrategy, ModelParallelStrategy, SingleDeviceStrategy

    single = distributed.resolve_launch_plan(train_cfg(), environ={}, cuda_available=False)
    two = distributed.resolve_launch_plan(train_cfg(num_gpus=2), environ={}, cuda_available=False)
    assert isinstance(distributed.build_strategy("ddp", single, 60), SingleDeviceStrategy)
    ddp = distributed.build_strategy("ddp", two, 42)
    assert isinstance(ddp, DDPStrategy) and ddp._timeout == timedelta(seconds=42)
    assert ddp.process_group_backend == "gloo"
    fsdp = distributed.build_strategy("ddp_sharded", two, 7)
    assert isinstance(fsdp, ModelParallelStrategy) and fsdp._timeout == timedelta(seconds=7)
    with pytest.raises(SpecError, match="train.distributed_strategy='horovod'"):
        distributed.build_strategy("horovod", two, 7)
    assert distributed.lightning_precision("bf16", "cpu") == "bf16-mixed"
    assert distributed.lightning_precision("fp16", "gpu") == "16-mixed"
    assert distributed.lightning_precision("fp32", "cpu") == "32-true"
    with pytest.raises(SpecError, match="train.precision=fp16"):
        distributed.lightning_precision("fp16", "cpu")


# ----------------------------------------------------------------------------------- checkpoints

def test_atomic_save_keeps_the_previous_file_when_the_writer_dies(tmp_path):
    target = tmp_path / "train" / checkpoints.LATEST_NAME
    checkpoints.atomic_torch_save({"state_dict": {"w": torch.ones(3)}}, target)
    # A writer SIGKILLed in the middle of torch.save (a big tensor keeps it busy) must not touch the target.
    script = (
        "import sys, torch; from m2f_trainer.engine.checkpoints import atomic_torch_save\n"
        "class Slow:\n"
        "    def __reduce__(self):\n"
        "        print('writing', flush=True); import time; time.sleep(60); return (int, (0,))\n"
        "atomic_torch_save({'state_dict': {'w': torch.zeros(3)}, 'slow': Slow()}, sys.argv[1])\n"
    )
    proc = subprocess.Popen([sys.executable, "-c", script, str(target)], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "writing"
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    assert torch.equal(torch.load(target)["state_dict"]["w"], torch.ones(3))
    leftovers = [p.name for p in target.parent.iterdir() if p.name != target.name]
    assert leftovers and all(name.endswith(".tmp") for name in leftovers)
    checkpoints.atomic_torch_save({"state_dict": {"w": torch.zeros(3)}}, target)
    assert torch.equal(torch.load(target)["state_dict"]["w"], torch.zeros(3))


def test_resume_discovery_and_weight_loading(tmp_path):
    train_dir = tmp_path / "train"
    train_dir.mkdir()
    assert checkpoints.find_resume_checkpoint(train_dir, None) is None
    # Epoch files under TAO's names and the older model_epoch_NNN.pth, in training order (numeric, not by name).
    ordered = ["model_epoch_000.pth", "model_epoch_001.pth", "model_epoch_001_step_00010.pth",
               "model_epoch_999_step_99999.pth", "model_epoch_1000_step_100000.pth"]
    for name in [*reversed(ordered), "model_epoch_x.pth", ".model_epoch_002_step_00015.pth.q1w2.tmp"]:
        (train_dir / name).write_bytes(b"e")
    assert [p.name for p in checkpoints.epoch_checkpoints(train_dir)] == ordered
    # No latest (a kill between the epoch file and its publication): the newest epoch file.
    assert checkpoints.find_resume_checkpoint(train_dir, None) == train_dir / ordered[-1]
    (train_dir / checkpoints.LATEST_NAME).write_bytes(b"x")
    assert checkpoints.find_resume_checkpoint(train_dir, None) == train_dir / checkpoints.LATEST_NAME
    explicit = tmp_path / "other.pth"
    explicit.write_bytes(b"y")
    assert checkpoints.find_resume_checkpoint(train_dir, str(explicit)) == explicit
    with pytest.raises(UserError, match="train.resume_training_checkpoint_path: file not found"):
        checkpoints.find_resume_checkpoint(train_dir, str(tmp_path / "nope.pth"))

    source = nn.Sequential(nn.Linear(2, 3), nn.Linear(3, 4))
    torch.save({"state_dict": {**source.state_dict(), "extra.weight": torch.zeros(1)}}, tmp_path / "w.pth")
    target = nn.Sequential(nn.Linear(2, 3), nn.Linear(3, 5), nn.Linear(1, 1))
    missing, unexpected = checkpoints.load_model_weights(target, tmp_path / "w.pth", "train.pretrained_model_path")
    assert torch.equal(target[0].weight, source[0].weight)
    assert set(missing) == {"1.weight", "1.bias", "2.weight", "2.bias"} and unexpected == ["extra.weight"]
    (tmp_path / "torn.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(UserError, match="train.pretrained_model_path: cannot read checkpoint .*torn.pth"):
        checkpoints.load_model_weights(target, tmp_path / "torn.pth", "train.pretrained_model_path")


# ----------------------------------------------------------------------------------- optimizer

class TinyBackbone(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)
        self.bn = nn.BatchNorm2d(4)
        self.relative_position_bias_table = nn.Parameter(torch.zeros(3, 2))


class TinyModel(nn.Module):
    def __init__(self):
        super().__init__()
        self.backbone = TinyBackbone()
        self.query_embed = nn.Embedding(5, 4)
        self.norm = nn.LayerNorm(4)
        self.head = nn.Linear(4, 2)
        self.frozen = nn.Linear(2, 2)
        self.frozen.requires_grad_(False)


def optim_cfg(**overrides):
    values = dict(type="AdamW", lr=1e-3, backbone_multiplier=0.1, momentum=0.9, weight_decay=0.05,
                  lr_scheduler="MultiStep", milestones=[2, 3], gamma=0.5, warmup_iters=0)
    values.update(overrides)
    return SimpleNamespace(**values)


def test_param_groups_lr_and_weight_decay():
    groups = optim.build_param_groups(TinyModel(), optim_cfg())
    where = {name: (g["lr"], g["weight_decay"]) for g in groups for name in g["names"]}
    assert where == {
        "backbone.conv.weight": (1e-4, 0.05), "backbone.conv.bias": (1e-4, 0.05),
        "backbone.bn.weight": (1e-4, 0.0), "backbone.bn.bias": (1e-4, 0.0),
        "backbone.relative_position_bias_table": (1e-4, 0.0),
        "query_embed.weight": (1e-3, 0.0), "norm.weight": (1e-3, 0.0), "norm.bias": (1e-3, 0.0),
        "head.weight": (1e-3, 0.05), "head.bias": (1e-3, 0.05),
    }
    opt = optim.build_optimizer(TinyModel(), optim_cfg(type="SGD"))
    assert isinstance(opt, torch.optim.SGD) and opt.param_groups[0]["momentum"] == 0.9
    assert isinstance(optim.build_optimizer(TinyModel(), optim_cfg()), torch.optim.AdamW)


def lrs(cfg, steps_per_epoch, epochs):
    model = nn.Linear(1, 1)
    opt = optim.build_optimizer(model, cfg)
    sched = optim.build_scheduler(opt, cfg, steps_per_epoch, epochs)["scheduler"]
    seen = []
    for _ in range(steps_per_epoch * epochs):
        seen.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    return seen


def test_schedules_multistep_steplr_warmup_poly():
    assert lrs(optim_cfg(), 2, 4) == pytest.approx([1e-3] * 4 + [5e-4] * 2 + [2.5e-4] * 2)
    assert lrs(optim_cfg(lr_scheduler="StepLR", milestones=[1]), 1, 3) == pytest.approx([1e-3, 5e-4, 2.5e-4])
    warm = lrs(optim_cfg(warmup_iters=4, milestones=[10]), 2, 3)
    assert warm == pytest.approx([2.5e-4, 5e-4, 7.5e-4, 1e-3, 1e-3, 1e-3])
    poly = lrs(optim_cfg(lr_scheduler="WarmupPoly"), 2, 2)
    assert poly[0] == pytest.approx(1e-3) and poly == sorted(poly, reverse=True) and poly[-1] < 4e-4
    with pytest.raises(SpecError, match="train.optim.lr_scheduler='cosine'"):
        lrs(optim_cfg(lr_scheduler="cosine"), 1, 1)


# ----------------------------------------------------------------------------------- prometheus

def test_prometheus_exporter_serves_training_gauges():
    assert prometheus.metrics_port(train_cfg(metrics_port=1234), environ={}) == 1234
    assert prometheus.metrics_port(train_cfg(), environ={"M2F_METRICS_PORT": "0"}) == 0
    with pytest.raises(UserError, match="M2F_METRICS_PORT='x'"):
        prometheus.metrics_port(train_cfg(), environ={"M2F_METRICS_PORT": "x"})
    exporter = prometheus.TrainingExporter(0, addr="127.0.0.1")
    try:
        exporter.update_step(epoch=2, step=17, loss=1.5, images_per_s=3.25, device=torch.device("cpu"))
        exporter.update_validation("PQ", 0.42)
        exporter.set_total_epochs(12)
        body = urllib.request.urlopen(f"http://127.0.0.1:{exporter.port}/metrics", timeout=10).read().decode()
    finally:
        exporter.close()
    assert "m2f_train_epoch 3.0" in body and "m2f_train_step 17.0" in body
    assert "m2f_train_loss 1.5" in body and "m2f_train_images_per_second 3.25" in body
    assert 'm2f_validation_metric{name="PQ"} 0.42' in body and "m2f_train_epochs_total 12.0" in body


# ----------------------------------------------------------------------------------- gradient clipping

class _Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.head = nn.Linear(4, 4)

    def forward(self, images):
        return {"pred": self.head(images)}


class _Criterion(nn.Module):
    def forward(self, outputs, targets):
        return {"loss_big": outputs["pred"].sum() * 1000.0}


@pytest.mark.parametrize("kind", ["full", "value"])
def test_gradient_clipping_once_per_step(kind, tmp_path):
    import lightning as L
    from torch.utils.data import DataLoader

    from m2f_trainer.engine.module import Mask2FormerModule

    cfg = SimpleNamespace(train=SimpleNamespace(
        clip_grad_type=kind, clip_grad_norm=0.5, clip_grad_norm_type=2.0, precision="fp32", num_epochs=1,
        optim=optim_cfg(lr=1e-3, lr_scheduler="MultiStep", milestones=[5])))
    module = Mask2FormerModule(_Net(), _Criterion(), cfg)
    seen = []

    class Probe(L.Callback):
        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            seen.append(torch.cat([p.grad.flatten() for p in pl_module.parameters()]))

    batches = [(torch.ones(2, 4), [{}, {}], [{}, {}])] * 2
    trainer = L.Trainer(accelerator="cpu", max_epochs=1, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, callbacks=[Probe()],
                        default_root_dir=str(tmp_path))
    trainer.fit(module, DataLoader(batches, batch_size=None))
    assert len(seen) == 2
    for grads in seen:
        if kind == "full":  # the global 2-norm is brought down to the threshold
            assert grads.norm() == pytest.approx(0.5, rel=1e-4)
        else:  # each element is clamped; the norm stays above the threshold
            assert grads.abs().max() == pytest.approx(0.5) and grads.norm() > 0.5


def test_until_sigterm_unwinds_the_work_and_says_terminated(tmp_path):
    import os
    import signal
    import time

    from m2f_trainer.engine.signals import until_sigterm

    cleaned = []

    def work():
        try:
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(30)
            return "finished"
        finally:
            cleaned.append(True)  # what a task's temporary files rely on

    before = signal.getsignal(signal.SIGTERM)
    assert until_sigterm(work) is None and cleaned == [True]
    assert signal.getsignal(signal.SIGTERM) is before  # the task's handler is gone again
    assert until_sigterm(lambda: "done") == "done"
    with pytest.raises(ValueError):
        until_sigterm(lambda: int("x"))
