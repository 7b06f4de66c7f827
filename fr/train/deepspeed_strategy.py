"""The `deepspeed` training strategy: the backbone inside a DeepSpeed engine (ZeRO stage 0, 1 or 2), the Partial FC
head outside it (docs/distributed.md, "DeepSpeed"). DeepSpeed is an optional extra, imported only when this
strategy is built.

fr's settings win where both speak: `deepspeed_config(cfg)` reads `train.deepspeed_config`, refuses what would
touch the head or break the strategy (ZeRO-3, offloading, an `optimizer` or `scheduler` block) and any value that
disagrees with fr's config, and fills in the batch sizes, gradient accumulation and clipping. It runs before any
process-group work (fr.train.run calls `check_strategy`), so every mistake is one line on every rank.
"""

from __future__ import annotations

import copy
import json
import logging
import os
from contextlib import contextmanager, nullcontext
from typing import TYPE_CHECKING, Any, ContextManager, Dict, Iterator, Optional

import torch
from torch import nn

from fr.distributed import DistEnv, LaunchError, export_local_rank
from fr.errors import CheckpointError, ConfigError
from fr.train.strategy import ENGINE_DIR, STRATEGIES, OptimizerFactory, SchedulerFactory

if TYPE_CHECKING:
    from fr.config import Config

log = logging.getLogger("fr.train")

TAG = "deepspeed"  # the engine's files live in <step dir>/deepspeed/deepspeed/ (ENGINE_DIR / tag)
UNIVERSAL_TAG = "universal"  # ds_to_universal's output, <step dir>/deepspeed/universal/, read with load_universal
MAX_ZERO_STAGE = 2  # ZeRO-3 partitions the parameters themselves: the forward would need the engine's gathers
FORBIDDEN_BLOCKS = {
    "optimizer": "fr gives DeepSpeed its own optimizer (optim.*)",
    "scheduler": "fr gives DeepSpeed its own LR schedule (optim.schedule)",
}


def _label(cfg: Config) -> str:
    return f"train.deepspeed_config={cfg.train.deepspeed_config}"


def read_json(cfg: Config) -> Dict[str, Any]:
    """The JSON object in `train.deepspeed_config`, or a one-line ConfigError."""
    path = cfg.train.deepspeed_config
    if not path:
        raise ConfigError("train.strategy=deepspeed needs train.deepspeed_config=PATH (a DeepSpeed JSON file)")
    if not os.path.isfile(path):
        raise ConfigError(f"{_label(cfg)}: no such file")
    try:
        with open(path, "r", encoding="utf-8") as fh:
            data = json.load(fh)
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{_label(cfg)}: not a text file ({exc.reason})") from None
    except json.JSONDecodeError as exc:
        raise ConfigError(f"{_label(cfg)}: invalid JSON ({exc.msg} at line {exc.lineno} column {exc.colno})") from None
    except OSError as exc:
        raise ConfigError(f"{_label(cfg)}: cannot read it ({exc.strerror or exc})") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{_label(cfg)}: expected a JSON object, got {type(data).__name__}")
    return data


def _agree(cfg: Config, ds: Dict[str, Any], key: str, value: Any, fr_key: str) -> None:
    """Fill `key` with fr's `value`; a different value already in the JSON is an error naming both."""
    given = ds.get(key, "auto")
    if given != "auto" and given != value:
        raise ConfigError(
            f"{_label(cfg)}: {key}={given!r} disagrees with {fr_key}={value!r}; fr's setting wins: "
            f"remove {key} from the JSON or make them equal"
        )
    ds[key] = value


def _enabled(block: Any) -> bool:
    return isinstance(block, dict) and block.get("enabled", False) is True


def deepspeed_config(cfg: Config, world_size: Optional[int] = None) -> Dict[str, Any]:
    """The DeepSpeed config fr passes to the engine, from `train.deepspeed_config` and fr's own settings.

    `world_size` (None before the process group exists) also fixes `train_batch_size`."""
    ds = read_json(cfg)
    for block, why in FORBIDDEN_BLOCKS.items():
        if block in ds:
            raise ConfigError(f"{_label(cfg)}: remove the {block!r} block; {why} and the head keeps its own")
    zero = ds.get("zero_optimization", {})
    if not isinstance(zero, dict):
        raise ConfigError(f"{_label(cfg)}: zero_optimization must be an object, got {zero!r}")
    stage = zero.get("stage", 0)
    if not isinstance(stage, int) or isinstance(stage, bool) or not 0 <= stage <= 3:
        raise ConfigError(f"{_label(cfg)}: zero_optimization.stage must be 0, 1 or 2, got {stage!r}")
    if stage > MAX_ZERO_STAGE:
        raise ConfigError(
            f"{_label(cfg)}: zero_optimization.stage={stage} is not supported; use 0, 1 or 2 (ZeRO-3 partitions "
            f"the backbone's parameters, and the Partial FC head is already model-parallel)"
        )
    for offload in ("offload_optimizer", "offload_param"):
        setting = zero.get(offload)
        if setting is not None and (not isinstance(setting, dict) or setting.get("device", "none") != "none"):
            raise ConfigError(
                f"{_label(cfg)}: zero_optimization.{offload} is not supported (the head and its optimizer stay "
                f"on the device, outside DeepSpeed); remove it"
            )
    fp16, bf16 = _enabled(ds.get("fp16")), _enabled(ds.get("bf16"))
    if fp16 and bf16:
        raise ConfigError(f"{_label(cfg)}: fp16 and bf16 are both enabled; enable one")
    if cfg.train.amp == "on" and not (fp16 or bf16):
        raise ConfigError(f"{_label(cfg)}: train.amp=on but neither fp16 nor bf16 is enabled in the JSON")
    if cfg.train.amp == "off" and (fp16 or bf16):
        raise ConfigError(
            f"{_label(cfg)}: {'fp16' if fp16 else 'bf16'}.enabled=true disagrees with train.amp=off; "
            f"DeepSpeed's precision follows the JSON: set train.amp=auto or disable it there"
        )
    if cfg.partial_fc.update == "sparse" and fp16:
        raise ConfigError(
            f"{_label(cfg)}: fp16 with partial_fc.update=sparse is not supported (the sampled rows' gradients "
            f"would not be unscaled); use bf16 or partial_fc.update=dense"
        )
    accumulation = cfg.optim.gradient_accumulation
    _agree(cfg, ds, "train_micro_batch_size_per_gpu", cfg.data.batch_size, "data.batch_size")
    _agree(cfg, ds, "gradient_accumulation_steps", accumulation, "optim.gradient_accumulation")
    _agree(cfg, ds, "gradient_clipping", float(cfg.optim.clip_grad_norm), "optim.clip_grad_norm")
    if world_size is not None:
        _agree(
            cfg,
            ds,
            "train_batch_size",
            cfg.data.batch_size * accumulation * world_size,
            f"data.batch_size x optim.gradient_accumulation x {world_size} ranks",
        )
    elif ds.get("train_batch_size", "auto") == "auto":
        ds.pop("train_batch_size", None)
    if ds.get("zero_allow_untested_optimizer") is False:
        raise ConfigError(f"{_label(cfg)}: zero_allow_untested_optimizer must be true (fr passes a torch optimizer)")
    ds["zero_allow_untested_optimizer"] = True  # fr's own optimizer (torch SGD/AdamW) under ZeRO
    ds.setdefault("steps_per_print", 2**31 - 1)  # fr logs the progress itself
    return ds


def select_accelerator(device: torch.device) -> None:
    """Make DeepSpeed use fr's device kind. DeepSpeed picks its accelerator once, at import: DS_ACCELERATOR if set,
    else by probing (CUDA when a GPU is visible, the CPU as the fallback, with gloo as its communication backend
    when Intel's oneccl bindings are not installed). A CPU run sets DS_ACCELERATOR=cpu before that import so a
    visible GPU does not win; a disagreeing DS_ACCELERATOR is a LaunchError."""
    wanted = "cpu" if device.type == "cpu" else device.type
    if device.type == "cpu":
        os.environ.setdefault("DS_ACCELERATOR", "cpu")
    from deepspeed.accelerator import get_accelerator

    name = get_accelerator().device_name()
    if name != wanted:
        raise LaunchError(
            f"DeepSpeed's accelerator is {name!r} (DS_ACCELERATOR={os.environ.get('DS_ACCELERATOR', '')!r}) but "
            f"fr trains on {device}; set DS_ACCELERATOR={wanted} or train.device to match"
        )
    if device.type == "cpu" and os.environ.get("FR_DEEPSPEED_SHM") != "1":
        # DeepSpeed's CPU accelerator would JIT-compile a shared-memory all-reduce on first use (a C++ build of
        # minutes that needs a compiler); fr's CPU runs (development, tests) use gloo, as all of fr's collectives.
        import deepspeed.ops

        deepspeed.ops.__compatible_ops__["deepspeed_shm_comm"] = False


class _CastInputs(nn.Module):
    """The engine behind a cast of the images to its parameters' dtype (fp16/bf16 engines hold half weights)."""

    def __init__(self, engine: nn.Module, dtype: torch.dtype):
        super().__init__()
        self.engine, self.dtype = engine, dtype

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.engine(images.to(self.dtype))


@STRATEGIES.register("deepspeed")
class DeepSpeedStrategy:
    """The backbone in a DeepSpeed engine, with fr's optimizer and LR schedule, its precision (fp32, or fp16 with
    DeepSpeed's dynamic loss scale, or bf16) and ZeRO stage from the JSON, and gradient accumulation and clipping
    done by DeepSpeed.

    The trainer drives the accumulation boundary itself (`no_sync` marks the micro-batches that are not a step's
    last), divides each micro-batch's loss by their count (so `backward` does not divide again) and calls `step`
    once per optimizer step; the step answers whether DeepSpeed applied the update (False when fp16 overflowed
    or the gradient norm was not finite), and the head steps only then. The engine's files go into fr's step
    directory (`save_files`/`load_files`, called by fr.train.checkpoint.CheckpointManager)."""

    options = staticmethod(lambda cfg, env: {"config": deepspeed_config(cfg, env.world_size)})
    check = staticmethod(deepspeed_config)

    def __init__(
        self,
        backbone: nn.Module,
        env: DistEnv,
        optimizer: OptimizerFactory,
        scheduler: SchedulerFactory,
        config: Dict[str, Any],
        amp_dtype: Optional[torch.dtype] = None,
    ):
        select_accelerator(env.device)
        import deepspeed

        self.env, self.config = env, config
        self.trainable = any(p.requires_grad for p in backbone.parameters())
        if not self.trainable:
            raise ConfigError("train.freeze=backbone trains no backbone: use train.strategy=ddp for a head-only run")
        export_local_rank(env)  # DeepSpeed reads LOCAL_RANK itself
        if not torch.distributed.is_initialized():
            # A single process has no group, and DeepSpeed insists on one: a group of one, in this process only.
            backend = "nccl" if env.device.type == "cuda" else "gloo"
            torch.distributed.init_process_group(backend, store=torch.distributed.HashStore(), rank=0, world_size=1)
        # fr's process group is up: DeepSpeed wraps it instead of starting another one.
        deepspeed.init_distributed(dist_backend=torch.distributed.get_backend(), auto_mpi_discovery=False)
        # DeepSpeed flattens and broadcasts parameters as contiguous storage: train.channels_last keeps NHWC
        # activations, but the weights go back to the default layout.
        backbone.to(memory_format=torch.contiguous_format)
        params = [p for p in backbone.parameters() if p.requires_grad]
        torch_optimizer = optimizer([{"params": params}])
        self.scheduler = scheduler(torch_optimizer)
        self.engine, self.optimizer, _, _ = deepspeed.initialize(
            model=backbone,
            optimizer=torch_optimizer,
            lr_scheduler=self.scheduler,
            config=config,
            dist_init_required=False,
        )
        self.module = self.engine.module
        self.dtype = next(self.module.parameters()).dtype
        if self.dtype != torch.float32:
            # DeepSpeed casts the parameters only; BatchNorm's CPU kernels want its statistics in the same dtype.
            for buffer in self.module.buffers():
                if buffer.is_floating_point():
                    buffer.data = buffer.data.to(self.dtype)
        self.model = _CastInputs(self.engine, self.dtype) if self.dtype != torch.float32 else self.engine
        self.stage = self.engine.zero_optimization_stage()
        self._saved: Optional[tuple] = None  # (engine step, step dir) of the last save_files
        self.amp_dtype = None  # the engine casts the model itself; no autocast around it

    def eval_model(self) -> nn.Module:
        """The backbone as evaluation runs it: the module itself in fp32, else a fp32 copy of the fp16/bf16
        engine's module (evaluation feeds fp32 images and wants fp32 embeddings)."""
        return self.module if self.dtype == torch.float32 else copy.deepcopy(self.module).float()

    def autocast(self) -> ContextManager:
        return nullcontext()  # the engine holds the weights in its own precision

    @contextmanager
    def no_sync(self) -> Iterator[None]:
        """A micro-batch that is not its step's last: DeepSpeed accumulates without reaching its boundary."""
        self.engine.set_gradient_accumulation_boundary(False)
        try:
            yield
        finally:
            self.engine.set_gradient_accumulation_boundary(True)

    def zero_grad(self) -> None:
        self.engine.set_gradient_accumulation_boundary(True)

    def backward(self, loss: torch.Tensor) -> None:
        # The trainer already divided the loss by the micro-batch count: DeepSpeed must not divide again.
        self.engine.backward(loss, scale_wrt_gas=False)

    def loss_scale(self) -> float:
        """DeepSpeed's current fp16 loss scale (1 without one)."""
        optimizer = self.engine.optimizer
        config = getattr(optimizer, "loss_scale_config", None)
        scale = config.cur_scale if config is not None else getattr(optimizer, "cur_scale", None)
        return float(scale) if scale is not None and self.dtype == torch.float16 else 1.0

    def unscale_(self, optimizer: torch.optim.Optimizer) -> None:
        """Divide the head's gradients by DeepSpeed's loss scale (they came from the same scaled loss)."""
        scale = self.loss_scale()
        if scale != 1.0:
            for group in optimizer.param_groups:
                for p in group["params"]:
                    if p.grad is not None:
                        p.grad.div_(scale)

    def clip_grad_norm(self, max_norm: float) -> torch.Tensor:
        """DeepSpeed clips inside its step (gradient_clipping = optim.clip_grad_norm) and skips a step whose
        gradient norm is not finite; fr's own check sees the loss and the head here, so this is 0."""
        return torch.zeros((), device=self.env.device)

    def step(self) -> bool:
        self.engine.step()
        return bool(self.engine.was_step_applied())

    def skip(self) -> None:
        """Drop the accumulated gradients without an update (fr found a non-finite loss or head gradient):
        DeepSpeed's own overflow path, taken by hand."""
        optimizer = self.engine.optimizer
        optimizer.zero_grad(set_to_none=True)
        averaged = getattr(optimizer, "averaged_gradients", None)  # ZeRO-1/2's reduced partitions
        if isinstance(averaged, dict):
            for key in averaged:
                averaged[key] = None
        self.engine.zero_grad()

    def lr(self) -> float:
        return self.scheduler.get_last_lr()[0]

    # ------------------------------------------------------------------------------------------ checkpoints
    def save_files(self, step_dir: str) -> None:
        """The engine's state (weights, ZeRO optimizer partitions, LR schedule, loss scaler) into
        `<step_dir>/deepspeed/` through DeepSpeed's own save; a collective call."""
        from deepspeed.checkpoint.constants import (
            UNIVERSAL_CHECKPOINT_INFO,
            UNIVERSAL_CHECKPOINT_VERSION_KEY,
            UNIVERSAL_CHECKPOINT_VERSION_VALUE,
        )

        # What DeepSpeed's ds_to_universal needs to convert it (no tensor or pipeline parallelism to describe).
        info = {UNIVERSAL_CHECKPOINT_INFO: {UNIVERSAL_CHECKPOINT_VERSION_KEY: UNIVERSAL_CHECKPOINT_VERSION_VALUE}}
        self.engine.save_checkpoint(os.path.join(step_dir, ENGINE_DIR), tag=TAG, client_state=info, save_latest=False)
        self._saved = (self.engine.global_steps, step_dir)

    def load_files(self, step_dir: str, saved_world_size: int) -> None:
        """Restore the engine from `step_dir`; a checkpoint of another world size loads through DeepSpeed's
        universal checkpoint when the JSON asks for it (checkpoint.load_universal), else it is refused."""
        universal = bool(self.config.get("checkpoint", {}).get("load_universal", False))
        partitioned = self.stage > 0 or self.dtype != torch.float32  # fp16/bf16 masters are partitioned too
        if saved_world_size != self.env.world_size and not universal and partitioned:
            raise CheckpointError(
                f"{step_dir}: its DeepSpeed ZeRO-{self.stage} state was saved by {saved_world_size} ranks, this "
                f"run has {self.env.world_size}; convert it to a universal checkpoint (docs/distributed.md, "
                f"DeepSpeed) or resume with {saved_world_size} ranks"
            )
        tag = UNIVERSAL_TAG if universal else TAG
        if universal and not os.path.isdir(os.path.join(step_dir, ENGINE_DIR, tag)):
            raise CheckpointError(
                f"{step_dir}: the DeepSpeed JSON sets checkpoint.load_universal but there is no "
                f"{os.path.join(ENGINE_DIR, tag)} (convert {os.path.join(ENGINE_DIR, TAG)} with ds_to_universal)"
            )
        path, _ = self.engine.load_checkpoint(os.path.join(step_dir, ENGINE_DIR), tag=tag)
        if path is None:
            raise CheckpointError(f"{os.path.join(step_dir, ENGINE_DIR, tag)}: DeepSpeed found no checkpoint there")

    def export_backbone(self) -> Dict[str, torch.Tensor]:
        """The fp32 backbone (`model.pt`): the module itself when it trains in fp32; with fp16/bf16, the fp32
        master weights consolidated from the last checkpoint when it holds this step, else the half weights
        widened (with a warning)."""
        if self.dtype != torch.float32:
            if self._saved is not None and self._saved[0] == self.engine.global_steps:
                return consolidated_backbone(self._saved[1])
            log.warning("model.pt holds the %s weights widened to fp32: no checkpoint of this step", self.dtype)
        state = self.module.state_dict()
        return {
            k: (v.detach().float() if v.is_floating_point() else v.detach()).cpu().clone() for k, v in state.items()
        }

    def state_dict(self) -> Dict[str, Any]:
        """What fr's rank file holds for the engine: where its files are; the state itself is DeepSpeed's."""
        return {"engine": "deepspeed", "zero_stage": self.stage, "world_size": self.env.world_size}

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        if state.get("engine") != "deepspeed":
            raise CheckpointError("the checkpoint was written by train.strategy=ddp; resume it with that strategy")


def consolidated_backbone(step_dir: str) -> Dict[str, torch.Tensor]:
    """The fp32 backbone state_dict from the DeepSpeed files of `step_dir`: with ZeRO-1/2, the parameters are the
    fp32 master partitions joined by DeepSpeed's zero_to_fp32; with ZeRO-0 they are the engine's module as saved
    (fp32 unless it trained in fp16/bf16: then widened). Buffers (BatchNorm statistics) come from the module."""
    os.environ.setdefault("DS_ACCELERATOR", "cpu")  # reading files needs no accelerator
    root = os.path.join(step_dir, ENGINE_DIR)
    state = torch.load(os.path.join(root, TAG, "mp_rank_00_model_states.pt"), map_location="cpu", weights_only=False)
    weights: Dict[str, torch.Tensor] = {}
    if state.get("ds_config", {}).get("zero_optimization", {}).get("stage", 0) > 0:
        from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

        weights = get_fp32_state_dict_from_zero_checkpoint(root, tag=TAG)
    out: Dict[str, torch.Tensor] = {}
    for name, value in state["module"].items():
        value = weights.get(name, value).detach().cpu()
        out[name] = value.float().clone() if value.is_floating_point() else value.clone()
    return out
