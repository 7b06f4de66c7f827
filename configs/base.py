"""Base recipe: arcface_torch's configs/base.py (ArcFace, iResNet-50, SGD 0.1, linear decay, batch 128 per GPU).

Recipes start from it with `config = inherit(__file__)` and change what differs.
"""

from fr.config import Config

config = Config()
config.model.backbone = "iresnet50"
config.model.embedding_size = 512
config.loss.name = "arcface"  # s=64, m=0.5
config.partial_fc.sample_rate = 1.0
config.optim.name = "sgd"
config.optim.lr = 0.1
config.optim.momentum = 0.9
config.optim.weight_decay = 5e-4
config.optim.warmup_epochs = 0
config.data.batch_size = 128
config.data.num_workers = 2
config.train.epochs = 20
config.train.log_every = 10  # arcface_torch's frequent
config.eval.bins = ["lfw", "cfp_fp", "agedb_30"]
config.eval.every = 2000
config.output.dir = "work_dirs/base"
