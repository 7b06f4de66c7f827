"""The main job: procedural faces, generated on first use, a slim iResNet-18 trained on a 2-core CPU in ~6 minutes.

`fr-train configs/synthetic.py` renders the set into data.root (cached), evaluates the held-out pairs with
the untrained network, trains, evaluates again and writes model.pt, TensorBoard logs and results.json.
"""

from fr.config import inherit

config = inherit(__file__)
config.data.root = "work_dirs/synthetic_data"
config.data.synthetic = True
config.data.synth.identities = 600
config.data.synth.per_identity = 20
config.data.synth.holdout_identities = 300
config.data.synth.pairs = 1200
config.data.batch_size = 64
config.data.num_workers = 1
# iResNet-18 at a quarter of the width with a stride-2 stem: trains at ~220 images/s on 2 CPU cores
config.model.backbone = "iresnet18"
config.model.embedding_size = 128
config.model.kwargs = {"width": 16, "stem_stride": 2}
config.train.channels_last = True
config.loss.name = "arcface"
config.optim.name = "sgd"
config.optim.lr = 0.1
config.optim.warmup_epochs = 0.5
config.optim.schedule, config.optim.power = "poly_legacy", 2.0  # the schedule the README's figure was measured with
config.train.epochs = 6
config.train.log_every = 50
config.eval.bins = ["synthetic_val.bin"]
config.eval.every = 0
config.eval.at_start = True
config.eval.batch_size = 200
config.output.dir = "work_dirs/synthetic"
