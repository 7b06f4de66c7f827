"""MS1MV2 (85k identities, 5.8M images), iresnet18, ArcFace.

From arcface_torch's configs/ms1mv2_r50.py (commit d9cb10e6) with network r18: upstream has no ms1mv2_r18.py.
Upstream trained it on 8 GPUs x 128 images; lr and warmup assume that global batch (1024).
"""

from fr.config import inherit

config = inherit(__file__)
config.data.root = "/train_tmp/faces_emore"
config.data.num_classes = 85742
config.data.batch_size = 128
config.model.backbone = "iresnet18"
config.model.embedding_size = 512
config.loss.name = "arcface"
config.loss.params = {"s": 64.0, "m": 0.5}
config.partial_fc.sample_rate = 1.0
config.optim.lr = 0.1
config.optim.weight_decay = 1e-4
config.optim.warmup_epochs = 0
config.train.epochs = 20
config.train.amp = "auto"  # arcface_torch's fp16=True: fp16 on CUDA
config.eval.bins = ["lfw", "cfp_fp", "agedb_30"]
config.eval.every = 2000
config.output.dir = "work_dirs/ms1mv2_r18"
