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
    """(model, device): an ONNX file through onnxruntime, else a model.pt state dict, a run directory, or a
    resumable checkpoint (a run's checkpoints/ or one step_* directory)."""
    from fr.distributed import choose_device

    if args.checkpoint.endswith(".onnx"):
        import torch

        from evaluation.onnx_model import OnnxBackbone

        return OnnxBackbone(args.checkpoint), torch.device("cpu")
    from fr.train.pretrained import load_backbone

    device = device or choose_device(args.device, 0)
    return load_backbone(
        args.checkpoint, backbone=args.backbone, embedding_size=args.embedding_size, device=device
    ), device


def _bin_paths(args: argparse.Namespace) -> List[str]:
    """--bin files plus DATA_DIR/<target>.bin for each of --targets. What the user named (a --bin file, a target
    given with --targets) must exist; of the default targets, those DATA_DIR lacks are skipped with a warning."""
    paths = list(args.bin or [])
    for path in paths:
        if not os.path.isfile(path):
            raise UsageError(f"{path}: no such verification set (--bin)")
    if args.data_dir:
        requested = args.targets is not None
        names = [t.strip() for t in (args.targets if requested else VERIFY_TARGETS).split(",") if t.strip()]
        found = []
        for name in names:
            path = os.path.join(args.data_dir, f"{name}.bin")
            if os.path.isfile(path):
                found.append(path)
            elif requested:
                raise UsageError(f"{path}: no such verification set (from --data-dir/--targets)")
            else:
                print(
                    f"fr-eval: warning: {path} not found, skipped (name it in --targets to require it)", file=sys.stderr
                )
        if not found and not paths:
            raise UsageError(f"{args.data_dir}: none of the verification sets {', '.join(n + '.bin' for n in names)}")
        paths.extend(found)
    if not paths:
        raise UsageError("give --bin FILE or --data-dir DIR (with --targets)")
    return paths


def _verify(args: argparse.Namespace) -> int:
    """Each set's 10-fold metrics on flip-sum embeddings, with fr's xnorm and insightface's XNorm."""
    import torch

    from evaluation.bin_format import load_bin
    from evaluation.verification import evaluate
    from fr.train.verification_hook import FOLDS, flip_views

    paths = _bin_paths(args)
    model, device = _load_model(args)
    rows = {}
    with torch.inference_mode():
        for path in paths:
            name = os.path.splitext(os.path.basename(path))[0]
            images, issame = load_bin(path, nrof_folds=FOLDS)
            views = flip_views(model, images, args.batch_size, device)
            rows[name] = evaluate(views[0] + views[1], issame, nrof_folds=FOLDS, views=views).to_dict()
    print(f"{'set':<16}{'accuracy':>10}{'std':>10}{'xnorm':>10}{'XNorm':>10}{'TAR@1e-3':>10}{'AUC':>10}")
    for name, row in rows.items():
        print(
            f"{name:<16}{row['accuracy']:>10.5f}{row['std']:>10.5f}{row['xnorm']:>10.3f}"
            f"{row['xnorm_insightface']:>10.3f}{row['val']:>10.5f}"
            f"{row['auc'] if row['auc'] is not None else float('nan'):>10.5f}"
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


def _fpir_targets(text: str) -> tuple:
    """--fpir: comma-separated FPIR targets, each in (0, 1]."""
    try:
        targets = tuple(float(t) for t in text.split(",") if t.strip())
    except ValueError:
        raise UsageError(f"--fpir {text}: expected comma-separated numbers such as 1e-3,1e-2,1e-1") from None
    if not targets or not all(0.0 < t <= 1.0 for t in targets):
        raise UsageError(f"--fpir {text}: expected FPIR targets in (0, 1], such as 1e-3,1e-2,1e-1")
    return targets


def _ijb(args: argparse.Namespace) -> int:
    from evaluation.ijb import evaluate_11, load_meta

    fpir_targets = _fpir_targets(args.fpir)  # before embedding: a typo should not cost an hour
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
    label = os.path.basename(args.checkpoint or args.features)
    if args.protocol == "11":
        report = evaluate_11(meta, raw, **modes, **options)
        payload.update(report.to_dict())
        _print_11(args.target, report)
        if args.plot:
            from evaluation.plot import plot_roc

            plot_roc(report.roc, args.plot, label=label)
    else:
        from evaluation.identification import identify_1n

        outcome = identify_1n(meta, raw, **modes, **options, fpir_targets=fpir_targets)
        results = outcome.to_dict()
        payload.update(results)
        _print_1n(args.target, results, outcome.galleries, fpir_targets)
        if args.plot:
            from evaluation.identification import cmc_curve, det_curve
            from evaluation.plot import plot_det_cmc

            dets = {name: det_curve(res) for name, res in outcome.galleries.items()}
            cmcs = {name: cmc_curve(res) for name, res in outcome.galleries.items()}
            plot_det_cmc(dets, cmcs, args.plot, title=f"{args.target} 1:N, {label}")
    if args.json:
        atomic_write_json(args.json, payload)
    return 0


def _print_11(target: str, report) -> None:
    """The TAR@FAR table: eval_ijbc.py's figure as it prints it ('%.2f'), then fr's full-ROC and interpolated."""
    print(f"{target} 1:1  AUC {report.auc:.5f}  ({report.num_pairs} pairs, {report.num_templates} templates)")
    _print_dropped(report.dropped)
    print(f"{'FAR':<8}{'TAR %':>8}{'full ROC %':>12}{'interp %':>10}")
    for key, tar in report.tar_at_far.items():
        print(
            f"{key:<8}{tar:>8.2f}{report.tar_at_far_full_roc[key]:>12.3f}{report.tar_at_far_interpolated[key]:>10.3f}"
        )


def _print_1n(target: str, results: dict, galleries: dict, fpir_targets: tuple) -> None:
    """Per gallery: fr's CMC, insightface's TPIR, fr's exact-FPIR TPIR; the means; insightface's pooled top-k."""
    from evaluation.metrics import far_key

    keys = [far_key(f) for f in fpir_targets]
    average = results["average"]
    print(f"{target} 1:N  ({average['num_probes']} probes)")
    header = f"{'gallery':<9}{'rank1':>8}{'rank5':>8}{'rank10':>8}"
    header += "".join(f"{'TPIR@' + k:>13}" for k in keys) + "".join(f"{'exact@' + k:>13}" for k in keys)
    print(header)
    for name in [*galleries, "average"]:
        res = results[name]
        cmc = res["cmc"]
        line = f"{name:<9}{cmc['rank1']:>8.2f}{cmc['rank5']:>8.2f}{cmc['rank10']:>8.2f}"
        line += "".join(f"{res['tpir_at_fpir'][k]:>13.2f}" for k in keys)
        line += "".join(f"{res['tpir_at_fpir_exact'][k]:>13.2f}" for k in keys)
        print(line)
    pooled = average["cmc_pooled"]
    print(f"{'pooled':<9}{pooled['rank1']:>8.2f}{pooled['rank5']:>8.2f}{pooled['rank10']:>8.2f}")
    print(
        "rank-k: fr's per gallery (of mated probes) and their mean; pooled: insightface's [Mean] top-k (hits of both "
        "galleries / all probes). TPIR: insightface's evaluation_1N; exact: threshold index floor(f*n)."
    )
    _print_dropped(results["dropped"])


def _print_dropped(dropped: dict) -> None:
    """One line counting what --drop-nonfinite left out; nothing when nothing was."""
    if dropped["images"]:
        print("dropped for non-finite features: " + ", ".join(f"{what} {count}" for what, count in dropped.items()))


def _model_args(parser: argparse.ArgumentParser, required: bool) -> None:
    parser.add_argument(
        "--checkpoint",
        required=required,
        help="a model.pt state_dict, a run directory, a resumable checkpoint (a run's checkpoints/ or one step_* "
        "directory), or an .onnx file",
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
    verify.add_argument(
        "--data-dir", help="directory holding <target>.bin files (default targets it lacks are skipped, with a warning)"
    )
    verify.add_argument(
        "--targets", help=f"with --data-dir: sets that must be there (default: those of {VERIFY_TARGETS} present)"
    )
    verify.set_defaults(func=_verify)
    ijb = sub.add_parser("ijb", help="IJB-B / IJB-C 1:1 verification or 1:N identification")
    _model_args(ijb, required=False)
    ijb.add_argument("--root", required=True, help="directory holding IJBC/ (or IJBB/), or that directory")
    ijb.add_argument("--target", default="IJBC", choices=["IJBB", "IJBC"])
    ijb.add_argument("--protocol", default="11", choices=["11", "1n"])
    ijb.add_argument("--plot", help="plot PNG: the ROC (1:1), or DET and CMC curves per gallery (1:N)")
    ijb.add_argument(
        "--fpir",
        default="1e-2,1e-1",
        help="1:N FPIR targets, comma-separated (default 1e-2,1e-1, insightface's; e.g. 1e-3,1e-2,1e-1)",
    )
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
