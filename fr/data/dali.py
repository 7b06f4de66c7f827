"""DALI loader over insightface record files: fn.readers.mxnet sharded by rank, mixed GPU decode or CPU.

The user's `train.rec` is read in place. Its `.idx` also lists the header record 0 and the identity records,
which DALI would read as samples, so a filtered index listing only the image records (those that passed the
header check) is written to a cache directory and given to the reader as `index_path`.
"""
from __future__ import annotations

import hashlib
import io
import json
import logging
import os
from typing import Dict, Iterator, Optional, Sequence, Tuple

import numpy as np
import torch
from PIL import Image

from fr.data.datasets import DataError, checked_keys, read_layout, record_paths
from fr.data.recordio import IndexedRecordIO, unpack
from fr.data.loader import normalize
from fr.distributed import DistEnv
from fr.fileio import atomic_write_text


log = logging.getLogger(__name__)

READER = "reader"
INITIAL_FILL = 16384  # shuffle buffer per rank: large, as the records of one identity are contiguous


def filtered_index(root: str, num_classes: int = 0, cache_dir: str = "") -> Tuple[str, int, int, int]:
    """Write (once) an index of the image records only; returns (index path, images, classes, garbled).

    The cache file name hashes the record file's path, size and mtime, so a changed file gets a new index.
    """
    rec_path, idx_path = record_paths(root)
    record = IndexedRecordIO(idx_path, rec_path, "r")
    try:
        layout = read_layout(record)
        classes = num_classes or layout.num_classes
        if num_classes and num_classes < layout.num_classes:
            raise DataError(f"data.num_classes={num_classes} but {rec_path} holds {layout.num_classes} classes")
        stat = os.stat(rec_path)
        tag = hashlib.sha1(f"{os.path.abspath(rec_path)}|{stat.st_size}|{stat.st_mtime_ns}|{classes}".encode())
        directory = cache_dir or _default_cache_dir(root)
        os.makedirs(directory, exist_ok=True)
        out = os.path.join(directory, f"train.{tag.hexdigest()[:16]}.images.idx")
        counts_path = out + ".json"
        if os.path.isfile(out) and os.path.isfile(counts_path):
            with open(counts_path, "r", encoding="utf-8") as fh:
                counts = json.load(fh)
            return out, counts["images"], classes, counts["garbled"]
        keys, garbled = checked_keys(record, layout, classes)
        # Ranks may race to write the same index: each writes its own temporary file and renames it.
        atomic_write_text(counts_path, json.dumps({"images": len(keys), "garbled": garbled}))
        atomic_write_text(out, "".join(f"{key}\t{record.idx[key]}\n" for key in keys))
        log.info("wrote the image-only index %s (%d images)", out, len(keys))
        return out, len(keys), classes, garbled
    finally:
        record.close()


def _default_cache_dir(root: str) -> str:
    """Beside the data when writable (fast to share between ranks), else the user's cache."""
    beside = os.path.join(root, ".fr_cache")
    if os.access(root, os.W_OK):
        return beside
    return os.path.join(os.path.expanduser("~"), ".cache", "fr")


def _build_pipeline(rec_path: str, index_path: str, batch_size: int, shard_id: int, num_shards: int,
                    device_id: Optional[int], num_threads: int, seed: int, image_size: int,
                    augment: Sequence[str], checkpoint: Optional[str], initial_fill: int, resize: bool):
    from nvidia.dali import fn, pipeline_def, types

    from fr.data.dali_augment import apply_augments

    gpu = device_id is not None

    @pipeline_def(enable_checkpointing=True)
    def pipeline():
        jpegs, labels = fn.readers.mxnet(path=[rec_path], index_path=[index_path], shard_id=shard_id,
                                         num_shards=num_shards, random_shuffle=True, initial_fill=initial_fill,
                                         stick_to_shard=True, pad_last_batch=True, name=READER)
        images = fn.decoders.image(jpegs, device="mixed" if gpu else "cpu", output_type=types.RGB)
        if resize:  # only when the file's images differ from data.image_size: even a no-op resize costs 3x
            images = fn.resize(images, resize_x=image_size, resize_y=image_size)
        images = apply_augments(images, augment)
        # uint8 HWC leaves the pipeline: CHW + (x/255-0.5)/0.5 run in torch on the training device, which
        # measured 1.5-2x faster on CPU than DALI's crop_mirror_normalize to float.
        images = fn.flip(images, horizontal=fn.random.coin_flip(probability=0.5, dtype=types.INT32))
        if gpu:
            labels = labels.gpu()
        return images, labels

    kwargs = {"checkpoint": checkpoint} if checkpoint else {}
    pipe = pipeline(batch_size=batch_size, num_threads=num_threads, device_id=device_id, seed=seed,
                    prefetch_queue_depth=2, **kwargs)
    pipe.build()
    return pipe


class DaliLoader:
    """The DeviceLoader interface over a DALI pipeline: (float [-1,1] NCHW, int64 labels) on `env.device`.

    Every rank yields `len(self)` batches per epoch: `(N // world) // batch`, the smallest shard's full
    batches (shards differ by one image at most). The reader pads its shard to whole batches, so each epoch
    starts at a shard boundary; the batches past `len(self)` are read and dropped. `state_dict` holds the
    DALI reader checkpoint taken at the last epoch boundary plus the batches consumed since, so a resumed
    loader continues mid-epoch.
    """

    def __init__(self, root: str, batch_size: int, env: DistEnv, seed: int = 0, num_threads: int = 2,
                 num_classes: int = 0, image_size: int = 112, augment: Sequence[str] = (), cache_dir: str = "",
                 initial_fill: int = INITIAL_FILL):
        rec_path, _ = record_paths(root)
        index_path, images, classes, garbled = filtered_index(root, num_classes, cache_dir)
        self.dataset = _DatasetInfo(images, classes)
        self.device = env.device
        self.skipped = garbled
        self.batch_size = batch_size
        per_rank = images // env.world_size
        self.steps = per_rank // batch_size
        if self.steps < 1:
            raise ValueError(f"data.batch_size={batch_size} is larger than this rank's share of the data set "
                             f"({per_rank} of {images} images over {env.world_size} ranks)")
        device_id = (self.device.index or 0) if self.device.type == "cuda" else None
        self._args = dict(rec_path=rec_path, index_path=index_path, batch_size=batch_size, shard_id=env.rank,
                          num_shards=env.world_size, device_id=device_id, num_threads=num_threads,
                          seed=seed + env.rank, image_size=image_size, augment=list(augment),
                          initial_fill=initial_fill, resize=_first_image_size(root) != (image_size, image_size))
        self.pipe = _build_pipeline(checkpoint=None, **self._args)
        self._reads_per_epoch = None
        self.epoch = 0
        self._consumed = 0                  # batches yielded in the current epoch
        self._epoch_checkpoint = self.pipe.checkpoint()

    @classmethod
    def from_config(cls, cfg, env: DistEnv, seed: int) -> "DaliLoader":
        return cls(cfg.root, cfg.batch_size, env, seed=seed, num_threads=max(1, cfg.num_workers),
                   num_classes=cfg.num_classes, image_size=cfg.image_size, augment=cfg.augment,
                   cache_dir=cfg.cache_dir)

    @property
    def stats(self) -> Dict[str, int]:
        return {"skipped_records": self.skipped}

    def _shard_batches(self) -> int:
        """Batches the reader delivers per epoch for this shard (its last one padded)."""
        meta = self.pipe.reader_meta(READER)
        shard = meta["epoch_size_padded"] // self._args["num_shards"]
        return -(-shard // self.batch_size)

    def set_epoch(self, epoch: int) -> None:
        # DALI reshuffles on its own as it reads on; the epoch only matters for bookkeeping and resume.
        if epoch != self.epoch:
            self._consumed = 0
        self.epoch = epoch

    def __len__(self) -> int:
        return self.steps

    def __iter__(self) -> Iterator[Tuple[torch.Tensor, torch.Tensor]]:
        if self._consumed == 0:
            self._epoch_checkpoint = self.pipe.checkpoint()
        total = self._shard_batches()
        for step in range(self._consumed, total):
            images, labels = self._run()
            if step < self.steps:
                self._consumed = step + 1
                yield images, labels
        self._consumed = 0
        self.epoch += 1

    def _run(self) -> Tuple[torch.Tensor, torch.Tensor]:
        images, labels = self.pipe.run()
        # NCHW in channels_last memory: no transposing copy, and the layout CPU/GPU convolutions prefer.
        images = normalize(_to_torch(images, self.device)).permute(0, 3, 1, 2)
        return images, _to_torch(labels, self.device).view(-1).long()

    def state_dict(self) -> Dict[str, object]:
        # Between epochs the reader already stands at the next epoch's start: checkpoint that position,
        # not the finished epoch's start (which would replay the finished epoch).
        at_boundary = self._consumed == 0
        return {"epoch": self.epoch, "consumed": self._consumed,
                "dali_checkpoint": self.pipe.checkpoint() if at_boundary else self._epoch_checkpoint}

    def load_state_dict(self, state: Dict[str, object]) -> None:
        """Rebuild the pipeline at the checkpointed epoch start and skip the batches already consumed."""
        self.pipe = _build_pipeline(checkpoint=state["dali_checkpoint"], **self._args)
        self._epoch_checkpoint = state["dali_checkpoint"]
        self.epoch = int(state["epoch"])
        consumed = int(state["consumed"])
        for _ in range(consumed):
            self.pipe.run()  # replaying a few batches is cheaper than per-batch checkpoints
        self._consumed = consumed


def _first_image_size(root: str) -> Tuple[int, int]:
    """(width, height) of the first image record, read from the image header without decoding it."""
    rec_path, idx_path = record_paths(root)
    with IndexedRecordIO(idx_path, rec_path, "r") as record:
        layout = read_layout(record)
        payload = unpack(record.read_idx(layout.image_keys[0]))[1]
    try:
        with Image.open(io.BytesIO(payload)) as img:
            return img.size
    except Exception:  # an unreadable first image: resize everything, to be safe
        return (0, 0)


class _DatasetInfo:
    """What the trainer reads from `loader.dataset`: its length and class count."""

    def __init__(self, images: int, num_classes: int):
        self.images, self.num_classes = images, num_classes

    def __len__(self) -> int:
        return self.images


def _to_torch(batch, device: torch.device) -> torch.Tensor:
    """A dense DALI TensorList (CPU or GPU) as a torch tensor on `device`."""
    tensor = batch.as_tensor()
    if device.type == "cuda":
        from nvidia.dali.plugin.pytorch import feed_ndarray, to_torch_type

        out = torch.empty(tensor.shape(), dtype=to_torch_type[tensor.dtype], device=device)
        feed_ndarray(tensor, out, cuda_stream=torch.cuda.current_stream(device))
        return out
    return torch.from_numpy(np.array(tensor)).to(device)
