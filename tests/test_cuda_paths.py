"""The CUDA paths, each beside its CPU twin: the Partial FC head against a float64 dense reference in fp32 and
under bf16/fp16 autocast, trainer steps with AMP (fp16 + GradScaler, bf16) and channels_last, a resumed run, a
2-process run (NCCL on 2 GPUs, gloo on the CPU) and the ONNX export of a trained model.

Every check is one function parametrised over devices: the `cuda` parameters carry the `cuda` mark and run only
where CUDA is present (`pytest -m cuda`, as benchmarks/gpu_check.sh does); elsewhere they are skipped and the CPU
twin runs in the suite, so the check itself is exercised on every machine. Measured errors are attached to each
test with `record_property` (the GPU check reads them from pytest's JUnit XML).

Tolerances (the largest error the check accepts; why):
- head, fp32: loss within 1e-5 relative, gradients within 1e-4 in relative L2 norm (fp32 rounding only);
- head, bf16 autocast: loss 3e-2 relative, gradients 1e-1 relative L2 (the [B, D] x [D, k] product runs with
  8-bit mantissas; the cosines, scaled by s = 64, then carry about 2^-9 of relative error);
- head, fp16 autocast: loss 5e-3 relative, gradients 2e-2 relative L2 (11-bit mantissas);
- AMP trainer step: the first step's loss within 5e-2 relative of the model in float64 on the CPU;
- resume: bit-exact with deterministic cuDNN; if not, the resumed run may differ from the uninterrupted one by at
  most 4x what two uninterrupted runs differ by (the device's own non-determinism), and that is recorded;
- ONNX: the exporter's own check (1e-4 on L2-normalised embeddings, CPU) and 1e-3 against the model on its
  training device (fp32 without TF32: cuDNN's and onnxruntime's convolutions sum in other orders).
"""

from __future__ import annotations

import copy
import json
import math
import os
import tempfile
from datetime import timedelta

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F

from fr.config import OptimConfig
from fr.distributed import DistEnv, cleanup, env_from_group
from fr.heads import PartialFC, build_loss
from fr.heads.margins import LOSSES
from fr.models import build_backbone
from fr.train.head import Head
from fr.train.optim import build_optimizer, build_scheduler
from fr.train.strategies import STRATEGIES
from fr.train.trainer import Trainer, TrainOptions
from tests.helpers.distributed import free_port
from tests.test_heads_losses import EMB_SCALE, LOSS_CASES, dense_reference

CUDA = torch.cuda.is_available()
DEVICES = [
    pytest.param("cpu", id="cpu"),
    pytest.param("cuda", id="cuda", marks=[pytest.mark.cuda, pytest.mark.skipif(not CUDA, reason="no CUDA device")]),
]
PRECISIONS = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}
# precision -> (loss relative tolerance, gradient relative L2 tolerance); see the module docstring.
HEAD_TOLERANCE = {"fp32": (1e-5, 1e-4), "bf16": (3e-2, 1e-1), "fp16": (5e-3, 2e-2)}
AMP_LOSS_RTOL = 5e-2
RESUME_NOISE_FACTOR = 4.0
ONNX_DEVICE_ATOL = 1e-3

# Head problem: one process, embedding size D, batch B, C classes; every class kept, then 30% sampled.
D, B, C = 64, 24, 48
# case id -> (loss name, loss params, PartialFC keywords, the reference's case in tests.test_heads_losses)
HEAD_CASES = {case: (*LOSS_CASES[case], case) for case in LOSS_CASES}
HEAD_CASES["arcface"] = ("arcface", {}, {}, "arcface_sparse")  # dense update: the fused fp32 path

# Trainer problem: a slim iResNet-18 (as configs/synthetic.py), ArcFace over a small class count; the CPU twins
# take small batches and few steps (autocast convolutions are slow on CPUs without AMX).
EMB, CLASSES = 64, 40
BATCH = {"cpu": 4, "cuda": 16}


def _device(name: str) -> torch.device:
    return torch.device("cuda", torch.cuda.current_device()) if name == "cuda" else torch.device(name)


def _strict_fp32():
    """Turn TF32 off (cuDNN allows it by default) so that fp32 on CUDA means fp32; returns the old flags."""
    old = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    return old


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """One intra-op thread: these problems are tiny, and on a busy CPU (the test suite's parallel jobs) OpenMP's
    spinning threads make a CPU step tens of times slower."""
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


@pytest.fixture()
def strict_fp32():
    old = _strict_fp32()
    yield
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = old


def relative_l2(got: torch.Tensor, want: torch.Tensor) -> float:
    return ((got.double() - want.double()).norm() / want.double().norm().clamp_min(1e-30)).item()


# ------------------------------------------------------------------------------------------------------ head


def run_head_on(device: torch.device, case: str, sample_rate: float, amp_dtype) -> dict:
    """One forward/backward of a PartialFC on `device` (weights drawn on the CPU, as PartialFC does, so every
    device starts from the same bits), under autocast to `amp_dtype` (None: fp32)."""
    name, params, head_kw, _ = HEAD_CASES[case]
    gen = torch.Generator().manual_seed(7)
    emb_cpu = torch.randn(B, D, generator=gen) * EMB_SCALE
    labels = torch.randint(0, C, (B,), generator=gen)
    head = PartialFC(build_loss(name, **params), D, C, sample_rate=sample_rate, env=DistEnv(device=device), **head_kw)
    head = head.to(device)
    weight = head.weight.detach().cpu().clone()
    emb = emb_cpu.to(device, copy=True).requires_grad_(True)
    with torch.autocast(device.type, dtype=amp_dtype or torch.float32, enabled=amp_dtype is not None):
        loss = head(emb, labels.to(device))
    loss.backward()
    if head.update == "sparse":
        index, rows = head.take_sparse_grads()
        weight_grad = torch.zeros_like(weight).index_copy_(0, index.cpu(), rows.float().cpu())
    else:
        weight_grad = head.weight.grad.float().cpu()
    margins = getattr(head.margin_loss, "last_margins", None)
    return {
        "loss": loss.item(),
        "emb": emb_cpu,
        "labels": labels,
        "weight": weight,
        "emb_grad": emb.grad.float().cpu(),
        "weight_grad": weight_grad,
        "sampled": head.last_sampled.cpu(),
        "margins": margins.cpu() if margins is not None else None,
    }


def head_errors(run: dict, reference_case: str) -> tuple:
    """(loss relative error, embedding-gradient relative L2, weight-gradient relative L2) of one run against the
    dense float64 reference over the classes it kept."""
    kept = run["sampled"]
    remap = torch.full((C,), -1, dtype=torch.long)
    remap[kept] = torch.arange(len(kept))
    assert (remap[run["labels"]] >= 0).all(), "a positive class was not sampled"
    ref_loss, ref_emb_grad, ref_kept_grad = dense_reference(
        reference_case, run["emb"], run["weight"][kept], remap[run["labels"]], run
    )
    ref_w_grad = torch.zeros(C, D, dtype=torch.float64)
    ref_w_grad[kept] = ref_kept_grad
    loss_err = abs(run["loss"] - ref_loss) / max(abs(ref_loss), 1e-12)
    return loss_err, relative_l2(run["emb_grad"], ref_emb_grad), relative_l2(run["weight_grad"], ref_w_grad)


def test_every_registered_loss_has_a_head_case():
    assert {name for name, *_ in HEAD_CASES.values()} == set(LOSSES.names())


@pytest.mark.parametrize("precision", list(PRECISIONS))
@pytest.mark.parametrize("device", DEVICES)
def test_partial_fc_matches_the_float64_dense_reference(device, precision, strict_fp32, record_property):
    if device == "cpu" and precision == "fp16" and not _cpu_fp16_autocast():
        pytest.skip("this torch build has no fp16 autocast on the CPU")
    loss_tol, grad_tol = HEAD_TOLERANCE[precision]
    worst = [0.0, 0.0, 0.0]
    failures = []
    for case in HEAD_CASES:
        for rate in (1.0, 0.3):
            run = run_head_on(_device(device), case, rate, PRECISIONS[precision])
            errors = head_errors(run, HEAD_CASES[case][3])
            worst = [max(w, e) for w, e in zip(worst, errors)]
            if errors[0] > loss_tol or errors[1] > grad_tol or errors[2] > grad_tol:
                failures.append(f"{case} rate={rate}: loss {errors[0]:.2e}, grads {errors[1]:.2e}/{errors[2]:.2e}")
    for key, value in zip(("loss_rel_err", "emb_grad_rel_l2", "weight_grad_rel_l2"), worst):
        record_property(f"worst_{key}", f"{value:.3e}")
    assert not failures, f"{precision} on {device} (tolerance loss {loss_tol}, grads {grad_tol}): " + "; ".join(
        failures
    )


def _cpu_fp16_autocast() -> bool:
    try:
        with torch.autocast("cpu", dtype=torch.float16):
            return torch.ones(2, 2).mm(torch.ones(2, 2)).dtype == torch.float16
    except RuntimeError:
        return False


# --------------------------------------------------------------------------------------------------- trainer


class Batches:
    """The loader interface the Trainer reads (`len`, `set_epoch`, iteration) over fixed batches."""

    def __init__(self, batches):
        self.batches = batches

    def __len__(self) -> int:
        return len(self.batches)

    def set_epoch(self, epoch: int) -> None:
        pass

    def __iter__(self):
        return iter(self.batches)


def make_batch(seed: int, device: torch.device, batch: int):
    gen = torch.Generator().manual_seed(seed)
    images = torch.rand(batch, 3, 112, 112, generator=gen) * 2 - 1
    labels = torch.randint(0, CLASSES, (batch,), generator=gen)
    return images.to(device), labels.to(device)


def build_trainer(env: DistEnv, amp_dtype, steps: int, batches=(), lr: float = 0.1) -> Trainer:
    """fr's Trainer as fr.train.run composes it: DDP strategy (plain module on one process), Head, channels_last."""
    torch.manual_seed(0)
    backbone = build_backbone("iresnet18", num_features=EMB, width=16, stem_stride=2).to(env.device)
    backbone = backbone.to(memory_format=torch.channels_last)
    head_module = PartialFC(build_loss("arcface"), EMB, CLASSES, env=env).to(env.device)
    optim = OptimConfig(lr=lr)
    schedule = lambda optimizer: build_scheduler(optimizer, optim, steps, 0)
    strategy = STRATEGIES.build(
        "ddp",
        backbone=backbone,
        env=env,
        optimizer=lambda groups: build_optimizer(groups, optim),
        scheduler=schedule,
        amp_dtype=amp_dtype,
    )
    head_optimizer = build_optimizer([{"params": head_module.parameters()}], optim)
    head = Head(head_module, head_optimizer, schedule(head_optimizer))
    options = TrainOptions(total_steps=steps, log_every=1, clip_grad_norm=optim.clip_grad_norm, channels_last=True)
    return Trainer(strategy, head, Batches(list(batches)), None, options)


def float64_loss(trainer: Trainer, images: torch.Tensor, labels: torch.Tensor) -> float:
    """The training-mode loss of the trainer's current backbone and head, in float64 on the CPU."""
    backbone = copy.deepcopy(trainer.strategy.module).cpu().double().train()
    head = copy.deepcopy(trainer.head.module)
    head.env = DistEnv()
    head = head.cpu().double().train()
    with torch.no_grad():
        return head(backbone(images.cpu().double()), labels.cpu()).item()


@pytest.mark.parametrize("amp", ["fp16", "bf16"])
@pytest.mark.parametrize("device", DEVICES)
def test_trainer_steps_with_amp_and_channels_last(device, amp, strict_fp32, record_property):
    if device == "cpu" and amp == "fp16":
        pytest.skip("fp16 convolutions on the CPU take minutes per step; the bf16 twin covers the CPU")
    dev, amp_dtype = _device(device), PRECISIONS[amp]
    wanted, limit = (2, 3) if device == "cpu" else (4, 24)  # applied steps wanted, steps at most
    images, labels = make_batch(1, dev, BATCH[device])
    trainer = build_trainer(DistEnv(device=dev), amp_dtype, limit)
    reference = float64_loss(trainer, images, labels)
    strategy = trainer.strategy
    assert strategy.scaler.is_enabled() == (amp == "fp16")  # GradScaler for fp16 only
    with strategy.autocast():
        assert strategy.model(images.contiguous(memory_format=torch.channels_last)).dtype == amp_dtype
    applied, scales = [], [strategy.scaler.get_scale() if amp == "fp16" else 1.0]
    while len(applied) < wanted and trainer.state.step < limit:  # one batch, learnt over and over
        loss = trainer.train_step(images, labels)
        trainer.state.step += 1
        if loss is not None:
            applied.append(loss.item())
        elif amp == "fp16":  # a skipped fp16 step is the loss scaler's overflow: it must back off
            scales.append(strategy.scaler.get_scale())
            assert scales[-1] < scales[-2], f"step skipped without the scale backing off: {scales}"
        else:
            raise AssertionError(f"{amp} step {trainer.state.step} skipped")
    record_property("applied_steps", len(applied))
    record_property("skipped_steps", trainer.state.skipped_steps)
    record_property("losses", " ".join(f"{v:.4f}" for v in applied))
    record_property("float64_first_loss", f"{reference:.5f}")
    assert len(applied) == wanted, f"only {len(applied)} of {limit} steps applied"
    if trainer.state.skipped_steps == 0:  # the first applied step saw the initial weights
        assert abs(applied[0] - reference) <= AMP_LOSS_RTOL * abs(reference), (applied[0], reference)
    assert applied[-1] < applied[0], f"loss did not fall: {applied}"
    for module in (strategy.module, trainer.head.module):
        assert all(torch.isfinite(p).all() for p in module.parameters())
    conv = next(m for m in strategy.module.modules() if isinstance(m, torch.nn.Conv2d))
    assert conv.weight.is_contiguous(memory_format=torch.channels_last)


# ---------------------------------------------------------------------------------------------------- resume


class _Crash(RuntimeError):
    pass


def _crash_after(monkeypatch, steps: int) -> None:
    original, calls = Trainer.train_step, {"n": 0}

    def step(self, images, labels):
        calls["n"] += 1
        if calls["n"] > steps:
            raise _Crash(f"simulated crash before step {calls['n']}")
        return original(self, images, labels)

    monkeypatch.setattr(Trainer, "train_step", step)


def _final_state(out_dir: str) -> dict:
    from fr.train.checkpoint import POINTER, rank_file

    with open(os.path.join(out_dir, "checkpoints", POINTER)) as fh:
        pointer = json.load(fh)
    return torch.load(os.path.join(out_dir, "checkpoints", pointer["dir"], rank_file(0)), weights_only=True)


def _max_difference(a_dir: str, b_dir: str) -> float:
    """The largest absolute difference between two runs' final backbone, head shard and momenta."""
    a, b = _final_state(a_dir), _final_state(b_dir)
    assert a["trainer"]["step"] == b["trainer"]["step"]
    worst = 0.0
    for part, module in (("strategy", "model"), ("head", "module")):
        tensors = [(a[part][module][k], b[part][module][k]) for k in a[part][module]]
        tensors += [
            (x["momentum_buffer"], y["momentum_buffer"])
            for x, y in zip(a[part]["optimizer"]["state"].values(), b[part]["optimizer"]["state"].values())
        ]
        for x, y in tensors:
            if isinstance(x, torch.Tensor) and x.is_floating_point():
                worst = max(worst, (x.double() - y.double()).abs().max().item())
    return worst


@pytest.mark.parametrize("device", DEVICES)
def test_a_resumed_run_continues_the_uninterrupted_one(device, tiny_run, tmp_path, monkeypatch, record_property):
    from fr.train.run import train

    old = torch.backends.cudnn.deterministic
    torch.backends.cudnn.deterministic = True  # cuDNN's default backward algorithms may add in any order
    try:

        def config(out_dir, **extra):
            values = {
                "train.device": device,
                # fp16 + GradScaler on CUDA (the scaler's state is checkpointed); the CPU twin in fp32 (fast)
                "train.amp": "on" if device == "cuda" else "off",
                # the CPU twin: 4 steps of 4 images (checkpoints at 2 and 4, a crash before step 4, resumed at 2)
                "train.max_steps": 6 if device == "cuda" else 4,
                "data.batch_size": 16 if device == "cuda" else 4,
                "train.log_every": 1,
                "eval.every": 0,
                "eval.at_start": "false",
                "output.tensorboard": "false",
                "output.checkpoint_every": 2,
                "partial_fc.sample_rate": 0.5,
            }
            values.update(extra)
            return tiny_run.config(str(out_dir), **values)

        straight = tmp_path / "straight"
        train(config(straight))
        crashed = tmp_path / "crashed"
        _crash_after(monkeypatch, 3)  # the last checkpoint is step 2
        with pytest.raises(_Crash):
            train(config(crashed))
        monkeypatch.undo()
        assert train(config(crashed, **{"train.resume": "auto"}))["steps"] == (6 if device == "cuda" else 4)
        difference = _max_difference(str(straight), str(crashed))
        record_property("resume_max_abs_diff", f"{difference:.3e}")
        if difference == 0.0:
            return
        again = tmp_path / "again"
        train(config(again))
        noise = _max_difference(str(straight), str(again))
        record_property("rerun_max_abs_diff", f"{noise:.3e}")
        assert noise > 0.0, f"uninterrupted runs are bit-identical but the resumed one differs by {difference:.3e}"
        assert difference <= RESUME_NOISE_FACTOR * noise
    finally:
        torch.backends.cudnn.deterministic = old


# ------------------------------------------------------------------------------------------------ 2 processes


def _two_rank_worker(rank: int, world_size: int, port: int, backend: str, out_dir: str) -> None:
    torch.set_num_threads(1)
    device = torch.device("cuda", rank) if backend == "nccl" else torch.device("cpu")
    if device.type == "cuda":
        torch.cuda.set_device(device)
        _strict_fp32()
    dist.init_process_group(
        backend, init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world_size, timeout=timedelta(seconds=120)
    )
    env = env_from_group()
    env = DistEnv(rank=env.rank, world_size=env.world_size, local_rank=rank, device=device)
    trainer = build_trainer(env, None, 2)
    images, labels = make_batch(100 + rank, device, 2 if device.type == "cpu" else 8)
    start = {
        "backbone": copy.deepcopy(trainer.strategy.module).cpu(),
        "shard": trainer.head.module.weight.detach().cpu().clone(),
    }
    losses = [trainer.train_step(images, labels) for _ in range(2)]
    result = {
        **start,
        "images": images.cpu(),
        "labels": labels.cpu(),
        "losses": [loss.item() for loss in losses],
        "final": {k: v.cpu() for k, v in trainer.strategy.module.state_dict().items()},
    }
    cleanup()
    torch.save(result, os.path.join(out_dir, f"rank{rank}.pt"))


def _global_first_loss(results) -> float:
    """The first step's loss recomputed in float64 on one process: each rank's embeddings of its own batch (its
    BatchNorm statistics are its own), gathered, against the concatenated class shards (ArcFace, s=64, m=0.5)."""
    embeddings = []
    for r in results:
        backbone = r["backbone"].double().train()
        with torch.no_grad():
            embeddings.append(backbone(r["images"].double()))
    emb = F.normalize(torch.cat(embeddings))
    weight = F.normalize(torch.cat([r["shard"] for r in results]).double())
    labels = torch.cat([r["labels"] for r in results])
    cos = emb @ weight.t()
    cos_y = cos.gather(1, labels[:, None]).clamp(-1 + 1e-7, 1 - 1e-7)
    theta = torch.acos(cos_y)
    target = torch.where(theta + 0.5 <= math.pi, torch.cos(theta + 0.5), cos_y - (1 - math.cos(0.5)))
    logits = 64.0 * cos.scatter(1, labels[:, None], target)
    return F.cross_entropy(logits, labels).item()


@pytest.mark.parametrize(
    "backend",
    [
        pytest.param("gloo", id="gloo-cpu"),
        pytest.param(
            "nccl",
            id="nccl-cuda",
            marks=[
                pytest.mark.cuda,
                pytest.mark.skipif(
                    not CUDA or torch.cuda.device_count() < 2,
                    reason="the 2-process NCCL run needs 2 CUDA GPUs; this machine has "
                    f"{torch.cuda.device_count() if CUDA else 0}",
                ),
            ],
        ),
    ],
)
def test_two_process_training_agrees_with_one_process_reference(backend, record_property):
    world_size = 2
    # gloo ranks are forked (no fresh interpreter importing torch and fr: seconds on a small CPU); NCCL ranks are
    # spawned, as CUDA cannot be used in a child forked after the parent initialised it.
    start_method = "fork" if backend == "gloo" else "spawn"
    with tempfile.TemporaryDirectory(prefix="fr_two_rank_") as out_dir:
        args = (world_size, free_port(), backend, out_dir)
        mp.start_processes(_two_rank_worker, args=args, nprocs=world_size, join=True, start_method=start_method)
        results = [torch.load(os.path.join(out_dir, f"rank{r}.pt"), weights_only=False) for r in range(world_size)]
    assert results[0]["losses"] == results[1]["losses"]  # the loss is the global batch's, on every rank
    for key, value in results[0]["final"].items():  # DDP keeps the backbones identical
        if value.is_floating_point() and "running" not in key:
            assert torch.equal(value, results[1]["final"][key]), key
    reference = _global_first_loss(results)
    record_property("first_loss", f"{results[0]['losses'][0]:.6f}")
    record_property("float64_first_loss", f"{reference:.6f}")
    assert results[0]["losses"][0] == pytest.approx(reference, rel=1e-4)


# ------------------------------------------------------------------------------------------------------ ONNX


@pytest.mark.parametrize("device", DEVICES)
def test_onnx_export_of_a_trained_model_passes_parity(device, strict_fp32, tmp_path, record_property):
    try:
        from fr.export.onnx import export_onnx
    except ImportError as exc:
        pytest.skip(f"fr.export.onnx.export_onnx is not available yet ({exc})")
    ort = pytest.importorskip("onnxruntime")
    dev = _device(device)
    images, labels = make_batch(3, dev, BATCH[device])
    steps = 1 if device == "cpu" else 3
    trainer = build_trainer(DistEnv(device=dev), torch.bfloat16 if device == "cuda" else None, steps)
    for _ in range(steps):
        assert trainer.train_step(images, labels) is not None
    trained = trainer.strategy.module.eval()
    path = tmp_path / "model.onnx"
    report = export_onnx(copy.deepcopy(trained).cpu(), str(path), opset=17, image_size=112)
    record_property("export_max_abs_diff", f"{report['max_abs_diff']:.3e}")
    assert report["max_abs_diff"] <= 1e-4
    batch = make_batch(4, torch.device("cpu"), 4)[0]
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (onnx_out,) = session.run(None, {session.get_inputs()[0].name: batch.numpy()})
    with torch.no_grad():
        on_device = trained(batch.to(dev).contiguous(memory_format=torch.channels_last)).float().cpu()
    difference = (F.normalize(torch.from_numpy(onnx_out)) - F.normalize(on_device)).abs().max().item()
    record_property("onnx_vs_device_max_abs_diff", f"{difference:.3e}")
    assert difference <= ONNX_DEVICE_ATOL
