"""fr-data: data-set tools: `synth`, `info`, `verify`, `pack` and `shuffle` for record files."""

from __future__ import annotations

import argparse
import json
import sys
from typing import List, Optional

from fr.cli.common import UsageError, run_cli, setup_logging


def _synth(args: argparse.Namespace) -> int:
    from fr.config import SynthConfig
    from fr.synth.dataset import generate

    cfg = SynthConfig(
        identities=args.identities,
        per_identity=args.per_identity,
        holdout_identities=args.holdout_identities,
        pairs=args.pairs,
        seed=args.seed,
        workers=args.workers,
        difficulty=args.difficulty,
    )
    generate(args.out, cfg, command="fr-data synth")
    print(
        json.dumps(
            {
                "out": args.out,
                "images": cfg.identities * cfg.per_identity,
                "identities": cfg.identities,
                "pairs": cfg.pairs,
            }
        )
    )
    return 0


def _info(args: argparse.Namespace) -> int:
    from fr.data.datasets import RecordDataset
    from fr.data.headers import check_records

    dataset = RecordDataset(args.dir, flip=False)
    image, _ = dataset[0]
    labels = check_records(dataset.record, dataset.keys, dataset.num_classes).labels
    info = {
        "dir": args.dir,
        "layout": "insightface" if dataset.layout.insightface else "plain",
        "images": len(dataset),
        "identities": dataset.num_classes,
        "label_range": [min(labels), max(labels)],
        "image_size": list(image.shape[1:]),
        "skipped_records": dataset.skipped,
    }
    _emit(info, args.json)
    return 0


def _emit(info: dict, as_json: bool) -> None:
    if as_json:
        print(json.dumps(info))
    else:
        for key, value in info.items():
            print(f"{key:>16}: {value}")


def _verify(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from fr.data.decode import get_decoder
    from fr.data.verify import verify_dir

    progress = None if args.json else (lambda keys: tqdm(keys, unit="img", desc="verify", file=sys.stderr))
    report = verify_dir(args.dir, get_decoder("auto"), progress=progress)
    info = {
        "dir": args.dir,
        "records": report.records,
        "images": report.images,
        "ok": report.ok,
        "skipped_records": len(report.skipped),
        "errors": len(report.errors),
    }
    if args.json:
        print(json.dumps({**info, "messages": {"skipped_records": report.skipped, "errors": report.errors}}))
    else:
        for message in report.errors:
            print(f"error: {message}")
        for message in report.skipped:
            print(f"skipped: {message}")
        _emit(info, False)
    return 0 if report.ok else 1


def _pack(args: argparse.Namespace) -> int:
    from fr.data.pack import group_by_label, list_image_folder, pack_images, read_lst

    if (args.folder is None) == (args.lst is None):
        raise UsageError("fr-data pack needs exactly one of --folder DIR or --lst FILE")
    source = args.folder or args.lst
    items = list_image_folder(args.folder) if args.folder else read_lst(args.lst, args.image_root)
    result = pack_images(
        group_by_label(items, source),
        args.out,
        size=args.size,
        quality=args.quality,
        workers=args.workers,
        progress=not args.quiet,
        sources=[source],
    )
    print(json.dumps({**result, "failed": len(result["failed"])}))
    return 0 if not result["failed"] else 1


def _shuffle(args: argparse.Namespace) -> int:
    from fr.data.shuffle import shuffle_records

    print(json.dumps(shuffle_records(args.dir, args.out, seed=args.seed, progress=not args.quiet)))
    return 0


def parse_args(argv: Optional[List[str]]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="fr-data", description="fr data-set tools")
    parser.add_argument("--verbose", action="store_true")
    sub = parser.add_subparsers(dest="command", required=True)

    synth = sub.add_parser("synth", help="render the procedural face-like data set")
    synth.add_argument("--out", required=True, help="output directory (train.rec/.idx, synthetic_val.bin)")
    synth.add_argument("--identities", type=int, default=600, help="training identities")
    synth.add_argument("--per-identity", type=int, default=20, help="images per training identity")
    synth.add_argument("--holdout-identities", type=int, default=300, help="identities of the verification set")
    synth.add_argument("--pairs", type=int, default=1200, help="verification pairs (a multiple of 20)")
    synth.add_argument("--seed", type=int, default=0)
    synth.add_argument("--workers", type=int, default=0, help="rendering processes (0: one per core)")
    synth.add_argument("--difficulty", type=float, default=1.0, help="scale of the nuisance variation")
    synth.set_defaults(func=_synth)

    info = sub.add_parser("info", help="describe a record directory")
    info.add_argument("dir", help="directory holding train.rec/train.idx")
    info.add_argument("--json", action="store_true", help="print JSON")
    info.set_defaults(func=_info)

    verify = sub.add_parser(
        "verify",
        help="scan every record: the records training would skip and the file's "
        "errors; exit status 1 when there is either",
    )
    verify.add_argument("dir", help="directory holding train.rec/train.idx")
    verify.add_argument("--json", action="store_true", help="print JSON (with every message)")
    verify.set_defaults(func=_verify)

    pack = sub.add_parser("pack", help="pack an image folder or im2rec .lst into insightface-layout records")
    pack.add_argument("--folder", help="one sub-folder of images per identity")
    pack.add_argument("--lst", help="im2rec list: index<TAB>label<TAB>path")
    pack.add_argument("--image-root", help="directory the .lst paths are relative to (default: its folder)")
    pack.add_argument("--out", required=True, help="output directory for train.rec/train.idx")
    pack.add_argument("--size", type=int, default=112, help="resize to SIZE x SIZE (0 keeps the size)")
    pack.add_argument("--quality", type=int, default=95, help="JPEG quality")
    pack.add_argument("--workers", type=int, default=0, help="encoding processes (0: one per core)")
    pack.add_argument("--quiet", action="store_true", help="no progress bar")
    pack.set_defaults(func=_pack)

    shuffle = sub.add_parser("shuffle", help="write a physically shuffled copy (plain layout)")
    shuffle.add_argument("dir", help="directory holding train.rec/train.idx")
    shuffle.add_argument("--out", required=True, help="output directory")
    shuffle.add_argument("--seed", type=int, default=0)
    shuffle.add_argument("--quiet", action="store_true", help="no progress bar")
    shuffle.set_defaults(func=_shuffle)
    return parser.parse_args(argv)


def main(argv: Optional[List[str]] = None) -> int:
    args = parse_args(argv)
    setup_logging(args.verbose)
    return run_cli("fr-data", lambda: args.func(args))


if __name__ == "__main__":
    sys.exit(main())
