"""fr-eval: evaluate a checkpoint. `verify` runs the LFW-style protocol on .bin sets, `ijb` IJB-B/IJB-C 1:1 and 1:N."""

from __future__ import annotations

import argparse
import os
import sys
from typing import List, Optional

from evaluation.fileio import atomic_write, atomic_write_json
from fr.cli.common import UsageError, run_cli, setup_logging

VERIFY_TARGETS = "lfw,cfp_fp,agedb_30,calfw,cplfw"


def _load_model(args: argparse.Namespace, device=None):
    """(model, device): an ONNX file through onnxruntime, else an fr checkpoint / model.pt state dict."""
    from fr.distributed import choose_device

    if args.checkpoint.endswith(".onnx"):
        import torch

        from evaluation.onnx_model import OnnxBackbone

        return OnnxBackbone(args.checkpoint), torch.device("cpu")
    from fr.train.model_file import load_backbone

    device = device or choose_device(args.device, 0)
    return load_backbone(
        args.checkpoint, backbone=args.backbone, embedding_size=args.embedding_size, device=device
    ), device


def _bin_paths(args: argparse.Namespace) -> List[str]:
    """--bin files plus DATA_DIR/<target>.bin for each of --targets."""
    paths = list(args.bin or [])
    if args.data_dir:
        for name in filter(None, (t.strip() for t in args.targets.split(","))):
            path = os.path.join(args.data_dir, f"{name}.bin")
            if not os.path.isfile(path):
                raise UsageError(f"{path}: no such verification set (from --data-dir/--targets)")
            paths.append(path)
    if not paths:
        raise UsageError("give --bin FILE or --data-dir DIR (with --targets)")
    return paths


def _verify(args: argparse.Namespace) -> int:
    import torch

    from evaluation.embed import verify_bin

    paths = _bin_paths(args)
    model, device = _load_model(args)
    rows = {}
    with torch.inference_mode():
        for path in paths:
            name = os.path.splitext(os.path.basename(path))[0]
            rows[name] = verify_bin(model, path, batch_size=args.batch_size, device=device).to_dict()
    print(f"{'set':<16}{'accuracy':>10}{'std':>10}{'xnorm':>10}{'TAR@1e-3':>10}{'AUC':>10}")
    for name, row in rows.items():
        print(
            f"{name:<16}{row['accuracy']:>10.5f}{row['std']:>10.5f}{row['xnorm']:>10.3f}"
            f"{row['val']:>10.5f}{row['auc'] if row['auc'] is not None else float('nan'):>10.5f}"
        )
    if args.json:
        atomic_write_json(args.json, {"checkpoint": args.checkpoint, "results": rows})
    return 0


def _ijb_features(args: argparse.Namespace, meta):
    """Per-image raw features in meta row order: loaded from --features or embedded from the checkpoint."""
    import numpy as np
    import torch

    from evaluation.embed import embed_images
    from evaluation.ijb import embed_meta, load_features
    from evaluation.sharding import gather_rows, shard_rows
    from fr.distributed import init_distributed

    env = init_distributed(args.device)  # under torchrun each rank embeds a shard; rank 0 scores
    if args.features:
        if not env.is_main:  # nothing to share out: rank 0 evaluates the file alone
            return None
        if not os.path.isfile(args.features):
            raise UsageError(f"{args.features}: feature file not found")
        return load_features(args.features, len(meta.names))
    if not args.checkpoint:
        raise UsageError("give --checkpoint (to embed the images) or --features FILE.npy")
    model, device = _load_model(args, env.device)
    rows = shard_rows(len(meta.names), env.rank, env.world_size)
    with torch.inference_mode():
        local = embed_meta(
            meta,
            lambda batch: embed_images(model, batch, batch_size=args.batch_size, device=device, flip=False),
            batch_size=args.batch_size,
            rows=rows,
            progress=env.is_main and sys.stderr.isatty(),
        )
    gather_device = env.device if env.device.type == "cuda" else None
    raw = gather_rows(local, len(meta.names), env.rank, env.world_size, gather_device)
    if raw is None:  # not rank 0: its part is done
        return None
    if args.save_features:
        atomic_write(args.save_features, lambda fh: np.save(fh, raw))
    return raw


def _ijb(args: argparse.Namespace) -> int:
    from evaluation.ijb import evaluate_11, load_meta

    meta = load_meta(args.root, args.target)
    raw = _ijb_features(args, meta)
    if raw is None:
        return 0
    modes = dict(flip=not args.no_flip, norm=not args.no_norm, detector=not args.no_detector)
    payload = {
        "checkpoint": args.checkpoint,
        "features": args.features,
        "target": args.target,
        "protocol": args.protocol,
        "modes": modes,
    }
    options = dict(
        drop_nonfinite=args.drop_nonfinite, source=args.features or f"the features embedded from {args.checkpoint}"
    )
    if args.protocol == "11":
        report = evaluate_11(meta, raw, **modes, **options)
        payload.update(report.to_dict())
        print(f"{args.target} 1:1  AUC {report.auc:.5f}  ({report.num_pairs} pairs, {report.num_templates} templates)")
        _print_dropped(report.dropped)
        print(f"{'FAR':<8}{'TAR %':>10}{'interp %':>10}")
        for key, tar in report.tar_at_far.items():
            print(f"{key:<8}{tar:>10.3f}{report.tar_at_far_interpolated[key]:>10.3f}")
        if args.plot:
            from evaluation.plot import plot_roc

            plot_roc(report.roc, args.plot, label=os.path.basename(args.checkpoint or args.features))
    else:
        from evaluation.identification import evaluate_1n

        results = evaluate_1n(meta, raw, **modes, **options)
        payload.update(results)
        print(
            f"{args.target} 1:N  {'gallery':<8}{'rank1':>8}{'rank5':>8}{'rank10':>8}{'TPIR@1e-2':>11}{'TPIR@1e-1':>11}"
        )
        for name, res in results.items():
            if name == "dropped":
                continue
            cmc, tpir = res["cmc"], res["tpir_at_fpir"]
            print(
                f"{'':<9}{name:<8}{cmc['rank1']:>8.2f}{cmc['rank5']:>8.2f}{cmc['rank10']:>8.2f}"
                f"{tpir['1e-02']:>11.2f}{tpir['1e-01']:>11.2f}"
            )
        _print_dropped(results["dropped"])
    if args.json:
        atomic_write_json(args.json, payload)
    return 0


def _print_dropped(dropped: dict) -> None:
    """One line counting what --drop-nonfinite left out; nothing when nothing was."""
    if dropped["images"]:
        print("dropped for non-finite features: " + ", ".join(f"{what} {count}" for what, count in dropped.items()))


def _model_args(parser: argparse.ArgumentParser, required: bool) -> None:
    parser.add_argument(
        "--checkpoint", required=required, help="a run directory, a model.pt state_dict, or an .onnx file"
    )
    parser.add_argument("--backbone", help="backbone name when the checkpoint has no config.json beside it")
    parser.add_argument("--embedding-size", type=int, help="embedding size (default: from config.json, else 512)")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    parser.add_argument("--json", help="write results to this JSON file")


def parse_args(argv: Optional[List[str]]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="fr-eval", description="evaluate face-recognition checkpoints")
    parser.add_argument("--verbose", action="store_true")
    sub = parser.add_subparsers(dest="command", required=True)
    verify = sub.add_parser("verify", help="LFW-style verification accuracy on .bin pair sets")
    _model_args(verify, required=True)
    verify.add_argument("--bin", action="append", help=".bin file (repeatable)")
    verify.add_argument("--data-dir", help="directory holding <target>.bin files")
    verify.add_argument("--targets", default=VERIFY_TARGETS, help=f"with --data-dir (default {VERIFY_TARGETS})")
    verify.set_defaults(func=_verify)
    ijb = sub.add_parser("ijb", help="IJB-B / IJB-C 1:1 verification or 1:N identification")
    _model_args(ijb, required=False)
    ijb.add_argument("--root", required=True, help="directory holding IJBC/ (or IJBB/), or that directory")
    ijb.add_argument("--target", default="IJBC", choices=["IJBB", "IJBC"])
    ijb.add_argument("--protocol", default="11", choices=["11", "1n"])
    ijb.add_argument("--plot", help="ROC plot PNG (1:1)")
    ijb.add_argument("--features", help="precomputed per-image features .npy, (N, D) or (N, 2, D)")
    ijb.add_argument("--save-features", help="save the embedded (N, 2, D) features to this .npy")
    ijb.add_argument("--no-flip", action="store_true", help="original view only (F1 off)")
    ijb.add_argument("--no-norm", action="store_true", help="L2-normalise image features (N1 off)")
    ijb.add_argument("--no-detector", action="store_true", help="ignore detector scores (D1 off)")
    ijb.add_argument(
        "--drop-nonfinite",
        action="store_true",
        help="leave out images whose features hold NaN/inf (and templates left without images), "
        "counted in the report, instead of stopping with an error",
    )
    ijb.set_defaults(func=_ijb)
    return parser.parse_args(argv)


def main(argv: Optional[List[str]] = None) -> int:
    args = parse_args(argv)
    setup_logging(args.verbose)
    return run_cli("fr-eval", lambda: args.func(args))


if __name__ == "__main__":
    sys.exit(main())
