"""CPU cost of the checks behind the image-only index, against decoding every image, as JSON.

Builds (once, cached in --workdir, shared with bench_loader.py) an insightface-layout record file of synthetic
faces, then times on one thread, file in page cache: the header check (`fr.data.layout.checked_keys`), the
structural image check (`fr.data.verify.check_record_images`) and a full decode by each installed torch-path
decoder (`fr.data.decode`). CPU-us per record, medians over `--repeats` turns.

    python benchmarks/bench_record_checks.py [--images 20000] [--decode 2000] [--repeats 3]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time

from bench_loader import build_records

from fr.data.decode import DECODERS
from fr.data.layout import checked_keys, read_layout
from fr.data.recordio import IndexedRecordIO, unpack
from fr.data.verify import check_record_images


def cpu_us_per_item(work, items: int) -> float:
    start = time.process_time()
    work()
    return (time.process_time() - start) / items * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=20000)
    parser.add_argument("--per-identity", type=int, default=20)
    parser.add_argument("--quality", type=int, default=90)
    parser.add_argument("--decode", type=int, default=2000, help="images decoded per decoder and turn")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--workdir", default=os.path.join(os.path.expanduser("~"), ".cache", "fr", "bench_loader"))
    args = parser.parse_args()
    root = build_records(
        os.path.join(args.workdir, f"{args.images}_q{args.quality}"), args.images, args.per_identity, args.quality
    )
    rec_path = os.path.join(root, "train.rec")
    runs = {}
    with IndexedRecordIO(os.path.join(root, "train.idx"), rec_path, "r") as record:
        layout = read_layout(record)
        keys, _ = checked_keys(record, layout, layout.num_classes)
        payloads = [unpack(record.read_idx(key))[1] for key in keys[: args.decode]]
        decoders = {name: factory() for name, factory in DECODERS.items()}
        for _ in range(args.repeats):
            for name, work, items in [
                ("header_check", lambda: checked_keys(record, layout, layout.num_classes), len(keys)),
                ("structural_check", lambda: check_record_images(record, keys), len(keys)),
                *(
                    (f"decode_{name}", lambda d=decode: [d(p) for p in payloads], len(payloads))
                    for name, decode in decoders.items()
                    if decode is not None
                ),
            ]:
                runs.setdefault(f"{name}_cpu_us_per_record", []).append(cpu_us_per_item(work, items))
    result = {
        "device": platform.processor() or platform.machine(),
        "records": len(keys),
        "kib_per_record": round(os.path.getsize(rec_path) / len(keys) / 1024, 1),
    }
    result.update({key: round(statistics.median(values), 1) for key, values in runs.items()})
    print(json.dumps(result))


if __name__ == "__main__":
    main()
