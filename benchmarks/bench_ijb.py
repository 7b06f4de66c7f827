"""IJB-C-scale 1:1 benchmark on synthetic features: template pooling, pair scoring and the ROC table (JSON).

Sizes follow IJB-C: 469,375 images, 23,124 templates, 15,658,489 pairs (3,531 enrolment templates against
19,593 verification templates, 19,557 genuine), D = 512. Features are random; only speed and memory matter.
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import time

import numpy as np

from evaluation.ijb import pool_templates, score_pairs, template_rows
from evaluation.metrics import auc, verification_table


def make_case(images: int, templates: int, enrol: int, pairs: int, genuine: int, dim: int, seed: int = 0):
    """Random per-image features, template/media ids and a gallery-by-probe pair list of the given sizes."""
    rng = np.random.default_rng(seed)
    template_of = np.sort(np.r_[np.arange(templates), rng.integers(0, templates, images - templates)])
    media = template_of * 8 + rng.integers(0, 8, images)
    raw = rng.standard_normal((images, dim), dtype=np.float32)
    det = rng.uniform(0.5, 1.0, images).astype(np.float32)
    t1 = np.sort(rng.integers(0, enrol, pairs))  # the IJB-C pair file is grouped by enrolment template
    t2 = rng.integers(enrol, templates, pairs)
    labels = np.zeros(pairs, bool)
    labels[rng.choice(pairs, genuine, replace=False)] = True
    return raw, det, template_of, media, t1, t2, labels


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=469_375)
    parser.add_argument("--templates", type=int, default=23_124)
    parser.add_argument("--enrol", type=int, default=3_531)
    parser.add_argument("--pairs", type=int, default=15_658_489)
    parser.add_argument("--genuine", type=int, default=19_557)
    parser.add_argument("--dim", type=int, default=512)
    args = parser.parse_args()
    raw, det, tid, mid, t1, t2, labels = make_case(
        args.images, args.templates, args.enrol, args.pairs, args.genuine, args.dim
    )
    rss_inputs = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    t0 = time.perf_counter()
    ids, pooled = pool_templates(raw, tid, mid, det)
    t1_ = time.perf_counter()
    scores = score_pairs(pooled, template_rows(ids, t1), template_rows(ids, t2))
    t2_ = time.perf_counter()
    roc, table = verification_table(scores, labels)
    area = auc(roc.fpr, roc.tpr)
    t3 = time.perf_counter()
    print(
        json.dumps(
            {
                "benchmark": "ijb_11",
                "images": args.images,
                "templates": args.templates,
                "pairs": args.pairs,
                "dim": args.dim,
                "pool_s": round(t1_ - t0, 3),
                "score_s": round(t2_ - t1_, 3),
                "roc_s": round(t3 - t2_, 3),
                "total_s": round(t3 - t0, 3),
                "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
                "rss_after_inputs_mb": round(rss_inputs, 1),
                "auc": round(area, 4),
                "tar_at_far": table["nearest"],
                "cpu": platform.processor() or platform.machine(),
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
