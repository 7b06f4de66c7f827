"""fr-sweep SWEEP_FILE [--resume] [--address ray://host:port | auto]: a Ray Tune sweep over fr config keys."""

from __future__ import annotations

import argparse
import sys
from typing import List, Optional

from fr.cli.common import run_cli, setup_logging


def parse_args(argv: Optional[List[str]]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="fr-sweep",
        description="Run a hyperparameter sweep of fr trainings on Ray Tune (sweep files: docs/distributed.md)",
    )
    parser.add_argument("sweep_file", help="the sweep's YAML file (base recipe, overrides, space, metric, ...)")
    parser.add_argument("--resume", action="store_true", help="finish an interrupted sweep from its saved state")
    parser.add_argument(
        "--address", default=None, help="a Ray cluster to join: ray://HOST:10001, HOST:6379 or auto (default: local)"
    )
    parser.add_argument("--check", action="store_true", help="check the sweep file and exit (no Ray needed)")
    parser.add_argument("--verbose", action="store_true")
    return parser.parse_args(argv)


def main(argv: Optional[List[str]] = None) -> int:
    args = parse_args(argv)
    setup_logging(args.verbose)

    def body() -> int:
        from fr.sweep.spec import load_sweep

        spec = load_sweep(args.sweep_file)
        if args.check:
            print(f"{args.sweep_file}: ok ({len(spec.dims)} searched key(s), metric {spec.metric} {spec.mode})")
            return 0
        from fr.sweep.runner import run_sweep

        outcome = run_sweep(spec, address=args.address, resume=args.resume)
        if outcome.interrupted:
            print(f"fr-sweep: interrupted; finish it with: fr-sweep {args.sweep_file} --resume", file=sys.stderr)
            return 130
        best = outcome.document.get("best_config")
        print(f"results in {spec.output}" + (f"; best config: {best}" if best else ""))
        return 0

    return run_cli("fr-sweep", body)


if __name__ == "__main__":
    sys.exit(main())
