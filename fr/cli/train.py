"""fr-train CONFIG [key=value ...]: train a face-recognition model (single process or under torchrun)."""

from __future__ import annotations

import argparse
import json
import sys
from typing import List, Optional

from fr.cli.common import run_cli, setup_logging


def parse_args(argv: Optional[List[str]]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="fr-train",
        description="Train with a recipe from configs/ and key=value overrides, "
        "e.g. fr-train configs/synthetic.py optim.lr=0.05 loss.name=cosface",
    )
    parser.add_argument("config", help="a recipe .py (defining `config`) or a saved config.json")
    parser.add_argument("overrides", nargs="*", help="key=value overrides of any config field")
    parser.add_argument("--print-config", action="store_true", help="print the resolved config and exit")
    parser.add_argument("--verbose", action="store_true")
    return parser.parse_args(argv)


def main(argv: Optional[List[str]] = None) -> int:
    args = parse_args(argv)
    setup_logging(args.verbose)

    def body() -> int:
        from fr.config import load_config

        cfg = load_config(args.config, args.overrides)
        if args.print_config:
            print(cfg.to_json())
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
