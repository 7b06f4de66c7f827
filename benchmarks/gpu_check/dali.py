"""GPU check, part: DALI mixed (GPU) decode images/s through fr's DaliLoader over the trainer part's synthetic set.

Skipped, saying why, where nvidia.dali cannot be imported (its wheels are far over the device's 64 MiB carry
limit) or where no CUDA device is present (a dry run): mixed decode needs one.
"""

from __future__ import annotations

import os
import time

from _shared import device_for, environment, part_args, sync, write_result

from fr.data.loader import dali_available
from fr.distributed import DistEnv


def main() -> None:
    args = part_args(__doc__.splitlines()[0])
    device = device_for(args.dry_run)
    data = os.path.join(args.work, "synthetic")
    base = {**environment(device), "target": "images_per_s >= 20000 (issue 18)"}
    if device.type != "cuda":  # asked first: importing DALI alone takes seconds
        write_result(args.out_json, {"status": "skipped", "reason": "mixed decode needs a CUDA device", **base})
        return
    if not dali_available():
        reason = "nvidia.dali is not importable here (its wheel is far over the 64 MiB carry limit)"
        write_result(args.out_json, {"status": "skipped", "reason": reason, **base})
        return
    from fr.data.dali import DaliLoader

    loader = DaliLoader(data, 256, DistEnv(device=device), num_threads=8, cache_dir=os.path.join(args.work, "cache"))
    images, batches, start = 0, 0, None
    for epoch in range(4):
        loader.set_epoch(epoch)
        for batch, _ in loader:
            batches += 1
            if batches == 3:  # after the pipeline's start
                sync(device)
                start = time.perf_counter()
            elif batches > 3:
                images += batch.shape[0]
    sync(device)
    seconds = time.perf_counter() - start
    write_result(
        args.out_json,
        {"status": "ok", **base, "batch": 256, "images": images, "images_per_s": round(images / seconds, 1)},
    )


if __name__ == "__main__":
    main()
