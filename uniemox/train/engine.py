"""DeepSpeed set-up: the process group, the JSON config completed from the run config, the engine.

Values that live in both places (micro batch, accumulation, clipping, precision) come from
the run config: the JSON says "auto" (or repeats the same value); a JSON value that
contradicts the run config is refused. The optimizer is the trainer's own AdamW with
MAE's parameter groups, so the JSON must not name one.
"""
import difflib
import logging
import os
import socket
from dataclasses import dataclass
from typing import Any, Dict, Optional, Tuple

import torch

from uniemox.errors import UserError
from uniemox.io import read_json

from .extensions import use_extensions_dir

logger = logging.getLogger(__name__)


@dataclass
class DistInfo:
    rank: int
    world_size: int
    local_rank: int
    device: torch.device


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def init_distributed() -> DistInfo:
    """Join the launcher's process group (gloo on CPU, NCCL on CUDA); a plain ``python`` start
    becomes a world of one. DeepSpeed's JIT-built ops are kept in a folder of this environment's
    (`extensions.use_extensions_dir`)."""
    import deepspeed

    use_extensions_dir()
    if "RANK" not in os.environ:
        os.environ.update(RANK="0", LOCAL_RANK="0", WORLD_SIZE="1", MASTER_ADDR="127.0.0.1",
                          MASTER_PORT=os.environ.get("MASTER_PORT", str(_free_port())))
    cuda = torch.cuda.is_available()
    deepspeed.init_distributed(dist_backend="nccl" if cuda else "gloo")
    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    if cuda:
        torch.cuda.set_device(local_rank)
    device = torch.device("cuda", local_rank) if cuda else torch.device("cpu")
    return DistInfo(torch.distributed.get_rank(), torch.distributed.get_world_size(), local_rank, device)


def resolve_precision(precision: str, device: torch.device) -> str:
    if precision not in ("auto", "bf16", "fp16", "fp32"):
        raise UserError(f"train.precision must be auto, bf16, fp16 or fp32, got {precision!r}")
    if precision == "auto":
        return "bf16" if device.type == "cuda" and torch.cuda.is_bf16_supported() else "fp32"
    return precision


def _settle(ds: Dict[str, Any], path: Tuple[str, ...], value: Any, source: str) -> None:
    """Set ds[path] = value where the JSON says "auto" or nothing; refuse a contradiction."""
    node = ds
    for key in path[:-1]:
        node = node.setdefault(key, {})
    current = node.get(path[-1], "auto")
    if current != "auto" and current != value:
        raise UserError(f"DeepSpeed config sets {'.'.join(path)}={current!r} but the run config gives "
                        f"{value!r} ({source}); set it in one place (use \"auto\" in the JSON)")
    node[path[-1]] = value


# Top-level keys of DeepSpeed's JSON that matter here: a key one typo away from one of these
# (``zero_optimisation``) would be ignored by DeepSpeed without a word, so it is refused.
_KNOWN_KEYS = ("train_micro_batch_size_per_gpu", "gradient_accumulation_steps", "train_batch_size",
               "gradient_clipping", "bf16", "fp16", "zero_optimization", "optimizer", "scheduler",
               "activation_checkpointing", "steps_per_print", "wall_clock_breakdown", "zero_allow_untested_optimizer",
               "zero_force_ds_cpu_optimizer", "tensorboard", "wandb", "csv_monitor", "comet", "flops_profiler",
               "communication_data_type", "prescale_gradients", "gradient_predivide_factor", "checkpoint",
               "data_types", "comms_logger", "memory_breakdown", "dump_state", "torch_autocast", "compile")
_SECTIONS = ("bf16", "fp16", "zero_optimization")


def _check_structure(ds: Any, path: str) -> None:
    """The shape DeepSpeed needs, checked before it sees the file: each mistake is one line."""
    if not isinstance(ds, dict):
        raise UserError(f"DeepSpeed config {path} must hold a JSON object, got a {type(ds).__name__}")
    for key in ds:
        near = difflib.get_close_matches(key, _KNOWN_KEYS, n=1, cutoff=0.8)
        if key not in _KNOWN_KEYS and near:
            raise UserError(f"DeepSpeed config {path}: unknown key {key!r} (did you mean {near[0]!r}?); "
                            f"DeepSpeed would ignore it")
    for section in _SECTIONS:
        if section in ds and not isinstance(ds[section], dict):
            raise UserError(f"DeepSpeed config {path}: {section!r} must be an object such as "
                            f"{{\"enabled\": \"auto\"}}, got {ds[section]!r}")
    stage = ds.get("zero_optimization", {}).get("stage", 0)
    if stage not in (0, 1, 2, 3):
        raise UserError(f"DeepSpeed config {path}: zero_optimization.stage must be 0, 1, 2 or 3, got {stage!r}")


def read_ds_config(path: str) -> Dict[str, Any]:
    """The DeepSpeed JSON at ``path``, its structure checked (one line per mistake)."""
    ds = read_json(path, "DeepSpeed config")
    _check_structure(ds, path)
    return ds


def build_ds_config(path: str, *, micro_batch: int, grad_accum: int, world_size: int,
                    grad_clip: float, precision: str, single_rank_stage0: bool = False,
                    resumed_stages: Optional[Tuple[int, int]] = None, load_universal: bool = False) -> Dict[str, Any]:
    """The DeepSpeed JSON at ``path`` completed from the run config. ``single_rank_stage0``: a
    one-rank run of ZeRO-1/2 (optimizer state not offloaded) runs as ZeRO-0: with nothing to
    partition, the stages compute the same update, but ZeRO-1/2 still copy every gradient into
    their buckets and partitions (ZeRO-2 on one CPU rank: 0.73x a plain PyTorch step; ZeRO-0:
    0.94x, before the other savings; the sample run, 2-core CPU). ``resumed_stages``: the JSON's
    and the run's ZeRO stage of the checkpoint being resumed; written from this JSON's stage, the
    run keeps the checkpoint's (a ZeRO-2 run continued on one rank stays ZeRO-2; a one-rank ZeRO-0
    run continued on more ranks stays ZeRO-0). ``load_universal``: DeepSpeed loads a universal
    checkpoint (elastic.py)."""
    ds = read_ds_config(path)
    stage = zero_stage(ds)
    if load_universal:
        ds["checkpoint"] = dict(ds.get("checkpoint", {}), load_universal=True)
    if resumed_stages is not None and resumed_stages[0] == stage:
        if resumed_stages[1] != stage:
            logger.info("ZeRO-%d as the checkpoint ran (the JSON says %d)", resumed_stages[1], stage)
        ds["zero_optimization"] = dict(ds.get("zero_optimization", {}), stage=resumed_stages[1])
    elif single_rank_stage0 and world_size == 1 and stage in (1, 2) and not offloads_optimizer(ds):
        ds["zero_optimization"] = dict(ds["zero_optimization"], stage=0)
        logger.info("one rank: ZeRO-%d runs as ZeRO-0 (the same update without partition copies; "
                    "train.single_rank_stage0=false keeps stage %d)", stage, stage)
    for owned in ("optimizer", "scheduler"):
        if owned in ds:
            raise UserError(f"DeepSpeed config {path} names a {owned!r}; the trainer builds AdamW and its "
                            f"schedule from the run config (optim.*): remove '{owned}'")
    _settle(ds, ("train_micro_batch_size_per_gpu",), micro_batch, "data.batch_size")
    _settle(ds, ("gradient_accumulation_steps",), grad_accum, "optim.grad_accum")
    _settle(ds, ("train_batch_size",), micro_batch * grad_accum * world_size,
            "data.batch_size x optim.grad_accum x world size")
    _settle(ds, ("gradient_clipping",), float(grad_clip), "optim.grad_clip")
    _settle(ds, ("bf16", "enabled"), precision == "bf16", "train.precision")
    _settle(ds, ("fp16", "enabled"), precision == "fp16", "train.precision")
    return ds


def zero_stage(ds: Dict[str, Any]) -> int:
    return int(ds.get("zero_optimization", {}).get("stage", 0))


def offloads_optimizer(ds: Dict[str, Any]) -> bool:
    return ds.get("zero_optimization", {}).get("offload_optimizer", {}).get("device", "none") == "cpu"


def build_optimizer(param_groups, lr: float, betas, ds: Dict[str, Any], device: torch.device):
    """torch's fused AdamW, on CUDA and on the CPU (one kernel for every tensor: 4.2 ms against
    11.9 ms for the per-tensor loop and 14.0 ms for foreach, per step of the main job's model on
    2 CPU cores; it also skips an update on the device when told to: guard.py); DeepSpeed's CPU
    Adam where the optimizer state is offloaded (ZeRO-Offload needs it)."""
    if offloads_optimizer(ds):
        from deepspeed.ops.adam import DeepSpeedCPUAdam
        return DeepSpeedCPUAdam(param_groups, lr=lr, betas=tuple(betas), adamw_mode=True)
    return torch.optim.AdamW(param_groups, lr=lr, betas=tuple(betas), fused=device.type in ("cuda", "cpu"))


def build_engine(model: torch.nn.Module, optimizer, ds: Dict[str, Any]):
    import deepspeed

    engine, optimizer, _, _ = deepspeed.initialize(model=model, optimizer=optimizer, config=ds)
    if zero_stage(ds) == 0 and engine.world_size == 1:
        # nothing to average: DeepSpeed would still flatten every gradient, all-reduce it with
        # itself and copy it back after each backward (6 ms of an 80 ms step, sample model, CPU)
        engine.enable_backward_allreduce = False
    logger.info("DeepSpeed engine: ZeRO stage %d, micro batch %d, accumulation %d, precision %s",
                zero_stage(ds), ds["train_micro_batch_size_per_gpu"], ds["gradient_accumulation_steps"],
                "bf16" if ds["bf16"]["enabled"] else "fp16" if ds["fp16"]["enabled"] else "fp32")
    return engine, optimizer


def configure_cpu_threads(device: torch.device, num_workers: int, local_world_size: int) -> int:
    """On CPU, give this rank's compute the cores its data workers and sibling ranks leave
    free. Oversubscribed OpenMP threads spin against the workers: on 2 cores with 2 workers,
    2 compute threads made steps 3-10x slower than 1 (measured, sample run)."""
    if device.type != "cpu":
        return torch.get_num_threads()
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    threads = max(1, cores // max(1, local_world_size) - num_workers)
    torch.set_num_threads(threads)
    return threads


def fp32_module_state(engine) -> Dict[str, torch.Tensor]:
    """The engine module's state dict with every trained parameter as its fp32 master copy (under
    bf16/fp16 the module holds rounded weights) and frozen parameters and buffers as they are:
    DeepSpeed's ``safe_get_full_fp32_param`` (ZeRO-1/2/3), or the ``fp32_groups`` its ZeRO-0
    bf16/fp16 optimizer keeps beside its ``fp16_groups``. Collective under ZeRO-3: every rank
    must call it."""
    from deepspeed.utils import safe_get_full_fp32_param

    optimizer = engine.optimizer
    masters = {}
    if hasattr(optimizer, "fp16_groups") and hasattr(optimizer, "fp32_groups"):  # ZeRO-0, bf16/fp16
        for low, high in zip(optimizer.fp16_groups, optimizer.fp32_groups):
            masters.update({id(p): m for p, m in zip(low, high) if isinstance(m, torch.Tensor)})
    state = {}
    module = engine.module
    for name, param in module.named_parameters():
        full = safe_get_full_fp32_param(param) if param.requires_grad else None
        full = masters.get(id(param)) if full is None else full
        state[name] = (full if full is not None else param.detach()).float().cpu()
    for name, buf in module.named_buffers():
        state[name] = buf.detach().cpu()
    return {k: state[k] for k in module.state_dict() if k in state}
