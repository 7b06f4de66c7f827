"""DALI loader over insightface record files: each rank's part of the epoch's global order (fr.data.base), read
here and fed to the pipeline through an external source; mixed GPU decode, or a CPU pipeline.

The user's `train.rec` is read in place at the offsets of the checked image-only index of fr.data.image_index.
"""

from __future__ import annotations

import logging
import re
from functools import partial
from typing import Callable, Dict, Iterator, List, Optional, Sequence, Set, Tuple

import numpy as np
import torch

from evaluation.preprocess import normalize, normalize_table
from fr.data.base import MAX_REPLACEMENTS, DataError, EpochPosition, epoch_order, flip_coin, rank_batches, sample_seed
from fr.data.headers import label_of
from fr.data.image_index import add_skipped, build_index, read_index_entries, read_payloads, read_skipped, skipped_path
from fr.data.layout import record_paths
from fr.data.recordio import MXRecordIO, unpack
from fr.distributed import DistEnv

log = logging.getLogger(__name__)

CHECK_BATCH = 64  # images per DALI run when looking for the records DALI cannot decode
KEEP_FED = 8  # batches whose records the feed remembers: more than the pipeline holds before returning one


def _build_pipeline(
    feed: "_Feed",
    batch_size: int,
    device_id: Optional[int],
    num_threads: int,
    seed: int,
    image_size: int,
    augment: Sequence[str],
    checkpoint: Optional[bytes],
    resize: bool,
    host_flip: bool,
):
    from nvidia.dali import fn, pipeline_def, types

    from fr.data.dali_augment import apply_augments

    gpu = device_id is not None

    @pipeline_def(enable_checkpointing=True)  # the augmentations' random state; the feed keeps the position
    def pipeline():
        jpegs, labels, flips = fn.external_source(
            source=feed, num_outputs=3, batch=True, batch_info=True, dtype=[types.UINT8, types.INT64, types.INT32]
        )
        images = fn.decoders.image(jpegs, device="mixed" if gpu else "cpu", output_type=types.RGB)
        if resize:  # only when some image differs from data.image_size: even a no-op resize is costly
            images = fn.resize(images, resize_x=image_size, resize_y=image_size)
        images = apply_augments(images, augment)
        # uint8 HWC leaves the pipeline; the conversion to float [-1, 1] follows on the host or device
        # (_cpu_batch, _device_batch). On CPU, DALI's crop_mirror_normalize to float plus the copy out was slower
        # (docs/benchmarks.md).
        if host_flip:  # OpenCV's flip of _cpu_batch's output costs a fraction of fn.flip (docs/benchmarks.md)
            return images, labels, flips
        images = fn.flip(images, horizontal=flips)
        if gpu:
            labels = labels.gpu()
        return images, labels

    kwargs = {"checkpoint": checkpoint} if checkpoint else {}
    pipe = pipeline(
        batch_size=batch_size, num_threads=num_threads, device_id=device_id, seed=seed, prefetch_queue_depth=2, **kwargs
    )
    pipe.build()
    return pipe


class _Feed:
    """The pipeline's external source: this rank's part of each global batch of the epoch's order, batch after
    batch from (`epoch`, `batch`) on, as (encoded images, labels, flip coins); StopIteration after an epoch's
    last batch, then the next epoch. DALI calls it once per batch, in order (its own counters are not used).

    A sample's coin is the torch loader's (`flip_coin` of its `sample_seed`). A record in `skip` is replaced
    by the next record in the index's order that is not, with the sample's own coin: the torch loader's rule.
    `fed` remembers the records of the last batches handed to DALI, for the search after a failure.
    """

    def __init__(
        self,
        rec_path: str,
        keys: np.ndarray,
        offsets: np.ndarray,
        *,
        seed: int,
        batch_size: int,
        world: int,
        rank: int,
        flip: bool,
        skip: Set[int],
        epoch: int,
        batch: int,
    ):
        self.reader = MXRecordIO(rec_path, "r")
        self.keys, self.offsets, self.skip = keys, offsets, skip
        self.seed, self.batch_size, self.world, self.rank, self.flip = seed, batch_size, world, rank, flip
        self.steps = len(keys) // (batch_size * world)
        self.epoch, self.batch = epoch, batch  # the next batch to hand out
        self.fed: Dict[Tuple[int, int], List[Tuple[int, int]]] = {}  # (epoch, batch) -> [(key, offset)]
        self._order: Tuple[int, Optional[np.ndarray]] = (-1, None)  # (epoch, this rank's batches of it)

    def __call__(self, batch_info) -> Tuple[List[np.ndarray], np.ndarray, np.ndarray]:
        if self.batch >= self.steps:
            self.epoch, self.batch = self.epoch + 1, 0
            raise StopIteration
        if self._order[0] != self.epoch:
            order = epoch_order(len(self.keys), self.seed, self.epoch)
            self._order = (self.epoch, rank_batches(order, self.batch_size, self.world, self.rank))
        payloads, labels, coins, entries = [], [], [], []
        for index in self._order[1][self.batch].tolist():
            record = self._replacement(index)
            key, offset = int(self.keys[record]), int(self.offsets[record])
            self.reader.handle.seek(offset)
            header, payload = unpack(self.reader.read())
            payloads.append(np.frombuffer(payload, np.uint8))
            labels.append(int(label_of(header)))  # checked when the index was built
            coins.append(self.flip and flip_coin(sample_seed(self.seed, self.epoch, index)))
            entries.append((key, offset))
        self.fed[(self.epoch, self.batch)] = entries
        if len(self.fed) > KEEP_FED:
            del self.fed[next(iter(self.fed))]
        self.batch += 1
        return payloads, np.array(labels, np.int64), np.array(coins, np.int32)

    def _replacement(self, index: int) -> int:
        if not self.skip:
            return index
        for attempt in range(MAX_REPLACEMENTS + 1):
            record = (index + attempt) % len(self.keys)
            if int(self.keys[record]) not in self.skip:
                return record
        raise DataError(
            f"{self.reader.uri}: {MAX_REPLACEMENTS + 1} consecutive records from key "
            f"{int(self.keys[index])} cannot be decoded by DALI; run `fr-data verify` on the data"
        )

    def close(self) -> None:
        self.reader.close()


class DaliLoader(EpochPosition):
    """The DeviceLoader interface over a DALI pipeline: (float [-1,1] NCHW, int64 labels) on `env.device`.

    The samples are the torch loader's: this rank's part of each global batch of the epoch's order
    (fr.data.base), read here from the record file and fed to the pipeline (`_Feed`), with the torch loader's
    flip coins; every rank yields `len(self)` batches per epoch. Only `data.augment`'s draws are DALI's own
    (random operators seeded by `seed + rank`). `state_dict` holds the position (`EpochPosition.position`), the
    skipped keys and the pipeline's checkpoint (the augmentations' random state). A resumed loader continues at
    the saved sample; the checkpoint is restored when it was taken with the same world size and batch (so a
    resumed run draws exactly the augmentations it would have), else the pipeline starts afresh there: the
    samples and flips are the same, the augmentations' draws are not.

    Corrupt images. DALI cannot skip a sample: an image its decoder rejects stops `pipe.run()` for good. Truncated
    or zero-filled JPEGs, empty or non-image payloads, formats DALI does not read and broken headers are skipped
    when the index is built, by a structural check (fr.data.verify.check_record_images, once; far cheaper than
    decoding every image, which would still not speak for the GPU decoder; figures in docs/benchmarks.md). What
    passes the check yet stops DALI (a few of the DALI-rejected random corruptions measured, bad Huffman tables;
    PNGs with broken compressed data) is handled when it happens: DALI's own decoder tries the records of the
    batches handed to the pipeline and not yet returned; the ones it rejects, and the sample its error names,
    are logged, counted and from then on replaced like the records skipped by the torch loader (`_Feed`); the
    pipeline is rebuilt at the failed batch. With `data.augment` it is rebuilt at the epoch's start (or where it
    was last built) from its checkpoint there and runs up to the failed batch again, so the augmentations' draws
    stay those of a run without the failure. The skipped keys travel in `state_dict` and are listed beside the
    index, so later runs skip them from the start.
    """

    def __init__(
        self,
        root: str,
        batch_size: int,
        env: DistEnv,
        seed: int = 0,
        num_threads: int = 2,
        num_classes: int = 0,
        image_size: int = 112,
        augment: Sequence[str] = (),
        cache_dir: str = "",
        flip: bool = True,
    ):
        self.rec_path, _ = record_paths(root)
        self.index = build_index(root, num_classes, cache_dir)
        self.keys, self.offsets = read_index_entries(self.index.path)
        self.dataset = _DatasetInfo(self.index.images, self.index.num_classes)
        self.device = env.device
        self.batch_size, self.world, self.rank, self.seed, self.flip = batch_size, env.world_size, env.rank, seed, flip
        self.steps = self.index.images // self.global_batch
        if self.steps < 1:
            raise DataError(
                f"data.batch_size={batch_size} on {env.world_size} ranks is a global batch of "
                f"{self.global_batch} images, more than the data set holds ({self.index.images})"
            )
        device_id = (self.device.index or 0) if self.device.type == "cuda" else None
        opencv = _opencv() if device_id is None else None  # looked up once: a failed import is not cached
        self._to_batch: Callable = _device_batch if device_id is not None else partial(_cpu_batch, opencv=opencv)
        self._args = dict(
            batch_size=batch_size,
            device_id=device_id,
            num_threads=num_threads,
            seed=seed + env.rank,
            image_size=image_size,
            augment=list(augment),
            resize=set(self.index.sizes) != {(image_size, image_size)},
            host_flip=opencv is not None,
        )
        self.skipped_keys = self._known_skipped()  # keys DALI cannot decode
        self.feed: Optional[_Feed] = None
        self._start(checkpoint=None)

    @classmethod
    def from_config(cls, cfg, env: DistEnv, seed: int) -> "DaliLoader":
        return cls(
            cfg.root,
            cfg.batch_size,
            env,
            seed=seed,
            num_threads=max(1, cfg.num_workers),
            num_classes=cfg.num_classes,
            image_size=cfg.image_size,
            augment=cfg.augment,
            cache_dir=cfg.cache_dir,
        )

    @property
    def skipped(self) -> int:
        return self.index.skipped + len(self.skipped_keys)

    def __len__(self) -> int:
        return self.steps

    def __iter__(self) -> Iterator[Tuple[torch.Tensor, torch.Tensor]]:
        if self._normal(*self._at) != self._normal(self.epoch, self.consumed):  # another epoch was set
            self._start(checkpoint=None)
        while self.consumed < self.steps:
            outputs = self._run()
            self._yielded()
            yield self._to_batch(self.device, *outputs)
        if self._at == (self.epoch, self.steps):  # the feed ends the epoch: DALI's StopIteration, then reset
            try:
                self.pipe.run()
            except StopIteration:
                self.pipe.reset()
                self._at = (self.epoch + 1, 0)
                self._base = (*self._at, self.pipe.checkpoint())
        self._end_epoch()

    def state_dict(self) -> Dict[str, object]:
        in_step = self._normal(*self._at) == self._normal(self.epoch, self.consumed)
        return {
            **self.position(),
            "world": self.world,
            "skipped_keys": list(self.skipped_keys),
            "dali_checkpoint": self.pipe.checkpoint() if in_step else None,
        }

    def close(self) -> None:
        """Release the pipeline (its threads) and the record file; the loader cannot be iterated afterwards."""
        self.pipe = None
        if self.feed is not None:
            self.feed.close()
            self.feed = None

    def load_state_dict(self, state: Dict[str, object]) -> None:
        """Continue at the saved position (`EpochPosition.restore_position`), from the saved pipeline checkpoint
        when it was taken with this world size and global batch (with the same per-rank pipeline, then)."""
        self.restore_position(state)
        # "excluded": the key's name in checkpoints written before it was renamed
        self.skipped_keys = [int(key) for key in state.get("skipped_keys", state.get("excluded", []))]
        same = state.get("world") == self.world and state.get("global_batch") == self.global_batch
        self._start(checkpoint=state.get("dali_checkpoint") if same else None)

    def _normal(self, epoch: int, batch: int) -> Tuple[int, int]:
        """(epoch, batch) with the position after an epoch's last batch written as the next epoch's start."""
        return (epoch + 1, 0) if batch >= self.steps else (epoch, batch)

    def _known_skipped(self) -> List[int]:
        """The keys DALI failed to decode in an earlier run over the same index (on any rank)."""
        known = sorted(read_skipped(self.index.path))
        if known:
            log.warning(
                "rank %d: %d records skipped: DALI failed to decode them in an earlier run (listed in %s)",
                self.rank,
                len(known),
                skipped_path(self.index.path),
            )
        return known

    def _start(self, checkpoint: Optional[bytes], at: Optional[Tuple[int, int]] = None) -> None:
        """(Re)build the pipeline at `at` (epoch, batch; default: the loader's position), from `checkpoint`
        (taken there) or afresh."""
        if self.feed is not None:
            self.feed.close()
        epoch, batch = at or self._normal(self.epoch, self.consumed)
        self.feed = _Feed(
            self.rec_path,
            self.keys,
            self.offsets,
            seed=self.seed,
            batch_size=self.batch_size,
            world=self.world,
            rank=self.rank,
            flip=self.flip,
            skip=set(self.skipped_keys),
            epoch=epoch,
            batch=batch,
        )
        self.pipe = _build_pipeline(self.feed, checkpoint=checkpoint, **self._args)
        self._at = (epoch, batch)  # the batch the pipeline's next run returns
        self._base = (epoch, batch, checkpoint or self.pipe.checkpoint())  # where a failure rebuilds it

    def _run(self):
        """The pipeline's next batch, rebuilt and run up to it again after a failure (see the class)."""
        target = (self._at[0], self._at[1] + 1)
        outputs = None
        while self._at != target:
            try:
                outputs = self.pipe.run()
            except RuntimeError as error:
                self._skip_undecodable(error)  # back at `_base`
                continue
            self._at = (self._at[0], self._at[1] + 1)
        return outputs

    def _skip_undecodable(self, error: RuntimeError) -> None:
        # The batches handed to DALI and not returned: the failed one first.
        pending = sorted(batch for batch in self.feed.fed if batch >= self._at)
        entries = [entry for batch in pending for entry in self.feed.fed[batch]]
        found = set(undecodable_records(self.rec_path, entries, self._args["device_id"], self._args["num_threads"]))
        # DALI's verdict on a few corrupt images changes from run to run: also take the sample its error names
        # (its place in the failed batch).
        failed = self.feed.fed.get(self._at, [])
        found.update(failed[int(i)][0] for i in re.findall(r"sample #(\d+)", str(error)) if int(i) < len(failed))
        if not found:
            raise DataError(
                f"{self.rec_path}: the DALI pipeline of rank {self.rank} failed ({_reason(error)}), but "
                f"no record it was reading fails to decode on its own"
            ) from error
        for key in sorted(found):
            log.warning("skipping record %d of %s: DALI cannot decode its image", key, self.rec_path)
        decoder = "cpu" if self._args["device_id"] is None else "mixed"
        add_skipped(
            self.index.path,
            {key: f"DALI's {decoder} decoder failed on it (rank {self.rank} of {self.world})" for key in found},
        )
        self.skipped_keys.extend(sorted(found - set(self.skipped_keys)))
        if self._args["augment"]:  # their random state: run up to the failed batch again from the last checkpoint
            epoch, batch, checkpoint = self._base
        else:  # nothing in the pipeline is random: it can start at the failed batch
            (epoch, batch), checkpoint = self._at, None
        log.warning(
            "rank %d: skipped %d records DALI cannot decode; reading epoch %d again from batch %d",
            self.rank,
            len(found),
            epoch,
            batch + 1,
        )
        self._start(checkpoint=checkpoint, at=(epoch, batch))


def _reason(error: RuntimeError) -> str:
    """The line of a DALI error that says what went wrong (its message also holds a traceback)."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    after = [line for before, line in zip(lines, lines[1:]) if before.startswith("encountered")]
    return (after or lines or [repr(error)])[0]


def undecodable_records(
    rec_path: str, entries: Sequence[Tuple[int, int]], device_id: Optional[int], num_threads: int
) -> List[int]:
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
            pending += [part[len(part) // 2 :], part[: len(part) // 2]]
    return pipe


def _decoder_pipeline(device_id: Optional[int], num_threads: int):
    from nvidia.dali import fn, pipeline_def, types

    @pipeline_def(
        batch_size=CHECK_BATCH,
        num_threads=num_threads,
        device_id=device_id,
        exec_async=False,
        exec_pipelined=False,
        prefetch_queue_depth=1,
    )
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


def _cpu_batch(device: torch.device, images, labels, flips=None, *, opencv=None) -> Tuple[torch.Tensor, torch.Tensor]:
    """DALI CPU outputs as (float [-1, 1] NCHW in channels_last memory, int64 labels), converted on the host.

    Not by torch: its elementwise kernels wake OpenMP threads that spin on the cores DALI's decoding threads need,
    which made the conversion several times slower inside the running loader (docs/benchmarks.md). OpenCV (`opencv`,
    the cv2 module) maps the pixels through evaluation.preprocess's table of normalised values (what `normalize`
    looks up, so bit for bit the same) in one pass, and mirrors the images whose coin in `flips` came up; without it
    numpy looks the pixels up in the same table and the pipeline has flipped. The pixels are read in place and
    written to a new array, so nothing yielded aliases memory DALI reuses. numpy's lookup (np.take) is the slower
    fallback (figures for both: docs/benchmarks.md).
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
