"""fr-eval: evaluate a checkpoint. `verify` runs the LFW-style protocol on .bin pair sets."""
from __future__ import annotations

import argparse
import json
import os
import sys
from typing import List, Optional

from fr.cli.common import run_cli, setup_logging


def _verify(args: argparse.Namespace) -> int:
    import torch

    from evaluation.embed import verify_bin
    from fr.distributed import choose_device
    from fr.train.checkpoint import load_backbone

    device = choose_device(args.device, 0)
    model = load_backbone(args.checkpoint, backbone=args.backbone, embedding_size=args.embedding_size,
                          device=device)
    rows = {}
    with torch.inference_mode():
        for path in args.bin:
            name = os.path.splitext(os.path.basename(path))[0]
            result = verify_bin(model, path, batch_size=args.batch_size, device=device)
            rows[name] = result.to_dict()
    print(f"{'set':<16}{'accuracy':>10}{'std':>10}{'xnorm':>10}")
    for name, row in rows.items():
        print(f"{name:<16}{row['accuracy']:>10.5f}{row['std']:>10.5f}{row['xnorm']:>10.3f}")
    if args.json:
        tmp = args.json + ".tmp"
        with open(tmp, "w", encoding="utf-8") as fh:
            json.dump({"checkpoint": args.checkpoint, "results": rows}, fh, indent=2)
        os.replace(tmp, args.json)
    return 0


def parse_args(argv: Optional[List[str]]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="fr-eval", description="evaluate face-recognition checkpoints")
    parser.add_argument("--verbose", action="store_true")
    sub = parser.add_subparsers(dest="command", required=True)
    verify = sub.add_parser("verify", help="LFW-style verification accuracy on .bin pair sets")
    verify.add_argument("--checkpoint", required=True, help="a run directory or a model.pt state_dict")
    verify.add_argument("--bin", action="append", required=True, help=".bin file (repeatable)")
    verify.add_argument("--json", help="write results to this JSON file")
    verify.add_argument("--backbone", help="backbone name when the checkpoint has no config.json beside it")
    verify.add_argument("--embedding-size", type=int, help="embedding size (default: from config.json, else 512)")
    verify.add_argument("--batch-size", type=int, default=128)
    verify.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    verify.set_defaults(func=_verify)
    return parser.parse_args(argv)


def main(argv: Optional[List[str]] = None) -> int:
    args = parse_args(argv)
    setup_logging(args.verbose)
    return run_cli("fr-eval", lambda: args.func(args))


if __name__ == "__main__":
    sys.exit(main())
