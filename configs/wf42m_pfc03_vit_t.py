"""WebFace42M (2.06M identities, 42.5M images), ViT-T, CosFace, Partial FC 0.3, AdamW.

arcface_torch's configs/wf42m_pfc03_40epoch_8gpu_vit_t.py (commit 5ef98047): network "vit_t_dp005_mask0"
(vit_t with drop path 0.05 and no token masking), AdamW lr 1e-3 / weight decay 0.1, 40 epochs with 4 of linear
warmup, then linear decay. Upstream trained it on 8 GPUs x 384 images; lr and warmup assume that global batch (3072).
"""

from fr.config import inherit

config = inherit(__file__)
config.data.root = "/train_tmp/WebFace42M"
config.data.num_classes = 2059906
config.data.batch_size = 384
config.model.backbone = "vit_t_dp005_mask0"
config.model.embedding_size = 512
config.loss.name = "cosface"
config.loss.params = {"s": 64.0, "m": 0.4}
config.partial_fc.sample_rate = 0.3
config.optim.name = "adamw"
config.optim.lr = 0.001
config.optim.weight_decay = 0.1
config.optim.warmup_epochs = 4  # upstream's num_epoch // 10
config.train.epochs = 40
config.train.amp = "auto"  # arcface_torch's fp16=True: fp16 on CUDA
config.eval.bins = []  # upstream's val_targets = []
config.output.dir = "work_dirs/wf42m_pfc03_vit_t"
