"""fr-info: what a configured backbone costs.

fr-info model NAME [key=value ...] [--config RECIPE] [--json]
    parameters and GMACs of one forward pass on one image at data.image_size, counted by torch's
    FlopCounterMode on the meta device (no memory, no weights); key=value are fr config keys, e.g.
    data.image_size=96 model.embedding_size=256 'model.kwargs={"scale": 1}'.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any, Dict, List, Optional

from fr.cli.common import run_cli, setup_logging


def parse_args(argv: Optional[List[str]]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="fr-info", description="Facts about fr's components.")
    commands = parser.add_subparsers(dest="command", required=True)
    text = "parameters and GMACs (FLOPs / 2) of a backbone at the configured input size"
    model = commands.add_parser("model", help=text, description=text)
    model.add_argument("name", help="a backbone name or alias (e.g. iresnet50, r50, vit_t, edgeface_xs_gamma_06)")
    model.add_argument("overrides", nargs="*", metavar="key=value", help="fr config keys, e.g. data.image_size=96")
    model.add_argument("--config", help="start from this recipe instead of fr's defaults")
    model.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--verbose", action="store_true")
    return parser.parse_args(argv)


def model_info(name: str, overrides: List[str], config: Optional[str] = None) -> Dict[str, Any]:
    """The report for backbone `name` under fr config `overrides` (applied after `config`, if given)."""
    import torch

    from fr.config import Config, ConfigError, apply_overrides, load_file
    from fr.models.complexity import measure
    from fr.models.from_config import backbone_from_config, backbone_kwargs
    from fr.models.registry import BACKBONES

    cfg = apply_overrides(load_file(config) if config else Config(), [f"model.backbone={name}", *overrides])
    cfg.model.validate()
    if cfg.data.image_size <= 0:
        raise ConfigError(f"data.image_size must be > 0, got {cfg.data.image_size}")
    kwargs = backbone_kwargs(cfg)
    try:
        with torch.device("meta"):
            model = backbone_from_config(cfg)
        counts = measure(model, cfg.data.image_size)
    except ValueError as exc:
        raise ConfigError(f"model: {exc}") from exc
    return {
        "backbone": name,
        "registered_as": BACKBONES.resolve(name),
        "kwargs": {k: v for k, v in kwargs.items() if k != "num_features"},
        "input_size": cfg.data.image_size,
        "embedding_size": cfg.model.embedding_size,
        "parameters": counts.parameters,
        "trainable_parameters": counts.trainable_parameters,
        "mparams": round(counts.parameters / 1e6, 4),
        "macs": counts.macs,
        "gmacs": round(counts.gmacs, 4),
        "gflops": round(2 * counts.gmacs, 4),
    }


def format_info(info: Dict[str, Any]) -> str:
    alias = f" (alias of {info['registered_as']})" if info["registered_as"] != info["backbone"] else ""
    size = info["input_size"]
    rows = [
        ("backbone", f"{info['backbone']}{alias}"),
        ("input", f"[B, 3, {size}, {size}] -> [B, {info['embedding_size']}]"),
        ("kwargs", json.dumps(info["kwargs"], sort_keys=True)),
        (
            "parameters",
            f"{info['parameters']:,} ({info['mparams']:.2f} M; trainable {info['trainable_parameters']:,})",
        ),
        ("GMACs", f"{info['gmacs']:.3f} per image ({info['gflops']:.3f} GFLOPs, 2 per multiply-add)"),
    ]
    return "\n".join(f"{key:<11} {value}" for key, value in rows)


def main(argv: Optional[List[str]] = None) -> int:
    args = parse_args(argv)
    setup_logging(args.verbose)

    def body() -> int:
        info = model_info(args.name, args.overrides, args.config)
        print(json.dumps(info, indent=2) if args.json else format_info(info))
        return 0

    return run_cli("fr-info", body)


if __name__ == "__main__":
    sys.exit(main())
