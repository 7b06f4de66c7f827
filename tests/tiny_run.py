"""Test helper: overrides of configs/synthetic.py for a tiny run (16 identities x 8 images, slim iResNet-18).

    from tiny_run import RECIPE, tiny_overrides       # pytest puts tests/ on sys.path
    train_main([RECIPE] + tiny_overrides(data_dir, out_dir, **{"train.max_steps": 3}))
"""
import os

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RECIPE = os.path.join(ROOT, "configs", "synthetic.py")


def tiny_overrides(data_dir, out_dir, **extra):
    """`key=value` strings: the tiny data set and model, 6 steps with evaluation; `extra` adds or replaces."""
    values = {
        "data.root": data_dir, "data.synth.identities": 16, "data.synth.per_identity": 8,
        "data.synth.holdout_identities": 12, "data.synth.pairs": 40, "data.synth.workers": 2,
        "data.batch_size": 16, "data.num_workers": 0, "model.kwargs": '{"width": 16, "stem_stride": 2}',
        "model.embedding_size": 64, "train.max_steps": 6, "train.log_every": 2, "eval.every": 3,
        "eval.at_start": "true", "output.dir": out_dir,
    }
    values.update(extra)
    return [f"{k}={v}" for k, v in values.items()]
