"""fr-export: turn a resumable checkpoint into single files.

fr-export checkpoint RUN_DIR_OR_STEP_DIR --out merged.pt   the whole training state in one file (class order)
fr-export model RUN_DIR_OR_STEP_DIR --out model.pt         the backbone's state_dict, as fr-train's model.pt
fr-export onnx --checkpoint RUN_DIR_OR_MODEL_PT --out model.onnx   the backbone as ONNX, checked in onnxruntime
"""

from __future__ import annotations

import argparse
import sys
from typing import List, Optional

from fr.cli.common import UsageError, run_cli, setup_logging


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
    _onnx_parser(commands)
    parser.add_argument("--verbose", action="store_true")
    return parser.parse_args(argv)


def _onnx_parser(commands) -> None:
    text = (
        "the backbone as ONNX (dynamic batch, input [B, 3, S, S] in the training normalisation, output the "
        "embedding), refused unless onnxruntime reproduces PyTorch's L2-normalised embeddings within 1e-4"
    )
    command = commands.add_parser("onnx", help=text, description=text)
    command.add_argument(
        "--checkpoint",
        required=True,
        help="a model.pt state_dict, a run directory, or a resumable checkpoint (checkpoints/ or a step_* directory)",
    )
    command.add_argument("--backbone", help="backbone name; needed when the checkpoint has no config.json beside it")
    command.add_argument("--embedding-size", type=int, help="embedding size (default: from config.json, else 512)")
    command.add_argument("--out", required=True, help="the .onnx file to write")
    command.add_argument("--opset", type=int, default=17, help="ONNX opset, 17 or newer (default 17)")
    command.add_argument("--json", help="also write the export report (max_abs_diff, opset, ...) to this JSON file")


def _architecture(name: str):
    """What a backbone name builds: its factory and bound defaults, so that an alias equals its target."""
    import functools

    from fr.models.registry import BACKBONES

    factory = BACKBONES.get(name)
    if isinstance(factory, functools.partial):
        return factory.func, sorted(factory.keywords.items())
    return factory, []


def _onnx(args: argparse.Namespace) -> int:
    """fr-export onnx: load the checkpoint's backbone, export it, check it, report the difference."""
    from evaluation.fileio import atomic_write_json
    from fr.export.onnx import check_opset, export_onnx
    from fr.train.model_file import find_run_config
    from fr.train.pretrained import load_backbone

    check_opset(args.opset)  # before the (slow) load
    cfg = find_run_config(args.checkpoint)
    saved = cfg.model.backbone if cfg else None
    if saved and args.backbone and _architecture(args.backbone) != _architecture(saved):
        raise UsageError(
            f"{args.checkpoint}: its config.json names backbone {saved!r}, not --backbone {args.backbone!r}; "
            "nothing written"
        )
    name = args.backbone or saved
    model = load_backbone(args.checkpoint, backbone=args.backbone, embedding_size=args.embedding_size)
    report = export_onnx(
        model, args.out, opset=args.opset, metadata={"fr.backbone": str(name), "fr.checkpoint": args.checkpoint}
    )
    report["backbone"] = name
    if args.json:
        atomic_write_json(args.json, report)
    print(
        f"fr-export: wrote {args.out} ({name}, opset {report['opset']}, input {report['input']} "
        f"{report['input_shape']}); onnxruntime vs PyTorch: max abs diff {report['max_abs_diff']:.2e} "
        f"of L2-normalised embeddings ({report['batch']} images, limit {report['tolerance']:g})"
    )
    return 0


def main(argv: Optional[List[str]] = None) -> int:
    args = parse_args(argv)
    setup_logging(args.verbose)

    def body() -> int:
        if args.command == "onnx":
            return _onnx(args)
        from fr.train.checkpoint import export_backbone, find_checkpoint, merge_checkpoint
        from fr.train.model_file import atomic_save

        step_dir = find_checkpoint(args.source)
        atomic_save(merge_checkpoint(step_dir) if args.command == "checkpoint" else export_backbone(step_dir), args.out)
        print(f"fr-export: wrote {args.out} from {step_dir}")
        return 0

    return run_cli("fr-export", body)


if __name__ == "__main__":
    sys.exit(main())
