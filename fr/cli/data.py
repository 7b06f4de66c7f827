"""fr-data: data-set tools. `synth` renders the procedural face set; `info` describes a record file."""
from __future__ import annotations

import argparse
import json
import sys
from typing import List, Optional

from fr.cli.common import run_cli, setup_logging


def _synth(args: argparse.Namespace) -> int:
    from fr.config import SynthConfig
    from fr.data.synthesize import generate

    cfg = SynthConfig(identities=args.identities, per_identity=args.per_identity,
                      holdout_identities=args.holdout_identities, pairs=args.pairs, seed=args.seed,
                      workers=args.workers, difficulty=args.difficulty)
    generate(args.out, cfg)
    print(json.dumps({"out": args.out, "images": cfg.identities * cfg.per_identity,
                      "identities": cfg.identities, "pairs": cfg.pairs}))
    return 0


def _info(args: argparse.Namespace) -> int:
    from fr.data.datasets import RecordDataset

    dataset = RecordDataset(args.dir, flip=False)
    image, _ = dataset[0] if len(dataset) else (None, None)
    info = {
        "dir": args.dir,
        "layout": "insightface" if dataset.layout.insightface else "plain",
        "images": len(dataset),
        "identities": dataset.num_classes,
        "image_size": list(image.shape[1:]) if image is not None else None,
    }
    if args.json:
        print(json.dumps(info))
    else:
        for key, value in info.items():
            print(f"{key:>12}: {value}")
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
    return parser.parse_args(argv)


def main(argv: Optional[List[str]] = None) -> int:
    args = parse_args(argv)
    setup_logging(args.verbose)
    return run_cli("fr-data", lambda: args.func(args))


if __name__ == "__main__":
    sys.exit(main())
