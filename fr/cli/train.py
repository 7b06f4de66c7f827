"""fr-train CONFIG [key=value ...]: train a face-recognition model (single process or under torchrun).

CONFIG is an fr recipe, a saved config.json, or an arcface_torch config file as it is (docs/migration.md).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from typing import List, Optional

from fr.cli.common import run_cli, setup_logging


def parse_args(argv: Optional[List[str]]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="fr-train",
        description="Train with a recipe from configs/ and key=value overrides, "
        "e.g. fr-train configs/synthetic.py optim.lr=0.05 loss.name=cosface",
    )
    parser.add_argument(
        "config", help="a recipe .py (defining `config`), a saved config.json, or an arcface_torch config file"
    )
    parser.add_argument("overrides", nargs="*", help="key=value overrides of any config field")
    parser.add_argument(
        "--print-config", action="store_true", help="print the resolved config as JSON (as config.json) and exit"
    )
    parser.add_argument(
        "--write-recipe",
        metavar="OUT.py",
        help="write the resolved config (e.g. a converted arcface_torch config) as an fr recipe file and exit",
    )
    parser.add_argument("--verbose", action="store_true")
    # The `deepspeed` launcher appends --local_rank=N; fr reads LOCAL_RANK from the environment (fr.distributed).
    parser.add_argument("--local_rank", "--local-rank", type=int, help=argparse.SUPPRESS)
    return parser.parse_intermixed_args(argv)  # options may come after the key=value overrides


def main(argv: Optional[List[str]] = None) -> int:
    args = parse_args(argv)
    setup_logging(args.verbose)
    if args.print_config:  # stdout carries the JSON alone: the log (e.g. an arcface_torch key mapping) goes to stderr
        for handler in logging.getLogger().handlers:
            if isinstance(handler, logging.StreamHandler):
                handler.setStream(sys.stderr)

    def body() -> int:
        from fr.config import load_config

        cfg = load_config(args.config, args.overrides)
        if args.print_config:
            print(cfg.to_json())
            return 0
        if args.write_recipe:
            from fr.migrate.recipe import write_recipe

            write_recipe(cfg, args.config, args.write_recipe)
            print(f"fr-train: wrote {args.write_recipe}; train with: fr-train {args.write_recipe}")
            return 0
        from fr.distributed import cleanup
        from fr.train.preemption import TrainingInterrupted
        from fr.train.run import train
        from fr.train.verification_hook import EvaluationFailed

        try:
            results = train(cfg)
        except TrainingInterrupted as stopped:
            print(f"fr-train: {stopped}", file=sys.stderr)
            return stopped.exit_status
        except EvaluationFailed as failed:  # model.pt and results.json are written; the traceback is logged
            print(f"fr-train: error: {failed}", file=sys.stderr)
            return 1
        finally:
            cleanup()
        if results:
            summary = {name: round(v["accuracy"], 4) for name, v in results["verification"].items()}
            before = {name: round(v["accuracy"], 4) for name, v in results["verification_untrained"].items()}
            print(json.dumps({"untrained": before, "trained": summary, "output": cfg.output.dir}))
        return 0

    return run_cli("fr-train", body)


if __name__ == "__main__":
    sys.exit(main())
