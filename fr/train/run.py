"""Builds a training run from a Config (data, backbone, Partial FC head, optimizer, hooks) and runs it."""

from __future__ import annotations

import dataclasses
import logging
import os
import re
import time
from contextlib import contextmanager
from typing import Any, Dict, Iterator, List, Optional, Sequence

import torch
from torch import nn

from evaluation.errors import UserInputError
from evaluation.fileio import atomic_write_json, make_dirs
from fr.config import Config, ConfigError, save_config
from fr.data.loader import build_loader
from fr.distributed import DistEnv, barrier, init_distributed, on_main
from fr.fileio import OutputError, remove_stale_temporaries
from fr.heads import PartialFC, build_loss, build_sparse_optimizer
from fr.models.from_config import backbone_from_config
from fr.seeding import seed_everything
from fr.train.checkpoint import (
    CheckpointManager,
    discard_checkpoints,
    remove_stale_checkpoint_temporaries,
    run_settings,
)
from fr.train.head import Head
from fr.train.logging import LOG_FILE, MetricLogger, grad_scale_of, require_wandb, wandb_settings
from fr.train.model_file import atomic_save
from fr.train.optim import build_optimizer, build_scheduler
from fr.train.preemption import StopSignals
from fr.train.pretrained import load_pretrained
from fr.train.snapshots import ModelSnapshots
from fr.train.strategies import build_strategy, check_strategy
from fr.train.trainer import Trainer, TrainOptions
from fr.train.verification_hook import EvaluationFailed, VerificationHook

log = logging.getLogger("fr.train")

AMP_DTYPES = {"cuda": torch.float16, "cpu": torch.bfloat16}
OUTPUT_FILES = ("model.pt", "results.json", "config.json")  # written atomically into output.dir
# What marks output.dir as holding a run (checkpoints/ holds latest.json; a top-level one is checked too).
RUN_ARTEFACTS = OUTPUT_FILES + ("latest.json", "checkpoints", "tensorboard")
TENSORBOARD_EVENTS = "events.out.tfevents."


def amp_dtype_for(setting: str, device: torch.device) -> Optional[torch.dtype]:
    """`auto`: fp16 autocast on CUDA, none on CPU (bf16 on CPU is slower than fp32 without AMX); `on` forces it."""
    if setting == "off" or (setting == "auto" and device.type != "cuda"):
        return None
    return AMP_DTYPES.get(device.type, torch.bfloat16)


def build_model(cfg: Config) -> nn.Module:
    """The configured backbone: data.image_size, model.dropout and model.grad_checkpoint reach it
    (fr.models.from_config)."""
    return backbone_from_config(cfg)


def prepare_data(cfg: Config, env: DistEnv) -> None:
    """Generate the synthetic set on the main rank when configured; other ranks wait for it."""
    if cfg.data.synthetic:
        from fr.synth.dataset import ensure_synthetic

        on_main(env, lambda: ensure_synthetic(cfg.data.root, cfg.data.synth))  # a failure stops every rank


def run_artefacts(out_dir: str) -> List[str]:
    """The outputs of an fr run already in `out_dir`, in RUN_ARTEFACTS order."""
    if not os.path.isdir(out_dir):
        return []
    return [name for name in RUN_ARTEFACTS if os.path.lexists(os.path.join(out_dir, name))]


def check_output_dir(cfg: Config) -> List[str]:
    """Before anything is written: `output.dir` must be a directory fr can create and write, and a fresh run
    (no train.resume) over an earlier run needs output.overwrite=true. Returns the artefacts it will replace."""
    out_dir = cfg.output.dir
    existing = os.path.abspath(out_dir)
    while not os.path.exists(existing):  # the nearest existing ancestor is where the directory will be made
        existing = os.path.dirname(existing)
    if not os.path.isdir(existing):
        what = "is a file" if existing == os.path.abspath(out_dir) else f"is under a file ({existing})"
        raise OutputError(f"output.dir={out_dir} {what}; expected a directory")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise OutputError(f"output.dir={out_dir}: {existing} is not writable (permissions or a read-only file system)")
    found = run_artefacts(out_dir)
    if cfg.train.resume or not found:
        return []
    if not cfg.output.overwrite:
        raise ConfigError(
            f"output.dir={out_dir} already holds an fr run ({found[0]}); continue it with "
            f"train.resume=auto, or replace it with output.overwrite=true"
        )
    return found


@contextmanager
def output_errors(out_dir: str) -> Iterator[None]:
    """An OSError while writing the run's outputs becomes one line naming output.dir, the file and the reason."""
    try:
        yield
    except OSError as exc:
        path = exc.filename if exc.filename is not None else out_dir
        raise OutputError(f"output.dir={out_dir}: cannot write {path} ({exc.strerror or exc})") from exc


@contextmanager
def settings_of(section: str) -> Iterator[None]:
    """A component built from config section `section` rejects a value with ValueError: name the section."""
    try:
        yield
    except UserInputError:
        raise
    except ValueError as exc:
        raise ConfigError(f"{section}: {exc}") from exc


def replace_earlier_run(out_dir: str, found: List[str]) -> None:
    """output.overwrite=true: remove the earlier run's own outputs (never foreign files) before this run writes."""
    log.warning("output.overwrite=true: this fresh run replaces the earlier run's %s in %s", ", ".join(found), out_dir)
    for name in ("model.pt", "results.json"):  # config.json is rewritten below
        path = os.path.join(out_dir, name)
        if os.path.isfile(path):
            os.remove(path)
    tensorboard = os.path.join(out_dir, "tensorboard")
    if os.path.isdir(tensorboard):
        for name in os.listdir(tensorboard):
            path = os.path.join(tensorboard, name)
            if name.startswith(TENSORBOARD_EVENTS) and os.path.isfile(path):
                os.remove(path)
    discard_checkpoints(os.path.join(out_dir, "checkpoints"))


def start_outputs(cfg: Config, replacing: List[str]) -> None:
    """Main rank, once every check has passed: make output.dir, clear what a killed or replaced run left, and
    write config.json."""
    out_dir = cfg.output.dir
    with output_errors(out_dir):
        make_dirs(out_dir)
        if replacing:
            replace_earlier_run(out_dir, replacing)
        stale = remove_stale_temporaries(out_dir, "|".join(re.escape(name) for name in OUTPUT_FILES))
        stale += remove_stale_checkpoint_temporaries(os.path.join(out_dir, "checkpoints"))
        if stale:
            log.info("removed %d temporary file(s) a stopped run left: %s", len(stale), ", ".join(stale))
        # output.overwrite is this invocation's choice: `fr-train OUTPUT/config.json` must ask again.
        save_config(
            dataclasses.replace(cfg, output=dataclasses.replace(cfg.output, overwrite=False)),
            os.path.join(out_dir, "config.json"),
        )


def train(cfg: Config, env: Optional[DistEnv] = None, listeners: Sequence[Any] = ()) -> Dict[str, Any]:
    """Train as configured; the main rank writes model.pt, config.json, results.json and TensorBoard logs.
    `listeners` observe the training loop (fr.train.trainer.Trainer).

    Every check (output.dir, data, resume compatibility, evaluation sets) runs before anything is written.
    A failed evaluation still leaves model.pt and results.json, then raises EvaluationFailed.
    """
    cfg.validate()  # a Config built in Python, not by load_config, is checked before any process-group work
    check_strategy(cfg)  # e.g. the DeepSpeed JSON, also before any process-group work
    env = env or init_distributed(cfg.train.device)
    if cfg.train.threads:
        torch.set_num_threads(cfg.train.threads)
    out_dir = cfg.output.dir
    checkpoints = CheckpointManager(
        out_dir,
        env,
        resume=cfg.train.resume,
        every=cfg.output.checkpoint_every,
        keep=cfg.output.keep_checkpoints,
        enabled=cfg.output.save_state,
    )
    replacing = on_main(env, lambda: check_output_dir(cfg)) or []
    if cfg.output.wandb:
        on_main(env, require_wandb)
    prepare_data(cfg, env)
    seed_everything(cfg.train.seed, env.rank)

    loader = build_loader(cfg.data, env, seed=cfg.train.seed)
    num_classes = loader.dataset.num_classes
    resumed_step = checkpoints.prepare(run_settings(cfg, num_classes))
    hook = VerificationHook(cfg.eval.bins, cfg.data.root, env, cfg.eval.batch_size, cfg.data.image_size)
    on_main(env, hook.load)
    with settings_of("model"):
        backbone = build_model(cfg).to(env.device)
    if cfg.train.channels_last:
        backbone = backbone.to(memory_format=torch.channels_last)
    with settings_of("loss"):
        margin_loss = build_loss(cfg.loss.name, **cfg.loss.params)
    with settings_of("partial_fc"):
        head = PartialFC(
            margin_loss,
            cfg.model.embedding_size,
            num_classes,
            sample_rate=cfg.partial_fc.sample_rate,
            env=env,
            seed=cfg.partial_fc.seed,
            update=cfg.partial_fc.update,
            interclass_filtering_threshold=cfg.partial_fc.interclass_filtering_threshold,
        ).to(env.device)
    load_pretrained(cfg, backbone, head, env, resumed=resumed_step is not None)  # before any wrapping

    accumulation = cfg.optim.gradient_accumulation  # loader batches per optimizer step (one trainer step)
    steps_per_epoch = len(loader) // accumulation
    if steps_per_epoch < 1:
        raise ConfigError(
            f"optim.gradient_accumulation={accumulation} exceeds the {len(loader)} batches of an epoch "
            f"(data.batch_size={cfg.data.batch_size} x {env.world_size} ranks)"
        )
    total_steps = cfg.train.max_steps or cfg.train.epochs * steps_per_epoch
    warmup_steps = int(cfg.optim.warmup_epochs * steps_per_epoch)
    # The backbone's optimizer belongs to its strategy, the head's to the head (both on the same schedule);
    # sparse mode: the head's sampled rows are updated by the optimizer's own row-wise step.
    with settings_of("optim"):
        head_groups = [{"params": head.parameters()}]
        head_optimizer = (
            build_sparse_optimizer(head_groups, [head], cfg.optim)
            if head.update == "sparse"
            else build_optimizer(head_groups, cfg.optim)
        )
        schedule = lambda optimizer: build_scheduler(optimizer, cfg.optim, total_steps, warmup_steps)
        if cfg.train.freeze == "backbone":  # a head-only warm start: no gradients, BatchNorm statistics kept
            backbone.requires_grad_(False)
        strategy = build_strategy(
            cfg,
            env,
            backbone=backbone,
            optimizer=lambda groups: build_optimizer(groups, cfg.optim),
            scheduler=schedule,
            amp_dtype=amp_dtype_for(cfg.train.amp, env.device),
        )
        head_part = Head(head, head_optimizer, schedule(head_optimizer), frozen=cfg.train.freeze == "head")
    global_batch = cfg.data.batch_size * env.world_size * accumulation  # samples per optimizer step

    # Every check has passed: from here on the run writes into output.dir.
    on_main(env, lambda: start_outputs(cfg, replacing))
    # On resume, TensorBoard drops the events a crashed run logged after its last checkpoint.
    metrics = MetricLogger(
        os.path.join(out_dir, "tensorboard") if cfg.output.tensorboard else None,
        global_batch,
        total_steps,
        enabled=env.is_main,
        purge_step=resumed_step + 1 if resumed_step is not None else None,
        log_file=os.path.join(out_dir, LOG_FILE),  # a resumed run appends to it
        append=resumed_step is not None,
        grad_scale=grad_scale_of(strategy),
        wandb=wandb_settings(cfg),
    )
    evaluate = (lambda model, step: hook(model, step, metrics.scalars)) if hook else None
    log.info(
        "training %s on %d images, %d classes, %d rank(s), global batch %d, %d steps (%d per epoch)",
        cfg.model.backbone,
        len(loader.dataset),
        num_classes,
        env.world_size,
        global_batch,
        total_steps,
        steps_per_epoch,
    )

    options = TrainOptions(
        total_steps=total_steps,
        log_every=cfg.train.log_every,
        eval_every=cfg.eval.every,
        clip_grad_norm=cfg.optim.clip_grad_norm,
        exact_backbone_grad=cfg.train.exact_backbone_grad,
        channels_last=cfg.train.channels_last,
        max_nonfinite_steps=cfg.train.max_nonfinite_steps,
        gradient_accumulation=accumulation,
    )
    # model.pt during training too (output.model_every), so that fr-eval can evaluate the run before it ends
    listeners = [ModelSnapshots(os.path.join(out_dir, "model.pt"), cfg.output.model_every), *listeners]
    trainer = Trainer(
        strategy, head_part, loader, checkpoints, options, metrics=metrics, evaluate=evaluate, listeners=listeners
    )
    if resumed_step is None and evaluate and cfg.eval.at_start:
        trainer.eval_results[0] = evaluate(trainer.evaluation_model(), 0)
    start = time.perf_counter()
    try:
        with StopSignals() as stop:  # SIGTERM/SIGUSR1: finish the step, checkpoint, raise TrainingInterrupted
            trainer.stop_requested = stop.requested
            trainer.fit()
    finally:
        metrics.close()  # flush TensorBoard even when the run fails
        loader.close()  # its worker processes end with the training, not whenever the loader is collected
    train_seconds = time.perf_counter() - start

    results: Dict[str, Any] = {}
    if env.is_main:
        with output_errors(out_dir):
            results = write_results(out_dir, trainer, loader, num_classes, env, train_seconds, hook.errors)
    barrier(env)
    if results.get("verification_error"):
        raise EvaluationFailed(
            f"verification failed: {results['verification_error']}; model.pt and results.json "
            f"were written to {out_dir} (the traceback is in the log)",
            results,
        )
    return results


def write_results(
    out_dir: str, trainer: Trainer, loader, num_classes: int, env: DistEnv, train_seconds: float, eval_errors: List[str]
) -> Dict[str, Any]:
    """Write model.pt and results.json (main rank), with the first failed evaluation if any; returns the results."""
    state = trainer.state
    atomic_save(trainer.strategy.export_backbone(), os.path.join(out_dir, "model.pt"))
    final = trainer.eval_results.get(state.step, {})
    untrained = trainer.eval_results.get(0, {})
    results: Dict[str, Any] = {
        "steps": state.step,
        "epochs": state.epoch,
        "world_size": env.world_size,
        "num_images": len(loader.dataset),
        "num_classes": num_classes,
        "final_loss": state.last_loss,
        "skipped_steps": state.skipped_steps,
        "train_seconds": round(train_seconds, 2),
        "verification_untrained": untrained,
        "verification": final,
        "history": state.history,
        "checkpoint": os.path.join(out_dir, "model.pt"),
        # Floating-point sums follow the thread count and the CPU's instruction set: a figure is reproducible
        # bit for bit only where these match (docs/benchmarks.md, main job).
        "environment": {
            "torch": torch.__version__,
            "threads": torch.get_num_threads(),
            "cpu_capability": torch.backends.cpu.get_cpu_capability(),
            "device": str(env.device),
        },
    }
    if eval_errors:
        more = f" (and {len(eval_errors) - 1} more failure(s), see the log)" if len(eval_errors) > 1 else ""
        results["verification_error"] = eval_errors[0] + more
    atomic_write_json(os.path.join(out_dir, "results.json"), results)
    for name in final:
        before = untrained.get(name, {}).get("accuracy")
        log.info(
            "%s: accuracy untrained %s -> trained %.4f",
            name,
            f"{before:.4f}" if before is not None else "n/a",
            final[name]["accuracy"],
        )
    return results
