"""Builds a training run from a Config (data, backbone, Partial FC head, optimizer, hooks) and runs it."""
from __future__ import annotations

import logging
import os
import random
import time
from typing import Any, Dict, Optional

import numpy as np
import torch
from torch import nn

from fr.config import Config, save_config
from fr.data.loader import build_loader
from fr.distributed import DistEnv, barrier, init_distributed
from fr.fileio import atomic_write_json
from fr.heads import PartialFC, build_loss, build_sparse_optimizer
from fr.models import build_backbone
from fr.train.checkpoint import atomic_save, backbone_state_dict
from fr.train.resume import Checkpointer, load_rank_state, resolve_resume, run_settings
from fr.train.logging import MetricLogger
from fr.train.optim import build_optimizer, build_scheduler
from fr.train.preemption import StopSignals
from fr.train.trainer import Trainer
from fr.train.verification_hook import VerificationHook

log = logging.getLogger("fr.train")

AMP_DTYPES = {"cuda": torch.float16, "cpu": torch.bfloat16}


def amp_dtype_for(setting: str, device: torch.device) -> Optional[torch.dtype]:
    """`auto`: fp16 autocast on CUDA, none on CPU (bf16 on CPU is slower than fp32 without AMX); `on` forces it."""
    if setting == "off" or (setting == "auto" and device.type != "cuda"):
        return None
    return AMP_DTYPES.get(device.type, torch.bfloat16)


def build_model(cfg: Config) -> nn.Module:
    """The configured backbone; `model.dropout` is passed only when set, since not every backbone has one."""
    kwargs: Dict[str, Any] = dict(cfg.model.kwargs)
    kwargs["num_features"] = cfg.model.embedding_size
    if cfg.model.dropout:
        kwargs["dropout"] = cfg.model.dropout
    return build_backbone(cfg.model.backbone, **kwargs)


def seed_everything(seed: int, rank: int) -> None:
    # Same backbone initialisation on every rank (DDP also broadcasts it); per-rank data randomness.
    torch.manual_seed(seed)
    random.seed(seed + rank)
    np.random.seed((seed + rank) % 2**32)


def prepare_data(cfg: Config, env: DistEnv) -> None:
    """Generate the synthetic set on the main rank when configured; other ranks wait for it."""
    if cfg.data.synthetic:
        if env.is_main:
            from fr.data.synthesize import ensure_synthetic

            ensure_synthetic(cfg.data.root, cfg.data.synth)
        barrier(env)


def train(cfg: Config, env: Optional[DistEnv] = None) -> Dict[str, Any]:
    """Train as configured; the main rank writes model.pt, config.json, results.json and TensorBoard logs."""
    env = env or init_distributed(cfg.train.device)
    if cfg.train.threads:
        torch.set_num_threads(cfg.train.threads)
    out_dir = cfg.output.dir
    if env.is_main:
        os.makedirs(out_dir, exist_ok=True)
        save_config(cfg, os.path.join(out_dir, "config.json"))
    prepare_data(cfg, env)
    seed_everything(cfg.train.seed, env.rank)

    loader = build_loader(cfg.data, env, seed=cfg.train.seed)
    num_classes = loader.dataset.num_classes
    backbone = build_model(cfg).to(env.device)
    if cfg.train.channels_last:
        backbone = backbone.to(memory_format=torch.channels_last)
    plain_backbone = backbone
    if env.is_distributed:
        device_ids = [env.device.index] if env.device.type == "cuda" else None
        backbone = nn.parallel.DistributedDataParallel(backbone, device_ids=device_ids)
    head = PartialFC(build_loss(cfg.loss.name, **cfg.loss.params), cfg.model.embedding_size, num_classes,
                     sample_rate=cfg.partial_fc.sample_rate, env=env, seed=cfg.partial_fc.seed,
                     update=cfg.partial_fc.update,
                     interclass_filtering_threshold=cfg.partial_fc.interclass_filtering_threshold).to(env.device)

    steps_per_epoch = len(loader)
    total_steps = cfg.train.max_steps or cfg.train.epochs * steps_per_epoch
    warmup_steps = int(cfg.optim.warmup_epochs * steps_per_epoch)
    groups = [{"params": plain_backbone.parameters()}, {"params": head.parameters()}]
    # Sparse mode: the head's sampled rows are updated by the optimizer's own row-wise step.
    optimizer = (build_sparse_optimizer(groups, [head], cfg.optim) if head.update == "sparse"
                 else build_optimizer(groups, cfg.optim))
    scheduler = build_scheduler(optimizer, cfg.optim, total_steps, warmup_steps)
    global_batch = cfg.data.batch_size * env.world_size
    settings = run_settings(cfg, num_classes)
    resume_dir = resolve_resume(cfg.train.resume, out_dir)
    saved = load_rank_state(resume_dir, env, settings) if resume_dir else None
    resumed_step = int(saved["trainer"]["step"]) if saved else 0
    # On resume, TensorBoard drops the events a crashed run logged after its last checkpoint.
    metrics = MetricLogger(os.path.join(out_dir, "tensorboard") if cfg.output.tensorboard else None,
                           global_batch, total_steps, enabled=env.is_main,
                           purge_step=resumed_step + 1 if saved else None)
    hook = VerificationHook(cfg.eval.bins, cfg.data.root, env, cfg.eval.batch_size, cfg.data.image_size)
    evaluate = (lambda model, step: hook(model, step, metrics.scalars)) if hook else None
    log.info("training %s on %d images, %d classes, %d rank(s), global batch %d, %d steps (%d per epoch)",
             cfg.model.backbone, len(loader.dataset), num_classes, env.world_size, global_batch,
             total_steps, steps_per_epoch)

    checkpointer = (Checkpointer(os.path.join(out_dir, "checkpoints"), env, settings, cfg.output.keep_checkpoints)
                    if cfg.output.save_state else None)
    trainer = Trainer(backbone, plain_backbone, head, loader, optimizer, scheduler, env, total_steps, metrics,
                      log_every=cfg.train.log_every, clip_grad_norm=cfg.optim.clip_grad_norm,
                      amp_dtype=amp_dtype_for(cfg.train.amp, env.device), evaluate=evaluate,
                      eval_every=cfg.eval.every, exact_backbone_grad=cfg.train.exact_backbone_grad,
                      channels_last=cfg.train.channels_last,
                      save_checkpoint=checkpointer.save if checkpointer else None,
                      checkpoint_every=cfg.output.checkpoint_every)
    if saved:
        trainer.load_state_dict(saved)
        del saved  # the loaded copy is no longer needed (the head shard can be gigabytes)
        log.info("resumed from %s at step %d (epoch %d)", resume_dir, trainer.state.step, trainer.state.epoch)
    elif evaluate and cfg.eval.at_start:
        trainer.eval_results[0] = evaluate(plain_backbone, 0)
    start = time.perf_counter()
    try:
        with StopSignals() as stop:  # SIGTERM/SIGUSR1: finish the step, checkpoint, raise TrainingInterrupted
            trainer.stop_requested = stop.requested
            state = trainer.fit()
    finally:
        metrics.close()  # flush TensorBoard even when the run fails
    train_seconds = time.perf_counter() - start

    results: Dict[str, Any] = {}
    if env.is_main:
        atomic_save(backbone_state_dict(plain_backbone), os.path.join(out_dir, "model.pt"))
        final = trainer.eval_results.get(state.step, {})
        untrained = trainer.eval_results.get(0, {})
        results = {
            "steps": state.step, "epochs": state.epoch, "world_size": env.world_size,
            "num_images": len(loader.dataset), "num_classes": num_classes,
            "final_loss": state.last_loss, "train_seconds": round(train_seconds, 2),
            "verification_untrained": untrained, "verification": final,
            "history": state.history, "checkpoint": os.path.join(out_dir, "model.pt"),
        }
        atomic_write_json(os.path.join(out_dir, "results.json"), results)
        for name in final:
            before = untrained.get(name, {}).get("accuracy")
            log.info("%s: accuracy untrained %s -> trained %.4f", name,
                     f"{before:.4f}" if before is not None else "n/a", final[name]["accuracy"])
    barrier(env)
    return results
