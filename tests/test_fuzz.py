"""Seeded fuzz of every reader of user files: mutated record files and `.bin` files give a result or fr's own
one-line error (evaluation.errors.UserInputError), never another exception, a hang, or a changed input file.

`python -m tests.test_fuzz` runs the same cases and prints the figures recorded in docs/reliability.md.
"""

import hashlib
import json
import shutil
import signal
import sys
import time
from collections import Counter

import numpy as np
import pytest

from evaluation.bin_format import load_bin, write_bin
from evaluation.errors import UserInputError
from fr.data.datasets import RecordDataset
from fr.data.decode import get_decoder
from fr.data.image_index import build_index, read_index_keys
from fr.data.recordio import RecordIOError, read_index
from fr.data.verify import verify_dir
from tests.helpers.images import encode, noise
from tests.helpers.records import write_record_set

SEED = 2024
RECORD_CASES = 500  # each runs three readers over the record set (~13 ms); a .bin case is one reader (~3 ms)
BIN_CASES = 500
CASE_SECONDS = 5.0  # a reader still busy after this counts as a hang (the slowest case measured 0.07 s)
IDENTITIES, PER_IDENTITY, SIDE = 3, 3, 24


class Hang(BaseException):
    """Raised by the alarm; a BaseException, so that no reader's `except Exception` can swallow it."""


def record_set(root, rng):
    """A small insightface-layout set, JPEG and PNG images mixed; returns the .rec and .idx bytes."""

    def image(k):
        return encode(noise(rng, SIDE), "JPEG" if (k // PER_IDENTITY + k % PER_IDENTITY) % 2 else "PNG")

    write_record_set(root, IDENTITIES, PER_IDENTITY, image)
    return (root / "train.rec").read_bytes(), (root / "train.idx").read_bytes()


def mutate(data, rng, hot_spots=()):
    """1-3 of: flip a bit, set a byte span to 0 or 255, truncate, insert random bytes, duplicate a span.

    Half the positions fall in `hot_spots` (byte ranges such as record headers) so that headers and labels
    are hit as often as image bytes."""
    data = bytearray(data)
    for _ in range(int(rng.integers(1, 4))):
        if not data:
            break
        if hot_spots and rng.random() < 0.5:
            start, end = hot_spots[int(rng.integers(len(hot_spots)))]
            pos = int(rng.integers(start, min(end, len(data)))) if start < len(data) else len(data) - 1
        else:
            pos = int(rng.integers(len(data)))
        op = rng.integers(6)
        if op == 0:
            data[pos] ^= 1 << int(rng.integers(8))
        elif op in (1, 2):
            span = int(rng.integers(1, 9))
            data[pos : pos + span] = bytes([0 if op == 1 else 255]) * len(data[pos : pos + span])
        elif op == 3:
            del data[pos:]
        elif op == 4:
            data[pos:pos] = rng.integers(0, 256, int(rng.integers(1, 17)), dtype=np.uint8).tobytes()
        else:
            start = int(rng.integers(len(data)))
            data[pos:pos] = data[start : start + int(rng.integers(1, 65))]
    return bytes(data)


def digest(paths):
    return [hashlib.sha256(open(path, "rb").read()).hexdigest() for path in paths]


def attempt(call):
    """'ok' (or the outcome `call` names), 'user error' or ('other', what happened)."""
    signal.setitimer(signal.ITIMER_REAL, CASE_SECONDS)
    try:
        outcome = call()
        return outcome if isinstance(outcome, str) else "ok"
    except UserInputError as exc:
        if "\n" in str(exc):
            return "other", f"multi-line {type(exc).__name__}: {exc!r}"
        return "user error"
    except Hang:
        return "other", f"hang (over {CASE_SECONDS} s)"
    except Exception as exc:
        return "other", f"{type(exc).__name__}: {exc}"
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)


def verify(root, decode):
    report = verify_dir(str(root), decode)
    messages = report.skipped + report.errors
    assert not any("\n" in message for message in messages), messages
    return "ok" if report.ok else "findings listed"


def train_all(root):
    """The torch loader's index build (header check) and then every sample as training reads it."""
    dataset = RecordDataset(str(root), image_size=SIDE, flip=False)
    try:
        for index in range(len(dataset)):
            image, label, _ = dataset.load(index)
            assert 0 <= label < dataset.num_classes and tuple(image.shape) == (3, SIDE, SIDE)
    finally:
        dataset.record.close()


def dali_index(root, cache):
    index = build_index(str(root), cache_dir=str(cache))
    assert len(read_index_keys(index.path)) == index.images


def run_fuzz(tmp, seed=SEED, record_cases=RECORD_CASES, bin_cases=BIN_CASES):
    """Runs the cases; returns the figures and the failures ([(case, reader, what)])."""
    rng = np.random.default_rng(seed)
    source, root, cache = tmp / "source", tmp / "case", tmp / "cache"
    for path in (source, root):
        path.mkdir()
    rec, idx = record_set(source, rng)
    headers = [(offset, offset + 8 + 24 + 8) for offset in read_index(str(source / "train.idx")).values()]
    decode = get_decoder("auto")
    pairs = [encode(noise(rng, SIDE), "JPEG" if i % 3 else "PNG") for i in range(8)]
    write_bin(str(source / "set.bin"), pairs, [True, False, True, False])
    bin_bytes = (source / "set.bin").read_bytes()

    outcomes, failures, seconds, slowest = Counter(), [], {}, Counter()

    def tally(reader, call, case):
        began = time.perf_counter()
        outcome = attempt(call)
        slowest[reader] = max(slowest[reader], time.perf_counter() - began)
        outcomes[reader, outcome if isinstance(outcome, str) else "other"] += 1
        if not isinstance(outcome, str):
            failures.append((case, reader, outcome[1]))

    previous = signal.signal(signal.SIGALRM, lambda *_: (_ for _ in ()).throw(Hang()))
    try:
        start = time.perf_counter()
        for case in range(record_cases):
            damaged = "idx" if rng.random() < 0.2 else "rec"
            files = {"rec": rec, "idx": idx}
            files[damaged] = mutate(files[damaged], rng, headers if damaged == "rec" else ())
            (root / "train.rec").write_bytes(files["rec"])
            (root / "train.idx").write_bytes(files["idx"])
            paths = [root / "train.rec", root / "train.idx"]
            before = digest(paths)
            readers = {
                "fr-data verify": lambda: verify(root, decode),
                "torch loader": lambda: train_all(root),
                "DALI index": lambda case=case: dali_index(root, cache / str(case)),
            }
            for name, call in readers.items():
                tally(name, call, case)
            if digest(paths) != before:
                failures.append((case, "record readers", "changed the input file"))
            shutil.rmtree(cache / str(case), ignore_errors=True)
        seconds["records"] = time.perf_counter() - start

        start = time.perf_counter()
        path = root / "set.bin"
        for case in range(bin_cases):
            path.write_bytes(mutate(bin_bytes, rng))
            before = digest([path])
            tally("load_bin", lambda: load_bin(str(path), image_size=SIDE), case)
            if digest([path]) != before:
                failures.append((case, "load_bin", "changed the input file"))
        seconds["bin"] = time.perf_counter() - start
    finally:
        signal.signal(signal.SIGALRM, previous)
    figures = {
        "seed": seed,
        "record_cases": record_cases,
        "bin_cases": bin_cases,
        "outcomes": {f"{reader}: {kind}": n for (reader, kind), n in sorted(outcomes.items())},
        "seconds": {part: round(s, 1) for part, s in seconds.items()},
        "slowest_case_s": {reader: round(s, 3) for reader, s in sorted(slowest.items())},
    }
    return figures, failures


def test_fuzzed_record_and_bin_files_give_a_result_or_a_one_line_user_error(tmp_path):
    figures, failures = run_fuzz(tmp_path)
    assert not failures, f"{len(failures)} failures, the first: {failures[:5]}"
    kinds = figures["outcomes"]
    # The fuzzer reaches both outcomes of every reader (it is not testing only intact or only broken files).
    for reader in ("fr-data verify", "torch loader", "DALI index", "load_bin"):
        assert kinds.get(f"{reader}: ok", 0) > 0 and kinds.get(f"{reader}: user error", 0) > 0, kinds
    assert kinds.get("fr-data verify: findings listed", 0) > 0, kinds


@pytest.mark.parametrize("offset", [-8, 1 << 70])
def test_an_idx_offset_no_file_can_seek_to_is_a_user_error(tmp_path, offset):
    # Rarely drawn by the random cases: a seek there raised OSError / OverflowError, naming nothing.
    record_set(tmp_path, np.random.default_rng(0))
    lines = (tmp_path / "train.idx").read_text().splitlines()
    lines[0] = f"0\t{offset}"
    (tmp_path / "train.idx").write_text("\n".join(lines) + "\n")
    for reader in (
        lambda: verify(tmp_path, get_decoder("auto")),
        lambda: train_all(tmp_path),
        lambda: dali_index(tmp_path, tmp_path / "cache"),
    ):
        with pytest.raises(RecordIOError, match=rf"train.idx:1: offset {offset} of key 0 is not a file position"):
            reader()


if __name__ == "__main__":
    import logging
    import pathlib
    import tempfile

    logging.disable(logging.WARNING)  # one warning per skipped record would drown the figures
    with tempfile.TemporaryDirectory() as tmp:
        result, problems = run_fuzz(pathlib.Path(tmp))
    print(json.dumps({**result, "failures": len(problems), "first_failures": problems[:10]}, indent=1))
    sys.exit(1 if problems else 0)
