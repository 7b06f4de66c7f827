"""WebFace4M (206k identities, 4.2M images), iresnet100, CosFace.

arcface_torch's configs/wf4m_r100.py (commit 4df192b1).
Upstream trained it on 8 GPUs x 128 images; lr and warmup assume that global batch (1024).
"""

from fr.config import inherit

config = inherit(__file__)
config.data.root = "/train_tmp/WebFace4M"
config.data.num_classes = 205990
config.data.batch_size = 128
config.model.backbone = "iresnet100"
config.model.embedding_size = 512
config.loss.name = "cosface"
config.loss.params = {"s": 64.0, "m": 0.4}
config.partial_fc.sample_rate = 1.0
config.optim.lr = 0.1
config.optim.weight_decay = 5e-4
config.optim.warmup_epochs = 0
config.train.epochs = 20
config.train.amp = "auto"  # arcface_torch's fp16=True: fp16 on CUDA
config.eval.bins = ["lfw", "cfp_fp", "agedb_30"]
config.eval.every = 2000
config.output.dir = "work_dirs/wf4m_r100"
