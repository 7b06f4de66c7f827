"""WebFace42M (2.06M identities, 42.5M images), iresnet50, CosFace, Partial FC 0.3.

arcface_torch's configs/wf42m_pfc03_32gpu_r50.py (commit fe116a43).
Upstream trained it on 32 GPUs x 128 images; lr and warmup assume that global batch (4096).
"""

from fr.config import inherit

config = inherit(__file__)
config.data.root = "/train_tmp/WebFace42M"
config.data.num_classes = 2059906
config.data.batch_size = 128
config.model.backbone = "iresnet50"
config.model.embedding_size = 512
config.loss.name = "cosface"
config.loss.params = {"s": 64.0, "m": 0.4}
config.partial_fc.sample_rate = 0.3
config.optim.lr = 0.4
config.optim.weight_decay = 5e-4
config.optim.warmup_epochs = 2
config.train.epochs = 20
config.train.amp = "auto"  # arcface_torch's fp16=True: fp16 on CUDA
config.eval.bins = ["lfw", "cfp_fp", "agedb_30"]
config.eval.every = 2000
config.output.dir = "work_dirs/wf42m_pfc03_r50"
