"""Partial FC: the class-sharded, optionally sampled, normalised classifier that turns embeddings into a loss."""

from __future__ import annotations

from typing import Any, Dict, List, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from fr.distributed import DistEnv, all_gather_no_grad, all_gather_with_grad, all_reduce, env_from_group
from fr.heads.cosine import cosine_logits
from fr.heads.fused import fused_margin_softmax_ce
from fr.heads.margins import MarginContext, MarginLoss
from fr.heads.objectives import get_objective
from fr.seeding import mix_seed

# Stream tags keep the weight-init and sampling generators apart for the same (seed, rank).
_INIT_STREAM = 1
_SAMPLE_STREAM = 2
UPDATE_MODES = ("dense", "sparse")


class _HostCopy:
    """A small device tensor copied to the host without waiting: `tolist()` waits for that copy alone (on the
    CPU the tensor is read as it is)."""

    def __init__(self, tensor: torch.Tensor):
        self.done: Optional[torch.Event] = None
        if tensor.device.type == "cpu":
            self.host = tensor
            return
        self.host = torch.empty(tensor.shape, dtype=tensor.dtype, pin_memory=True)
        self.host.copy_(tensor, non_blocking=True)
        self.done = torch.Event(device=tensor.device)
        self.done.record()

    def tolist(self) -> list:
        if self.done is not None:
            self.done.synchronize()
        return self.host.numpy().tolist()  # host memory: nothing to wait for


def shard_range(num_classes: int, world_size: int, rank: int) -> Tuple[int, int]:
    """(class_start, num_local) of `rank`: contiguous shards; the first num_classes % world_size ranks get one extra."""
    base, extra = divmod(num_classes, world_size)
    return rank * base + min(rank, extra), base + (1 if rank < extra else 0)


class PartialFC(nn.Module):
    """Normalised linear classifier whose classes are split across ranks, with optional negative-class sampling.

    Rank r owns classes [class_start, class_start + num_local) (see `shard_range`) as `weight`
    [num_local, embedding_size], drawn from N(0, 0.01) by a generator seeded with (seed, rank).
    `forward(local_embeddings [b, D], local_labels [b]) -> loss` gathers embeddings (with grad) and labels
    from all ranks, so every rank must pass the same b each step (drop the last incomplete batch); this,
    and labels in [0, num_classes), is checked with one small collective. Cosine logits against the local
    shard go through `margin_loss` (a MarginLoss) in fp32 and then its `reduce` (softmax CE by default), whose
    loss is the mean over the global batch and identical on every rank. Margin losses declaring
    `fused_margin` (ArcFace, CosFace, CombinedMargin), in fp32 without inter-class filtering, take
    `fused_margin_softmax_ce` instead: the same maths in fewer passes over the [B, k] logits, whose backward
    can run only once per forward.

    With sample_rate < 1, in training mode, each step keeps every local class that is a target in the
    global batch plus uniformly drawn other local classes, int(sample_rate * num_local) in all (more if the
    positives alone exceed that); the draw is seeded by (seed, rank, step) and the step counter is saved in
    the state dict. Only the sampled rows take part, so only they receive gradient. `last_sampled` holds the
    sorted local indices the last forward used (all of them when not sampling).

    update="dense": in training, gradients reach `weight` as a dense [num_local, D] `.grad` (zero for unsampled
    rows, which an ordinary optimizer still decays and moves with momentum, as arcface_torch does).
    update="sparse": `weight` gets no `.grad`; each training forward makes the sampled rows a separate
    [k, D] leaf and records it, and `SparseRowSGD.step` updates only those rows and their momentum.

    interclass_filtering_threshold > 0 (softmax-type losses only), as insightface's option: a non-target
    cosine above the threshold (the sample is that close to another class centre, likely a label clash) is
    replaced by 0 before the margin, without gradient.
    """

    def __init__(
        self,
        margin_loss: nn.Module,
        embedding_size: int,
        num_classes: int,
        sample_rate: float = 1.0,
        env: Optional[DistEnv] = None,
        seed: int = 0,
        update: str = "dense",
        interclass_filtering_threshold: float = 0.0,
    ) -> None:
        super().__init__()
        env = env if env is not None else env_from_group()
        if not isinstance(margin_loss, MarginLoss):
            raise TypeError(f"margin_loss must be a fr.heads.MarginLoss, got {type(margin_loss).__name__}")
        if embedding_size < 1:
            raise ValueError(f"embedding_size must be positive, got {embedding_size}")
        if num_classes < env.world_size:
            raise ValueError(
                f"num_classes ({num_classes}) must be at least the world size ({env.world_size}) "
                "so that every rank owns a class"
            )
        if not 0.0 < sample_rate <= 1.0:
            raise ValueError(f"sample_rate must be in (0, 1], got {sample_rate}")
        if update not in UPDATE_MODES:
            raise ValueError(f"update must be one of {', '.join(UPDATE_MODES)}, got {update!r}")
        threshold = float(interclass_filtering_threshold)
        if not 0.0 <= threshold < 1.0:
            raise ValueError(f"interclass_filtering_threshold must be in [0, 1) (0 disables), got {threshold}")
        get_objective(margin_loss.objective)  # an unknown objective fails here rather than at the first step
        if threshold and margin_loss.objective != "softmax_ce":
            raise ValueError(
                f"interclass_filtering_threshold needs a softmax-type loss, got objective {margin_loss.objective!r}"
            )
        self.margin_loss = margin_loss
        self.update = update
        self.interclass_filtering_threshold = threshold
        self._sparse_pending: List[Tuple[torch.Tensor, torch.Tensor]] = []
        self._pending_check: Optional[_HostCopy] = None
        self._checked_once = False
        self._spare_rows: Optional[torch.Tensor] = None
        self.env = env
        self.embedding_size = int(embedding_size)
        self.num_classes = int(num_classes)
        self.sample_rate = float(sample_rate)
        self.seed = int(seed)
        self.class_start, self.num_local = shard_range(self.num_classes, env.world_size, env.rank)
        self.num_sample = int(self.sample_rate * self.num_local)
        self.sample_step = 0
        self.last_sampled: Optional[torch.Tensor] = None
        init = torch.Generator().manual_seed(mix_seed(self.seed, env.rank, _INIT_STREAM))
        weight = torch.empty(self.num_local, self.embedding_size).normal_(0.0, 0.01, generator=init)
        self.weight = nn.Parameter(weight.to(env.device))

    def forward(self, local_embeddings: torch.Tensor, local_labels: torch.Tensor) -> torch.Tensor:
        if local_embeddings.dim() != 2 or local_embeddings.shape[1] != self.embedding_size:
            raise ValueError(
                f"expected embeddings of shape [batch, {self.embedding_size}], got {tuple(local_embeddings.shape)}"
            )
        local_labels = local_labels.reshape(-1).long()
        if local_labels.shape[0] != local_embeddings.shape[0]:
            raise ValueError(f"got {local_embeddings.shape[0]} embeddings but {local_labels.shape[0]} labels")
        self._check_batch(local_labels)

        labels = all_gather_no_grad(local_labels, self.env)
        embeddings = all_gather_with_grad(local_embeddings, self.env)
        local_target = labels - self.class_start
        local_target = torch.where((local_target >= 0) & (local_target < self.num_local), local_target, -1)

        sampling = self.training and self.num_sample < self.num_local
        if sampling:
            index, local_target = self._sample(local_target)
        else:
            index = torch.arange(self.num_local, device=self.weight.device)
        self.last_sampled = index
        weight = self._rows(index, sampling)

        if self._fusable(embeddings, weight):
            margin = self.margin_loss
            return fused_margin_softmax_ce(
                F.normalize(embeddings), weight, local_target, lambda cos: margin.target_logit(cos), margin.s, self.env
            )
        norms = embeddings.float().norm(dim=1)
        # fp32 out of a matmul that may run in half precision under autocast: margins and reductions want fp32.
        cos = cosine_logits(F.normalize(embeddings), weight)
        if self.interclass_filtering_threshold:
            cos = self._filter(cos, local_target)
        ctx = MarginContext(env=self.env, norms=norms)
        if self.margin_loss.needs_target_cos:
            ctx.target_cos = self._global_target_cos(cos, local_target)
        logits = self.margin_loss(cos, local_target, ctx)
        return self.margin_loss.reduce(logits, local_target, ctx)

    def _fusable(self, embeddings: torch.Tensor, weight: torch.Tensor) -> bool:
        """Whether this step can take the fused fp32 margin + softmax CE path (same maths, fewer [B, k] passes)."""
        return (
            self.margin_loss.fused_margin
            and not self.interclass_filtering_threshold
            and weight.shape[0] > 0
            and weight.dtype == torch.float32
            and embeddings.dtype == torch.float32
            and not torch.is_autocast_enabled(weight.device.type)
        )

    def _rows(self, index: torch.Tensor, sampling: bool) -> torch.Tensor:
        """The class centres taking part this step (see the class docstring for the two update modes)."""
        if self.update == "sparse" and self.training and torch.is_grad_enabled():
            # Once the optimizer has consumed the last step's rows, their storage is reused: a fresh [k, D]
            # buffer each step costs as much in page faults as the gather itself.
            spare = self._spare_rows if not self._sparse_pending else None
            self._spare_rows = None
            if (
                spare is not None
                and spare.shape == (index.shape[0], self.weight.shape[1])
                and spare.dtype == self.weight.dtype
                and spare.device == self.weight.device
            ):
                rows = torch.index_select(self.weight.detach(), 0, index, out=spare).detach()
            else:
                rows = self.weight.detach().index_select(0, index)
            rows.requires_grad_(True)
            self._spare_rows = rows.detach()
            self._sparse_pending.append((index, rows))
            return rows
        return self.weight.index_select(0, index) if sampling else self.weight

    def take_sparse_grads(self, with_rows: bool = False) -> Optional[tuple]:
        """(row indices, their summed gradient) since the last call, for `SparseRowSGD`; None if no gradient.

        with_rows=True adds the rows' values as of the forward (None after several forwards), which saves
        the optimizer a [k, D] gather; they equal `weight[index]` unless the weight changed since, and are
        the caller's to overwrite but only until the next training forward, which reuses their storage.
        """
        pending = [(i, r.grad, r.detach()) for i, r in self._sparse_pending if r.grad is not None]
        self._sparse_pending = []
        if not pending:
            return None
        if len(pending) == 1:
            return pending[0] if with_rows else pending[0][:2]
        index, inverse = torch.unique(torch.cat([i for i, _, _ in pending]), return_inverse=True)
        grads = torch.cat([g for _, g, _ in pending])
        summed = grads.new_zeros(len(index), grads.shape[1]).index_add_(0, inverse, grads)
        return (index, summed, None) if with_rows else (index, summed)

    def _filter(self, cos: torch.Tensor, local_target: torch.Tensor) -> torch.Tensor:
        """Zero (without gradient) the non-target cosines above the inter-class filtering threshold."""
        dirty = cos.detach() > self.interclass_filtering_threshold
        if cos.shape[1]:
            owned = (local_target != -1).unsqueeze(1)
            is_target = torch.zeros_like(dirty).scatter_(1, local_target.clamp(min=0).unsqueeze(1), owned)
            dirty &= ~is_target
        return cos.masked_fill(dirty, 0.0)

    def _global_target_cos(self, cos: torch.Tensor, local_target: torch.Tensor) -> torch.Tensor:
        """[B] detached target cosines, identical on every rank: the owner contributes, the others add 0."""
        owned = local_target != -1
        if cos.shape[1]:
            target = cos.detach().gather(1, local_target.clamp(min=0).unsqueeze(1)).squeeze(1)
            target = torch.where(owned, target, target.new_zeros(()))
        else:
            target = cos.new_zeros(cos.shape[0])
        return all_reduce(target.contiguous(), self.env, op="sum")

    def _check_batch(self, local_labels: torch.Tensor) -> None:
        """Raise, on every rank alike, unless all ranks pass the same non-zero batch with labels in range.

        The ranks agree with one small max-reduction whose result is copied to the host without waiting for it:
        the first forward's is read at once (a misconfigured launch stops before its all-gather), each later
        one's at the next forward or `check_last_batch()`, when it is long complete, so checking costs no host
        synchronisation per step. A later mismatch is then reported one step late, on every rank."""
        self.check_last_batch()
        b = local_labels.shape[0]

        def value(number: int) -> torch.Tensor:  # filled on the device: no host-to-device copy to wait for
            return torch.full((), number, dtype=torch.long, device=local_labels.device)

        # Negated entries let one max-reduction also yield the minima.
        extremes = [local_labels.max(), -local_labels.min()] if b else [value(-1), value(0)]
        stats = torch.stack([value(b), value(-b), *extremes])
        self._pending_check = _HostCopy(all_reduce(stats, self.env, op="max"))
        if not self._checked_once:
            self._checked_once = True
            self.check_last_batch()

    def check_last_batch(self) -> None:
        """Raise (on every rank alike) if the last forward's batch broke the rules of `_check_batch`."""
        pending, self._pending_check = self._pending_check, None
        if pending is None:
            return
        max_b, neg_min_b, hi, neg_lo = pending.tolist()
        if max_b != -neg_min_b:
            raise ValueError(
                f"every rank must pass the same number of embeddings per step, got between "
                f"{-neg_min_b} and {max_b} (drop the last incomplete batch)"
            )
        if max_b == 0:
            raise ValueError("got an empty batch")
        if -neg_lo < 0 or hi >= self.num_classes:
            raise ValueError(f"labels must lie in [0, num_classes={self.num_classes}), got [{-neg_lo}, {hi}]")

    def _sample(self, local_target: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """Sorted local class indices to use this step, and the targets remapped into them (-1 stays -1)."""
        device = local_target.device
        generator = torch.Generator(device=device)
        generator.manual_seed(mix_seed(self.seed, self.env.rank, _SAMPLE_STREAM, self.sample_step))
        self.sample_step += 1
        scores = torch.rand(self.num_local, generator=generator, device=device)
        # Uniform draws lie in [0, 1), so a score of 2 puts every positive class ahead of all negatives.
        scores[local_target[local_target >= 0]] = 2.0
        num_keep = max(self.num_sample, int((scores == 2.0).sum()))
        index = scores.topk(num_keep).indices.sort().values
        remap = torch.full((self.num_local,), -1, dtype=torch.long, device=device)
        remap[index] = torch.arange(num_keep, device=device)
        return index, torch.where(local_target >= 0, remap[local_target.clamp(min=0)], -1)

    def get_extra_state(self) -> Dict[str, Any]:
        return {"sample_step": self.sample_step}

    def set_extra_state(self, state: Dict[str, Any]) -> None:
        self.sample_step = int(state["sample_step"])

    def extra_repr(self) -> str:
        return (
            f"embedding_size={self.embedding_size}, num_classes={self.num_classes}, "
            f"classes=[{self.class_start}, {self.class_start + self.num_local}) on rank "
            f"{self.env.rank}/{self.env.world_size}, sample_rate={self.sample_rate}, seed={self.seed}, "
            f"update={self.update}, interclass_filtering_threshold={self.interclass_filtering_threshold}"
        )
