"""Process-group setup, device choice and autograd-aware collectives; the only reader of RANK/WORLD_SIZE."""

from __future__ import annotations

import gc
import logging
import os
from dataclasses import dataclass
from typing import Callable, List, Optional, Sequence, TypeVar

import torch
import torch.distributed as dist

from evaluation.errors import UserInputError

log = logging.getLogger(__name__)
T = TypeVar("T")


class LaunchError(UserInputError):
    """The launch environment or the requested device cannot be used; the message names the variable or setting."""


@dataclass(frozen=True)
class DistEnv:
    """Where this process sits: rank, world size, local rank, and the device its tensors live on."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def is_distributed(self) -> bool:
        return self.world_size > 1


def _env_int(name: str, default: int) -> int:
    value = os.environ.get(name)
    if value is None or value == "":
        return default
    try:
        return int(value)
    except ValueError:
        raise LaunchError(f"environment variable {name}={value!r} is not an integer") from None


def process_rank() -> int:
    """This process's global rank as the launcher set it (RANK), before any process group exists."""
    return _env_int("RANK", 0)


def choose_device(preference: str, local_rank: int) -> torch.device:
    """`auto` takes this process's GPU when CUDA is available, else the CPU; `cpu`/`cuda` force it."""
    if preference not in ("auto", "cpu", "cuda"):
        raise LaunchError(f"device must be one of auto, cpu, cuda; got {preference!r}")
    if preference == "cuda" and not torch.cuda.is_available():
        raise LaunchError("device cuda was requested but CUDA is not available on this machine")
    if preference == "cpu" or (preference == "auto" and not torch.cuda.is_available()):
        return torch.device("cpu")
    device = torch.device("cuda", local_rank % torch.cuda.device_count())
    torch.cuda.set_device(device)
    return device


def init_distributed(device_preference: str = "auto", timeout_s: float = 1800.0) -> DistEnv:
    """Join the process group described by torchrun/DeepSpeed/Ray environment variables, if any.

    With WORLD_SIZE unset or 1 this is a plain single process and no group is created.
    NCCL is used on CUDA, gloo on CPU.
    """
    world_size = _env_int("WORLD_SIZE", 1)
    rank = process_rank()
    local_rank = _env_int("LOCAL_RANK", rank)
    device = choose_device(device_preference, local_rank)
    if world_size > 1 and not dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        from datetime import timedelta

        dist.init_process_group(
            backend=backend,
            rank=rank,
            world_size=world_size,
            timeout=timedelta(seconds=timeout_s),
            store=restart_attempt_store(world_size, timedelta(seconds=timeout_s)),
        )
        log.info("joined process group: rank %d/%d, backend %s, device %s", rank, world_size, backend, device)
    return DistEnv(rank=rank, world_size=world_size, local_rank=local_rank, device=device)


def restart_attempt_store(world_size: int, timeout) -> Optional[dist.Store]:
    """Under torchrun, the agent's store with this restart attempt's keys kept apart; None elsewhere (env://).

    torchrun keeps one store for all attempts of `--max-restarts`, and a group started again after a worker
    died would read the keys the dead attempt left: gloo then dials the dead workers' addresses (connection
    refused) and NCCL would take their ids. Prefixing by TORCHELASTIC_RESTART_COUNT gives each attempt its own.
    """
    if os.environ.get("TORCHELASTIC_USE_AGENT_STORE") != "True":
        return None
    store = dist.TCPStore(
        os.environ.get("MASTER_ADDR", "localhost"),
        _env_int("MASTER_PORT", 29500),
        world_size,
        is_master=False,
        timeout=timeout,
    )
    return dist.PrefixStore(f"fr/attempt_{_env_int('TORCHELASTIC_RESTART_COUNT', 0)}", store)


def env_from_group(device: Optional[torch.device] = None) -> DistEnv:
    """A DistEnv for an already initialised group (tests and user scripts that set up their own group)."""
    if not dist.is_available() or not dist.is_initialized():
        return DistEnv(device=device or torch.device("cpu"))
    rank = dist.get_rank()
    return DistEnv(
        rank=rank,
        world_size=dist.get_world_size(),
        local_rank=_env_int("LOCAL_RANK", rank),
        device=device or torch.device("cpu"),
    )


def export_local_rank(env: DistEnv) -> None:
    """Set LOCAL_RANK for libraries that read it themselves (DeepSpeed): torchrun and the deepspeed launcher set
    it, a group formed in Python (Ray Train, tests) may not."""
    os.environ.setdefault("LOCAL_RANK", str(env.local_rank))


def cleanup() -> None:
    """Leave the process group, after freeing unreachable DDP wrappers: a reducer that outlives its group
    can abort the process at exit ("terminate called without an active exception")."""
    if dist.is_available() and dist.is_initialized():
        gc.collect()
        dist.destroy_process_group()


def barrier(env: DistEnv) -> None:
    if env.is_distributed:
        dist.barrier()


# (per-rank gradients of the gathered slices, this rank) -> the summed gradient of this rank's slice
GatherBackward = Callable[[Sequence[torch.Tensor], int], torch.Tensor]


def gather_backward_all_reduce(grads: Sequence[torch.Tensor], rank: int) -> torch.Tensor:
    """Backward of an all-gather by all-reduce: the whole [W, B, D] gradient is summed on every rank, which
    keeps row `rank` (a ring all-reduce sends 2 x (W-1) x B x D elements per rank)."""
    stacked = torch.stack([g.contiguous() for g in grads])
    dist.all_reduce(stacked, op=dist.ReduceOp.SUM)
    return stacked[rank]


def gather_backward_reduce_scatter(grads: Sequence[torch.Tensor], rank: int) -> torch.Tensor:
    """Backward of an all-gather by reduce-scatter: each rank receives only the sum of its own [B, D] slice
    (a ring reduce-scatter sends (W-1) x B x D elements per rank, half the all-reduce's). Same result."""
    out = torch.empty_like(grads[rank], memory_format=torch.contiguous_format)
    _reduce_scatter(out, torch.cat([g.contiguous() for g in grads], dim=0))
    return out


# torch renamed reduce_scatter_tensor to reduce_scatter_single. The input is the concatenation [W*B, ...]:
# NCCL also takes a stack, gloo only the concatenation.
_reduce_scatter = getattr(dist, "reduce_scatter_single", None) or dist.reduce_scatter_tensor

# Backends with a native reduce-scatter. gloo is left out on purpose: older torch builds raise "does not
# support reduce_scatter" and newer ones build it from per-slice all-reduces (no less traffic, W times the
# latency), so gloo and any unlisted backend keep the single all-reduce.
GATHER_BACKWARD = {"nccl": gather_backward_reduce_scatter}


def gather_backward_for(backend: str) -> GatherBackward:
    """The all-gather backward for a process-group backend: a table lookup, fixed for the group's lifetime."""
    return GATHER_BACKWARD.get(str(backend), gather_backward_all_reduce)


class _AllGatherWithGrad(torch.autograd.Function):
    """all_gather whose backward returns to each rank the sum over ranks of the gradient of its own slice."""

    @staticmethod
    def forward(ctx, tensor: torch.Tensor, backward_fn: GatherBackward) -> tuple:
        world = dist.get_world_size()
        ctx.rank = dist.get_rank()
        ctx.backward_fn = backward_fn
        gathered = [torch.empty_like(tensor) for _ in range(world)]
        dist.all_gather(gathered, tensor.contiguous())
        return tuple(gathered)

    @staticmethod
    def backward(ctx, *grads: torch.Tensor) -> tuple:
        return ctx.backward_fn(grads, ctx.rank), None


def all_gather_with_grad(
    tensor: torch.Tensor, env: DistEnv, backward_fn: Optional[GatherBackward] = None
) -> torch.Tensor:
    """Concatenate `tensor` from every rank along dim 0; gradients flow back to the owners.

    Every rank must pass the same shape (PartialFC checks the batch sizes first): both the all-gather and
    the reduce-scatter of its backward are defined for equal slices only. `backward_fn` defaults to the
    group backend's choice (gather_backward_for); tests pass one explicitly to compare the two.
    """
    if not env.is_distributed:
        return tensor
    if backward_fn is None:
        backward_fn = gather_backward_for(dist.get_backend())
    return torch.cat(_AllGatherWithGrad.apply(tensor, backward_fn), dim=0)


def all_gather_no_grad(tensor: torch.Tensor, env: DistEnv) -> torch.Tensor:
    """Concatenate `tensor` from every rank along dim 0 (equal sizes), without autograd."""
    if not env.is_distributed:
        return tensor
    gathered: List[torch.Tensor] = [torch.empty_like(tensor) for _ in range(env.world_size)]
    dist.all_gather(gathered, tensor.contiguous())
    return torch.cat(gathered, dim=0)


def all_reduce(tensor: torch.Tensor, env: DistEnv, op: str = "sum") -> torch.Tensor:
    """In-place all-reduce (sum or max) that is a no-op for a single process; returns the tensor."""
    if env.is_distributed:
        dist.all_reduce(tensor, op={"sum": dist.ReduceOp.SUM, "max": dist.ReduceOp.MAX}[op])
    return tensor


def broadcast_object(obj, env: DistEnv, src: int = 0):
    """Send a picklable object from `src` to every rank."""
    if not env.is_distributed:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def all_gather_object(obj: T, env: DistEnv) -> List[T]:
    """Every rank's picklable `obj`, in rank order, on every rank (for rare agreements such as which
    checkpoint every rank can resume from)."""
    if not env.is_distributed:
        return [obj]
    gathered: List[T] = [None] * env.world_size  # type: ignore[list-item]
    dist.all_gather_object(gathered, obj)
    return gathered


def on_main(env: DistEnv, fn: Callable[[], T]) -> Optional[T]:
    """Call `fn` on the main rank only; an exception it raises is raised on every rank.

    A check that only rank 0 runs would otherwise leave the other ranks waiting in the next collective.
    Returns `fn`'s result on the main rank and None elsewhere.
    """
    if not env.is_distributed:
        return fn()
    result, error = None, None
    if env.is_main:
        try:
            result = fn()
        except Exception as exc:  # handed to every rank below, then raised again here
            error = exc
    error = broadcast_object(error, env)
    if error is not None:
        raise error
    return result
