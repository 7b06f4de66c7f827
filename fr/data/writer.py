"""Writes insightface-layout record files: header record 0, image records 1..N, identity records after."""

from __future__ import annotations

import os
from typing import List, Sequence

from evaluation.fileio import commit_file, create_temporary
from fr.data.base import DataError
from fr.data.recordio import IndexedRecordIO, IRHeader, pack


class InsightfaceRecordWriter:
    """Append identities (lists of encoded images) and close to get `train.rec`/`train.idx` in `out_dir`.

    Record 0's label `[N+1, N+1+C]` is known only at the end: a same-sized placeholder is written first and
    rewritten in place on close. Identity c's record (key N+1+c) holds `[start, end)` of its image keys.
    Files are written under fresh temporary names, then fsynced and renamed on close (`commit_file`), so an
    interrupted run or a crash leaves no half-written `train.rec` behind. It never overwrites: existing
    `train.rec`/`train.idx` are a DataError (replacing an earlier data set is `fr.data.ownership.staged_output`'s
    job).
    """

    def __init__(self, out_dir: str, prefix: str = "train"):
        os.makedirs(out_dir, exist_ok=True)
        self.rec_path = os.path.join(out_dir, f"{prefix}.rec")
        self.idx_path = os.path.join(out_dir, f"{prefix}.idx")
        self._refuse_existing()
        self._tmp_rec = create_temporary(self.rec_path)
        try:
            self._tmp_idx = create_temporary(self.idx_path)
        except BaseException:
            os.remove(self._tmp_rec)
            raise
        self._record = IndexedRecordIO(self._tmp_idx, self._tmp_rec, "w")
        self._record.write_idx(0, self._header_record(0, 0))
        self._ranges: List[tuple] = []
        self._next_key = 1
        self._closed = False

    def _refuse_existing(self) -> None:
        for path in (self.rec_path, self.idx_path):
            if os.path.lexists(path):
                raise DataError(
                    f"{path} already exists: the record writer never overwrites; write into a new directory"
                )

    @staticmethod
    def _header_record(end_images: int, end_identities: int) -> bytes:
        return pack(IRHeader(2, [float(end_images), float(end_identities)], 0, 0), b"")

    def add_identity(self, encoded_images: Sequence[bytes]) -> int:
        """Write one identity's images with the next class label; returns that label."""
        label = len(self._ranges)
        start = self._next_key
        for payload in encoded_images:
            self._record.write_idx(self._next_key, pack(IRHeader(0, float(label), self._next_key, 0), payload))
            self._next_key += 1
        self._ranges.append((start, self._next_key))
        return label

    def close(self) -> None:
        if self._closed:
            return
        end_images = self._next_key
        for offset, (start, end) in enumerate(self._ranges):
            self._record.write_idx(end_images + offset, pack(IRHeader(2, [float(start), float(end)], 0, 0), b""))
        self._record.close()
        header = self._header_record(end_images, end_images + len(self._ranges))
        with open(self._tmp_rec, "r+b") as fh:
            fh.seek(8)  # past magic and length word of record 0; the placeholder has the same size
            fh.write(header)
        try:
            self._refuse_existing()  # the files may have appeared while the identities were written
        except DataError:
            self.abort()
            raise
        commit_file(self._tmp_idx, self.idx_path)
        commit_file(self._tmp_rec, self.rec_path)
        self._closed = True

    def abort(self) -> None:
        """Drop the partial files (on error)."""
        self._record.close()
        for path in (self._tmp_rec, self._tmp_idx):
            if os.path.exists(path):
                os.remove(path)
        self._closed = True

    def __enter__(self):
        return self

    def __exit__(self, exc_type, *_):
        if exc_type is None:
            self.close()
        else:
            self.abort()

    @property
    def num_images(self) -> int:
        return self._next_key - 1
