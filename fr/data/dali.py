"""DALI loader over insightface record files: fn.readers.mxnet sharded by rank, mixed GPU decode or CPU.

The user's `train.rec` is read in place through the checked image-only index of fr.data.image_index.
"""
from __future__ import annotations

import logging
import re
from functools import partial
from typing import Callable, Dict, Iterator, List, Optional, Sequence, Tuple

import numpy as np
import torch

from evaluation.preprocess import normalize, normalize_table
from fr.data.base import DataError, EpochPosition
from fr.data.image_index import (build_index, read_payloads, read_undecodable, record_undecodable, shard_entries,
                                 undecodable_path, write_shard_index)
from fr.data.layout import record_paths
from fr.distributed import DistEnv

log = logging.getLogger(__name__)

READER = "reader"
INITIAL_FILL = 16384  # shuffle buffer per rank: large, as the records of one identity are contiguous
CHECK_BATCH = 64  # images per DALI run when looking for the records DALI cannot decode


def _build_pipeline(rec_path: str, index_path: str, batch_size: int, shard_id: int, num_shards: int,
                    device_id: Optional[int], num_threads: int, seed: int, image_size: int,
                    augment: Sequence[str], checkpoint: Optional[str], initial_fill: int, resize: bool,
                    host_flip: bool, flip: bool):
    from nvidia.dali import fn, pipeline_def, types

    from fr.data.dali_augment import apply_augments

    gpu = device_id is not None

    @pipeline_def(enable_checkpointing=True)
    def pipeline():
        jpegs, labels = fn.readers.mxnet(path=[rec_path], index_path=[index_path], shard_id=shard_id,
                                         num_shards=num_shards, random_shuffle=True, initial_fill=initial_fill,
                                         stick_to_shard=True, pad_last_batch=True, name=READER)
        images = fn.decoders.image(jpegs, device="mixed" if gpu else "cpu", output_type=types.RGB)
        if resize:  # only when some image differs from data.image_size: even a no-op resize costs 3x
            images = fn.resize(images, resize_x=image_size, resize_y=image_size)
        images = apply_augments(images, augment)
        # uint8 HWC leaves the pipeline; the conversion to float [-1, 1] follows on the host or device
        # (_cpu_batch, _device_batch). On CPU, DALI's crop_mirror_normalize to float plus the copy out measured
        # 1.5x slower (docs/benchmarks.md).
        flips = fn.random.coin_flip(probability=0.5 if flip else 0.0, dtype=types.INT32)
        if host_flip:  # fn.flip costs ~30 CPU-us per image, OpenCV's flip of _cpu_batch's output ~4
            return images, labels, flips
        images = fn.flip(images, horizontal=flips)
        if gpu:
            labels = labels.gpu()
        return images, labels

    kwargs = {"checkpoint": checkpoint} if checkpoint else {}
    pipe = pipeline(batch_size=batch_size, num_threads=num_threads, device_id=device_id, seed=seed,
                    prefetch_queue_depth=2, **kwargs)
    pipe.build()
    return pipe


class DaliLoader(EpochPosition):
    """The DeviceLoader interface over a DALI pipeline: (float [-1,1] NCHW, int64 labels) on `env.device`.

    Every rank yields `len(self)` batches per epoch: `(N // world) // batch`, the smallest shard's full
    batches (shards differ by one image at most). The reader pads its shard to whole batches, so each epoch
    starts at a shard boundary; the batches past `len(self)` are read and dropped. `state_dict` holds the
    DALI reader checkpoint taken at the last epoch boundary plus the batches consumed since, so a resumed
    loader continues mid-epoch. Each image is mirrored by a fair coin unless `flip` is False.

    Corrupt images. DALI cannot skip a sample: an image its decoder rejects stops `pipe.run()` for good.
    Truncated or zero-filled JPEGs, empty or non-image payloads, formats DALI does not read and broken
    headers are left out when the index is built, by a structural check (fr.data.verify.check_images, ~14 us
    per 4 KB record, once). Decoding every image there instead would cost 120-160 us per image (12-15
    CPU-minutes for 5.8M) and still not speak for the GPU decoder. What passes the check yet stops DALI
    (1.6% of the DALI-rejected random corruptions measured, bad Huffman tables; PNGs with broken compressed
    data) is handled when it happens: DALI's own decoder tries every record of this rank's shard; the ones it
    rejects, and the sample its error names, are logged and counted; this rank's reader gets its shard minus
    them as a private index (the other ranks' shards do not move) and re-reads the epoch from its start
    checkpoint up to where it stopped, so every rank still yields `len(self)` batches. That costs a decode
    pass over the shard plus the re-read, once: the exclusions travel in `state_dict` and are listed beside
    the index, so later runs leave them out from the start. In that epoch this rank's order changes, so a few
    of its images may come twice or not at all.
    """

    def __init__(self, root: str, batch_size: int, env: DistEnv, seed: int = 0, num_threads: int = 2,
                 num_classes: int = 0, image_size: int = 112, augment: Sequence[str] = (), cache_dir: str = "",
                 initial_fill: int = INITIAL_FILL, flip: bool = True):
        rec_path, _ = record_paths(root)
        self.index = build_index(root, num_classes, cache_dir)
        self.dataset = _DatasetInfo(self.index.images, self.index.num_classes)
        self.device = env.device
        self.batch_size = batch_size
        self.rank, self.world = env.rank, env.world_size
        per_rank = self.index.images // env.world_size
        self.steps = per_rank // batch_size
        if self.steps < 1:
            raise DataError(f"data.batch_size={batch_size} is larger than this rank's share of the data set "
                             f"({per_rank} of {self.index.images} images over {env.world_size} ranks)")
        device_id = (self.device.index or 0) if self.device.type == "cuda" else None
        opencv = _opencv() if device_id is None else None  # looked up once: a failed import is not cached
        self._to_batch: Callable = _device_batch if device_id is not None else partial(_cpu_batch, opencv=opencv)
        # index_path, shard_id and num_shards are set by _start
        self._args = dict(rec_path=rec_path, batch_size=batch_size, device_id=device_id, num_threads=num_threads,
                          seed=seed + env.rank, image_size=image_size, augment=list(augment),
                          initial_fill=initial_fill, resize=set(self.index.sizes) != {(image_size, image_size)},
                          host_flip=opencv is not None, flip=flip)
        self.excluded = self._known_undecodable()  # keys of this rank's shard DALI cannot decode
        self._start(checkpoint=None)

    @classmethod
    def from_config(cls, cfg, env: DistEnv, seed: int) -> "DaliLoader":
        return cls(cfg.root, cfg.batch_size, env, seed=seed, num_threads=max(1, cfg.num_workers),
                   num_classes=cfg.num_classes, image_size=cfg.image_size, augment=cfg.augment,
                   cache_dir=cfg.cache_dir)

    @property
    def skipped(self) -> int:
        return self.index.skipped + len(self.excluded)

    def __len__(self) -> int:
        return self.steps

    def __iter__(self) -> Iterator[Tuple[torch.Tensor, torch.Tensor]]:
        if self.consumed == 0:
            self._epoch_checkpoint = self.pipe.checkpoint()
            self._runs = 0
        while self._runs < self._epoch_runs:
            outputs = self._read_to(self._runs + 1)
            if self._runs <= self.steps:
                self.consumed = self._runs
                yield self._to_batch(self.device, *outputs)
        self._end_epoch()  # DALI reshuffles on its own as it reads on: the epoch is bookkeeping for resume

    def state_dict(self) -> Dict[str, object]:
        # Between epochs the reader already stands at the next epoch's start: checkpoint that position,
        # not the finished epoch's start (which would replay the finished epoch).
        at_boundary = self.consumed == 0
        return {"epoch": self.epoch, "consumed": self.consumed, "excluded": list(self.excluded),
                "dali_checkpoint": self.pipe.checkpoint() if at_boundary else self._epoch_checkpoint}

    def load_state_dict(self, state: Dict[str, object]) -> None:
        """Rebuild the pipeline at the checkpointed epoch start and skip the batches already consumed."""
        self.excluded = [int(key) for key in state.get("excluded", [])]
        self._start(checkpoint=state["dali_checkpoint"])
        self.epoch = int(state["epoch"])
        self.consumed = int(state["consumed"])
        self._read_to(self.consumed)  # replaying a few batches is cheaper than per-batch checkpoints

    def _known_undecodable(self) -> List[int]:
        """The keys of this rank's shard that DALI failed to decode in an earlier run over the same index."""
        known = read_undecodable(self.index.path)
        if not known:
            return []
        mine = sorted({key for key, _ in shard_entries(self.index.path, self.rank, self.world)} & set(known))
        if mine:
            log.warning("rank %d: %d records skipped: DALI failed to decode them in an earlier run (listed in %s)",
                        self.rank, len(mine), undecodable_path(self.index.path))
        return mine

    def _start(self, checkpoint: Optional[str]) -> None:
        """(Re)build the pipeline over this rank's records, minus `excluded`, at `checkpoint` (an epoch start)."""
        if self.excluded:
            path, _ = write_shard_index(self.index.path, self.rank, self.world, self.excluded)
            self._args.update(index_path=path, shard_id=0, num_shards=1)
        else:
            self._args.update(index_path=self.index.path, shard_id=self.rank, num_shards=self.world)
        self.pipe = _build_pipeline(checkpoint=checkpoint, **self._args)
        self._epoch_checkpoint = checkpoint or self.pipe.checkpoint()
        self._runs = 0  # pipeline runs in the current epoch, the dropped ones past len(self) included
        shard = self.pipe.reader_meta(READER)["epoch_size_padded"] // self._args["num_shards"]
        self._epoch_runs = -(-shard // self.batch_size)  # the last batch padded
        if self._epoch_runs < self.steps:
            raise DataError(f"{self._args['rec_path']}: rank {self.rank} has too few decodable images left for "
                            f"{self.steps} batches of {self.batch_size} per epoch ({len(self.excluded)} records "
                            f"excluded); run `fr-data verify` on the data")

    def _read_to(self, runs: int):
        """Run the pipeline until `runs` batches of this epoch are read; the last one's outputs (or None)."""
        outputs = None
        while self._runs < runs:
            try:
                outputs = self.pipe.run()
            except RuntimeError as error:
                self._exclude_undecodable(error)  # restarts the epoch: `_runs` is 0 again
                continue
            self._runs += 1
        return outputs

    def _exclude_undecodable(self, error: RuntimeError) -> None:
        rec_path = self._args["rec_path"]
        if self.excluded:  # the reader already uses this rank's private index, read as one shard
            entries = shard_entries(self._args["index_path"], 0, 1)
        else:
            entries = shard_entries(self.index.path, self.rank, self.world)
        found = set(undecodable_records(rec_path, entries, self._args["device_id"], self._args["num_threads"]))
        # DALI's verdict on a few corrupt images changes from run to run: also take the sample its error names.
        named = {int(offset) for offset in re.findall(r" at index (\d+)", str(error))}
        found.update(key for key, offset in entries if offset in named)
        if not found:
            raise DataError(f"{rec_path}: the DALI pipeline of rank {self.rank} failed ({_reason(error)}), but "
                            f"no record of its shard fails to decode on its own") from error
        for key in sorted(found):
            log.warning("skipping record %d of %s: DALI cannot decode its image", key, rec_path)
        decoder = "cpu" if self._args["device_id"] is None else "mixed"
        record_undecodable(self.index.path, {key: f"DALI's {decoder} decoder failed on it (rank {self.rank} of "
                                                  f"{self.world})" for key in found})
        self.excluded.extend(sorted(found))
        log.warning("rank %d: skipped %d records DALI cannot decode; re-reading epoch %d up to batch %d without them",
                    self.rank, len(found), self.epoch, self._runs + 1)
        self._start(checkpoint=self._epoch_checkpoint)


def _reason(error: RuntimeError) -> str:
    """The line of a DALI error that says what went wrong (its message also holds a traceback)."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    after = [line for before, line in zip(lines, lines[1:]) if before.startswith("encountered")]
    return (after or lines or [repr(error)])[0]


def undecodable_records(rec_path: str, entries: Sequence[Tuple[int, int]], device_id: Optional[int],
                        num_threads: int) -> List[int]:
    """Keys among (key, offset) `entries` whose image DALI's decoder rejects, found by DALI itself.

    Images are decoded CHECK_BATCH at a time; a batch that fails is split in halves until the failing
    records are alone (a failed DALI pipeline cannot run again, so each failure rebuilds it).
    """
    found: List[int] = []
    chunk: List[Tuple[int, bytes]] = []
    pipe = None
    for item in read_payloads(rec_path, entries):
        chunk.append(item)
        if len(chunk) == CHECK_BATCH:
            pipe = _check_chunk(chunk, pipe, found, device_id, num_threads)
            chunk = []
    if chunk:
        _check_chunk(chunk, pipe, found, device_id, num_threads)
    return sorted(found)


def _check_chunk(chunk, pipe, found: List[int], device_id, num_threads):
    pending = [chunk]
    while pending:
        part = pending.pop()
        pipe = pipe or _decoder_pipeline(device_id, num_threads)
        try:
            pipe.feed_input("encoded", [np.frombuffer(payload, np.uint8) for _, payload in part])
            pipe.run()
            continue
        except RuntimeError:
            pipe = None
        if len(part) == 1:
            found.append(part[0][0])
        else:
            pending += [part[len(part) // 2:], part[:len(part) // 2]]
    return pipe


def _decoder_pipeline(device_id: Optional[int], num_threads: int):
    from nvidia.dali import fn, pipeline_def, types

    @pipeline_def(batch_size=CHECK_BATCH, num_threads=num_threads, device_id=device_id, exec_async=False,
                  exec_pipelined=False, prefetch_queue_depth=1)
    def pipeline():
        encoded = fn.external_source(name="encoded", dtype=types.UINT8, ndim=1)
        return fn.decoders.image(encoded, device="cpu" if device_id is None else "mixed", output_type=types.RGB)

    pipe = pipeline()
    pipe.build()
    return pipe


class _DatasetInfo:
    """What the trainer reads from `loader.dataset`: its length and class count."""

    def __init__(self, images: int, num_classes: int):
        self.images, self.num_classes = images, num_classes

    def __len__(self) -> int:
        return self.images


def _opencv():
    """The cv2 module, or None. With OpenCV (any build) the CPU outputs are converted and flipped by it."""
    try:
        import cv2
    except ImportError:
        return None
    return cv2


def _cpu_batch(device: torch.device, images, labels, flips=None, *,
               opencv=None) -> Tuple[torch.Tensor, torch.Tensor]:
    """DALI CPU outputs as (float [-1, 1] NCHW in channels_last memory, int64 labels), converted on the host.

    Not by torch: its elementwise kernels wake OpenMP threads that spin on the cores DALI's decoding threads
    need (on 2 cores: ~135 CPU-us per 112x112 image inside the running loader). OpenCV (`opencv`, the cv2
    module) maps the pixels through evaluation.preprocess's table of normalised values (what `normalize` looks
    up, so bit for bit the same) in one pass, and mirrors the images whose coin in `flips` came up; without it
    numpy looks the pixels up in the same table and the pipeline has flipped. The pixels are read in place and
    written to a new array, so nothing yielded aliases memory DALI reuses. Whole loader, 2 cores: ~210 CPU-us per
    image with OpenCV (docs/benchmarks.md); numpy's lookup (np.take) is the slower fallback.
    """
    pixels = np.asarray(images.as_tensor())
    table = normalize_table()
    if opencv is None:
        out = np.empty(pixels.shape, np.float32)
        np.take(table, pixels, out=out)
    else:
        rows = pixels.reshape(-1, pixels.shape[-2] * pixels.shape[-1])  # cv2.LUT takes 2-D arrays
        out = opencv.LUT(rows, table).reshape(pixels.shape)
        if flips is not None:
            for i in np.flatnonzero(np.asarray(flips.as_tensor()).reshape(-1)):
                opencv.flip(out[i], 1, dst=out[i])
    classes = np.asarray(labels.as_tensor()).reshape(len(pixels), -1)[:, 0]  # multi-label: the first
    return torch.from_numpy(out).permute(0, 3, 1, 2), torch.from_numpy(classes.astype(np.int64))


def _device_batch(device: torch.device, images, labels) -> Tuple[torch.Tensor, torch.Tensor]:
    """DALI outputs copied to `device` and converted there by `normalize` (a table lookup: the host path's bits):
    (float [-1, 1] NCHW in channels_last memory, int64 labels). Used for GPU pipelines; CPU outputs work too,
    which is how the tests run it."""
    pixels = normalize(_torch_copy(images, device)).permute(0, 3, 1, 2)
    classes = _torch_copy(labels, device)
    return pixels, classes.reshape(classes.shape[0], -1)[:, 0].long()


def _torch_copy(batch, device: torch.device) -> torch.Tensor:
    """A DALI TensorList copied into a new torch tensor on `device` (on the current CUDA stream for a GPU)."""
    from nvidia.dali.plugin.pytorch import feed_ndarray, to_torch_type

    tensor = batch.as_tensor()
    out = torch.empty(tensor.shape(), dtype=to_torch_type[tensor.dtype], device=device)
    stream = torch.cuda.current_stream(device) if device.type == "cuda" else None
    feed_ndarray(tensor, out, cuda_stream=stream)
    return out
