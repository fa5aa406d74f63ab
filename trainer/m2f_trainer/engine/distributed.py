"""Multi-node environment contract: MASTER_ADDR/PORT, NODE_RANK, WORLD_SIZE, NUM_GPU_PER_NODE -> Lightning settings."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from lightning.fabric.plugins.environments.cluster_environment import ClusterEnvironment
from lightning.fabric.utilities.rank_zero import rank_zero_only

from m2f_trainer.errors import SpecError, UserError

ENV_VARS = ("MASTER_ADDR", "MASTER_PORT", "NODE_RANK", "WORLD_SIZE", "NUM_GPU_PER_NODE")
STRATEGY_ALIASES = {"ddp": "ddp", "fsdp": "fsdp", "ddp_sharded": "fsdp"}


@dataclass(frozen=True)
class LaunchPlan:
    """Where this process sits in the job: the numbers Lightning's Trainer and the cluster environment need."""

    num_nodes: int
    processes_per_node: int
    node_rank: int
    accelerator: str  # "cpu" | "gpu"
    gpu_ids: tuple[int, ...] | None
    master_addr: str
    master_port: int | None  # None: pick a free port (single node only)

    @property
    def world_size(self) -> int:
        return self.num_nodes * self.processes_per_node

    @property
    def devices(self) -> int | list[int]:
        if self.accelerator == "gpu" and self.gpu_ids:
            return list(self.gpu_ids)
        return self.processes_per_node


def _env_int(environ: Mapping[str, str], name: str, minimum: int) -> int | None:
    raw = environ.get(name)
    if raw is None or raw == "":
        return None
    try:
        value = int(raw)
    except ValueError:
        raise UserError(f"environment variable {name}={raw!r} is not an integer") from None
    if value < minimum:
        raise UserError(f"environment variable {name}={value} must be >= {minimum}")
    return value


def resolve_launch_plan(train_cfg: Any, environ: Mapping[str, str] | None = None,
                        cuda_available: bool | None = None) -> LaunchPlan:
    """Reconcile the spec (train.num_nodes, num_gpus, gpu_ids) with the pod environment; the environment wins
    where it speaks, and any disagreement is a SpecError naming both values."""
    environ = os.environ if environ is None else environ
    if cuda_available is None:
        import torch

        cuda_available = torch.cuda.is_available()

    spec_nodes = int(train_cfg.num_nodes)
    spec_gpus = int(train_cfg.num_gpus)
    gpu_ids = tuple(int(i) for i in (train_cfg.gpu_ids or ()))
    if gpu_ids and len(gpu_ids) != spec_gpus:
        # The default gpu_ids [0] with num_gpus > 1 means "the first num_gpus GPUs" (TAO's rule).
        if gpu_ids != (0,):
            raise SpecError(
                f"train.gpu_ids={list(gpu_ids)} lists {len(gpu_ids)} GPUs but train.num_gpus={spec_gpus}")
        gpu_ids = tuple(range(spec_gpus))

    per_node = _env_int(environ, "NUM_GPU_PER_NODE", 1)
    if per_node is not None and per_node != spec_gpus:
        raise SpecError(f"NUM_GPU_PER_NODE={per_node} disagrees with train.num_gpus={spec_gpus}")
    per_node = spec_gpus if per_node is None else per_node

    world_size = _env_int(environ, "WORLD_SIZE", 1)
    if world_size is not None:
        if world_size % per_node:
            raise SpecError(
                f"WORLD_SIZE={world_size} is not a multiple of NUM_GPU_PER_NODE={per_node} "
                f"(WORLD_SIZE = nodes x NUM_GPU_PER_NODE)")
        env_nodes = world_size // per_node
        if env_nodes != spec_nodes:
            raise SpecError(
                f"WORLD_SIZE={world_size} / NUM_GPU_PER_NODE={per_node} gives {env_nodes} nodes, "
                f"which disagrees with train.num_nodes={spec_nodes}")
    num_nodes = spec_nodes

    node_rank = _env_int(environ, "NODE_RANK", 0)
    if num_nodes > 1:
        missing = [name for name in ("MASTER_ADDR", "MASTER_PORT", "NODE_RANK") if not environ.get(name)]
        if missing:
            raise UserError(
                f"train.num_nodes={num_nodes} needs the environment variables {', '.join(missing)} "
                f"(set by the operator on every worker)")
    node_rank = 0 if node_rank is None else node_rank
    if node_rank >= num_nodes:
        raise SpecError(f"NODE_RANK={node_rank} is out of range for train.num_nodes={num_nodes}")

    master_port = _env_int(environ, "MASTER_PORT", 1)
    return LaunchPlan(
        num_nodes=num_nodes,
        processes_per_node=per_node,
        node_rank=node_rank,
        accelerator="gpu" if cuda_available else "cpu",
        gpu_ids=gpu_ids or None,
        master_addr=environ.get("MASTER_ADDR") or "127.0.0.1",
        master_port=master_port,
    )


class ContractEnvironment(ClusterEnvironment):
    """Lightning cluster environment that reads only our pod contract, so stray SLURM/TorchElastic variables in
    an image never change how ranks are assigned. Local ranks > 0 are started by Lightning's launcher, which
    sets LOCAL_RANK in their environment."""

    def __init__(self, plan: LaunchPlan) -> None:
        super().__init__()
        self._plan = plan
        self._port = plan.master_port
        self._global_rank = 0
        self._world_size = 1

    @property
    def creates_processes_externally(self) -> bool:
        return "LOCAL_RANK" in os.environ

    @property
    def main_address(self) -> str:
        return self._plan.master_addr

    @property
    def main_port(self) -> int:
        if self._port is None:
            from lightning.fabric.plugins.environments.lightning import find_free_network_port

            self._port = find_free_network_port()
        return self._port

    @staticmethod
    def detect() -> bool:
        return True

    def world_size(self) -> int:
        return self._world_size

    def set_world_size(self, size: int) -> None:
        self._world_size = size

    def global_rank(self) -> int:
        return self._global_rank

    def set_global_rank(self, rank: int) -> None:
        self._global_rank = rank
        rank_zero_only.rank = rank

    def local_rank(self) -> int:
        return int(os.environ.get("LOCAL_RANK", 0))

    def node_rank(self) -> int:
        return self._plan.node_rank


def normalize_strategy(name: str) -> str:
    key = str(name).lower()
    if key not in STRATEGY_ALIASES:
        raise SpecError(
            f"train.distributed_strategy={name!r} is not supported; choose from {', '.join(STRATEGY_ALIASES)}")
    return STRATEGY_ALIASES[key]


def build_strategy(strategy_name: str, plan: LaunchPlan, timeout_s: float | None):
    """The Lightning strategy object: single device, DDP, or FSDP2 (`fully_shard`) via ModelParallelStrategy.
    The timeout bounds every collective so a frozen peer fails the job instead of hanging."""
    from lightning.pytorch.strategies import DDPStrategy, ModelParallelStrategy, SingleDeviceStrategy

    kind = normalize_strategy(strategy_name)
    timeout = timedelta(seconds=float(timeout_s)) if timeout_s else timedelta(minutes=30)
    backend = "gloo" if plan.accelerator == "cpu" else "nccl"
    if plan.world_size == 1 and kind == "ddp":
        import torch

        device = torch.device("cpu") if plan.accelerator == "cpu" else torch.device(
            "cuda", plan.gpu_ids[0] if plan.gpu_ids else 0)
        return SingleDeviceStrategy(device=device)
    if kind == "fsdp":
        # Pure data parallelism: one shard per process, no tensor parallel dimension.
        return ModelParallelStrategy(
            data_parallel_size=plan.world_size, tensor_parallel_size=1,
            save_distributed_checkpoint=False, process_group_backend=backend, timeout=timeout)
    # Every trainable Mask2Former parameter gets a gradient each step (the aux predictions share the heads),
    # so DDP needs no per-step search for unused parameters.
    return DDPStrategy(process_group_backend=backend, timeout=timeout, find_unused_parameters=False)


PRECISIONS = {"fp32": "32-true", "fp16": "16-mixed", "bf16": "bf16-mixed"}


def lightning_precision(precision: str, accelerator: str) -> str:
    key = str(precision).lower()
    if key not in PRECISIONS:
        raise SpecError(f"train.precision={precision!r} is not supported; choose from {', '.join(PRECISIONS)}")
    if key == "fp16" and accelerator == "cpu":
        raise SpecError("train.precision=fp16 needs a GPU (no fp16 autocast on CPU); use bf16 or fp32 on CPU")
    return PRECISIONS[key]
