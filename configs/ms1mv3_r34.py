"""MS1MV3 (93k identities, 5.2M images), iresnet34, ArcFace.

From arcface_torch's configs/ms1mv3_r50.py (commit 5ef98047) with network r34: upstream has no ms1mv3_r34.py.
Upstream trained it on 8 GPUs x 128 images; lr and warmup assume that global batch (1024).
"""

from fr.config import inherit

config = inherit(__file__)
config.data.root = "/train_tmp/ms1m-retinaface-t1"
config.data.num_classes = 93431
config.data.batch_size = 128
config.model.backbone = "iresnet34"
config.model.embedding_size = 512
config.loss.name = "arcface"
config.loss.params = {"s": 64.0, "m": 0.5}
config.partial_fc.sample_rate = 1.0
config.optim.lr = 0.2
config.optim.weight_decay = 5e-4
config.optim.warmup_epochs = 2
config.train.epochs = 25
config.train.amp = "auto"  # arcface_torch's fp16=True: fp16 on CUDA
config.eval.bins = ["lfw", "cfp_fp", "agedb_30"]
config.eval.every = 2000
config.output.dir = "work_dirs/ms1mv3_r34"
