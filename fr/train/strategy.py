"""How the backbone trains data-parallel, behind one small interface; `train.strategy` names one (STRATEGIES).

A strategy owns the backbone (`module`, the plain one; `model`, what the forward goes through), its optimizer
and LR schedule (`lr()`), and its loss scaling; it saves and restores all of that (`state_dict`,
`load_state_dict`) and gives `model.pt`'s content (`export_backbone()`). The trainer calls, per step:
`zero_grad()`, for each micro-batch a forward through `model` under `autocast()` and `backward(loss)` (all but
the last micro-batch of a gradient-accumulation step inside `no_sync()`), `unscale_(head_optimizer)`,
`clip_grad_norm(max_norm)`, then either `step()` (which answers whether the backbone's update was applied:
a loss scaler may skip it) or `skip()`. `trainable` is False for a frozen backbone (train.freeze=backbone):
it stays in eval mode and is never updated. The Partial FC head and its optimizer
stay outside every strategy: the head is model-parallel (each rank owns a class shard), so nothing of it may
be averaged across ranks; only its gradients share the backbone's loss scale, hence `unscale_`.
"""

from __future__ import annotations

from contextlib import nullcontext
from typing import Any, Callable, ContextManager, Dict, Iterable, Optional

import torch
from torch import nn

from fr.distributed import DistEnv
from fr.registry import Registry

ENGINE_DIR = "deepspeed"  # a step directory's subdirectory for a strategy's own files (DeepSpeed's checkpoint)

# name -> Strategy class, built with keywords backbone, env, optimizer, scheduler, amp_dtype (and the options its
# `from_config` classmethod, if it has one, derives from the run's Config); see fr.train.run.build_strategy.
STRATEGIES = Registry("training strategy")
# arcface_torch's GradScaler setting: the fp16 loss scale may grow again after 100 overflow-free steps (torch: 2000).
GROWTH_INTERVAL = 100

OptimizerFactory = Callable[[Iterable[Dict[str, Any]]], torch.optim.Optimizer]  # param groups -> optimizer
SchedulerFactory = Callable[[torch.optim.Optimizer], Any]  # optimizer -> per-step LR scheduler


@STRATEGIES.register("ddp")
class DDPStrategy:
    """DistributedDataParallel over the backbone (plain module on one process), autocast to `amp_dtype`, and a
    GradScaler for fp16 (off otherwise). `module` is the plain backbone (evaluation, `model.pt`), `model` the
    wrapped one the forward goes through. Clipping covers the backbone's gradients only (as arcface_torch).

    fp16 as arcface_torch configures it: the GradScaler's growth interval is GROWTH_INTERVAL, and on CUDA with
    NCCL the gradients travel as fp16 (DDP's fp16_compress_hook: half the all-reduce traffic); gloo and the CPU
    keep fp32 all-reduces. A backbone without trainable parameters (frozen) is not wrapped: DDP refuses it.
    """

    def __init__(
        self,
        backbone: nn.Module,
        env: DistEnv,
        optimizer: OptimizerFactory,
        scheduler: SchedulerFactory,
        amp_dtype: Optional[torch.dtype] = None,
    ):
        self.env, self.amp_dtype = env, amp_dtype
        self.module = backbone
        params = [p for p in backbone.parameters() if p.requires_grad]
        self.trainable = bool(params)
        self.model = self.wrap(backbone)
        self.optimizer = optimizer([{"params": params}])
        self.scheduler = scheduler(self.optimizer)
        self.scaler = torch.amp.GradScaler(
            env.device.type, growth_interval=GROWTH_INTERVAL, enabled=amp_dtype == torch.float16
        )
        self._applied = False
        self.optimizer.register_step_post_hook(self._stepped)  # GradScaler.step runs the optimizer or not

    def wrap(self, model: nn.Module) -> nn.Module:
        if not self.env.is_distributed or not self.trainable:
            return model
        device_ids = [self.env.device.index] if self.env.device.type == "cuda" else None
        wrapped = nn.parallel.DistributedDataParallel(model, device_ids=device_ids)
        if self.compresses_gradients():
            from torch.distributed.algorithms.ddp_comm_hooks.default_hooks import fp16_compress_hook

            wrapped.register_comm_hook(None, fp16_compress_hook)
        return wrapped

    def compresses_gradients(self) -> bool:
        """Whether DDP all-reduces the gradients in fp16: fp16 autocast on CUDA over NCCL only."""
        return (
            self.amp_dtype == torch.float16
            and self.env.device.type == "cuda"
            and torch.distributed.is_initialized()
            and torch.distributed.get_backend() == "nccl"
        )

    def no_sync(self) -> ContextManager:
        """The context of a micro-batch that is not a step's last: DDP keeps its gradients local."""
        return self.model.no_sync() if isinstance(self.model, nn.parallel.DistributedDataParallel) else nullcontext()

    def autocast(self) -> ContextManager:
        if self.amp_dtype is None:
            return nullcontext()
        return torch.autocast(device_type=self.env.device.type, dtype=self.amp_dtype)

    def zero_grad(self) -> None:
        self.optimizer.zero_grad(set_to_none=True)

    def backward(self, loss: torch.Tensor) -> None:
        self.scaler.scale(loss).backward()

    def unscale_(self, optimizer: torch.optim.Optimizer) -> None:
        """Divide another optimizer's gradients (the head's) by the loss scale; a no-op without scaling."""
        self.scaler.unscale_(optimizer)

    def clip_grad_norm(self, max_norm: float) -> torch.Tensor:
        """Unscale, clip the backbone's gradients to `max_norm` (0: no clipping) and return their total norm
        before clipping, on the device (non-finite when the step must be skipped)."""
        self.scaler.unscale_(self.optimizer)
        if max_norm > 0:
            return torch.nn.utils.clip_grad_norm_(self.module.parameters(), max_norm)
        return torch.nn.utils.get_total_norm([p.grad for p in self.module.parameters() if p.grad is not None])

    def step(self) -> bool:
        """Apply the backbone's update and advance its LR schedule, unless the loss scaler found an overflow
        (fp16); returns whether the update was applied."""
        self._applied = False
        if not self.trainable:  # nothing to update; the head's unscale_ fed the loss scaler its overflow check
            if self.scaler.is_enabled():
                self.scaler.update()
            self.optimizer.step()  # over no parameters: keeps the LR schedule's step order
            self.scheduler.step()
            return True
        self.scaler.step(self.optimizer)
        self.scaler.update()
        if self._applied:
            self.scheduler.step()
        return self._applied

    def skip(self) -> None:
        """Drop this step's gradients without an update (the trainer found a non-finite value); the loss
        scaler backs off as for its own overflow."""
        if self.scaler.is_enabled():
            self.scaler.update()
        self.zero_grad()

    def _stepped(self, optimizer: torch.optim.Optimizer, args: Any, kwargs: Any) -> None:
        self._applied = True

    def lr(self) -> float:
        return self.scheduler.get_last_lr()[0]

    def export_backbone(self) -> Dict[str, torch.Tensor]:
        """A CPU copy of the plain backbone's state_dict: the content of `model.pt`."""
        return {k: v.detach().cpu() for k, v in self.module.state_dict().items()}

    def state_dict(self) -> Dict[str, Any]:
        return {
            "model": self.module.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict(),
        }

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        self.module.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.scaler.load_state_dict(state["scaler"])


def check_strategy(cfg: Any) -> None:
    """The configured strategy's own checks of the run's Config (a `check(cfg)` on its factory, if any), before
    any process-group work: e.g. the DeepSpeed JSON."""
    check = getattr(STRATEGIES.get(cfg.train.strategy), "check", None)
    if check is not None:
        check(cfg)


def build_strategy(cfg: Any, env: DistEnv, **parts: Any):
    """The configured strategy over `parts` (backbone, optimizer, scheduler, amp_dtype), with the options its
    factory derives from the Config (an `options(cfg, env)` on it, if any)."""
    factory = STRATEGIES.get(cfg.train.strategy)
    options = getattr(factory, "options", None)
    return factory(env=env, **parts, **(options(cfg, env) if options is not None else {}))
