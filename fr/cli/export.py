"""fr-export: turn a resumable checkpoint into single files.

fr-export checkpoint RUN_DIR_OR_STEP_DIR --out merged.pt   the whole training state in one file (class order)
fr-export model RUN_DIR_OR_STEP_DIR --out model.pt         the backbone's state_dict, as fr-train's model.pt
"""

from __future__ import annotations

import argparse
import sys
from typing import List, Optional

from fr.cli.common import run_cli, setup_logging


def parse_args(argv: Optional[List[str]]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="fr-export",
        description="Export a resumable checkpoint (a run directory, "
        "its checkpoints/ directory or one step_* directory) as a single file.",
    )
    commands = parser.add_subparsers(dest="command", required=True)
    for name, text in (
        (
            "checkpoint",
            "backbone, head_weight [C, D] in class order, the head optimizer's per-row "
            "state, step, epoch and config in one file",
        ),
        ("model", "the backbone's state_dict (model.pt)"),
    ):
        command = commands.add_parser(name, help=text, description=text)
        command.add_argument("source", metavar="RUN_DIR_OR_STEP_DIR")
        command.add_argument("--out", required=True, help="the file to write (atomically)")
    parser.add_argument("--verbose", action="store_true")
    return parser.parse_args(argv)


def main(argv: Optional[List[str]] = None) -> int:
    args = parse_args(argv)
    setup_logging(args.verbose)

    def body() -> int:
        from fr.train.checkpoint import export_backbone, find_checkpoint, merge_checkpoint
        from fr.train.model_file import atomic_save

        step_dir = find_checkpoint(args.source)
        atomic_save(merge_checkpoint(step_dir) if args.command == "checkpoint" else export_backbone(step_dir), args.out)
        print(f"fr-export: wrote {args.out} from {step_dir}")
        return 0

    return run_cli("fr-export", body)


if __name__ == "__main__":
    sys.exit(main())
