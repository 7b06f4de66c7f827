"""WebFace12M (618k identities, 12.7M images), iresnet100, CosFace, Partial FC 0.2.

arcface_torch's configs/wf12m_pfc02_r100.py (commit 4df192b1).
Upstream trained it on 8 GPUs x 128 images; lr and warmup assume that global batch (1024).
"""

from fr.config import inherit

config = inherit(__file__)
config.data.root = "/train_tmp/WebFace12M"
config.data.num_classes = 617970
config.data.batch_size = 128
config.model.backbone = "iresnet100"
config.model.embedding_size = 512
config.loss.name = "cosface"
config.loss.params = {"s": 64.0, "m": 0.4}
config.partial_fc.sample_rate = 0.2
config.optim.lr = 0.1
config.optim.weight_decay = 5e-4
config.optim.warmup_epochs = 0
config.train.epochs = 20
config.train.amp = "auto"  # arcface_torch's fp16=True: fp16 on CUDA
config.eval.bins = []
config.eval.every = 2000
config.output.dir = "work_dirs/wf12m_pfc02_r100"
