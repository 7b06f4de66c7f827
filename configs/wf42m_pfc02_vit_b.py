"""WebFace42M (2.06M identities, 42.5M images), ViT-B, CosFace, AdamW, gradient checkpointing.

arcface_torch's ViT-B recipe, configs/wf42m_pfc03_40epoch_8gpu_vit_b.py (commit 4f227ba5): network
"vit_b_dp005_mask_005" (vit_b with drop path and token masking 0.05), AdamW lr 1e-3 / weight decay 0.1, 8 GPUs x
256 images with gradient accumulation 12 (global batch 24576), 40 epochs with 4 of linear warmup, then linear
decay, and the blocks checkpointed as upstream builds vit_b. Partial FC samples 0.2 of the classes, as this
recipe's name says; upstream's file samples 0.3 (set partial_fc.sample_rate=0.3 to match it exactly).
"""

from fr.config import inherit

config = inherit(__file__)
config.data.root = "/train_tmp/WebFace42M"
config.data.num_classes = 2059906
config.data.batch_size = 256
config.model.backbone = "vit_b_dp005_mask_005"
config.model.embedding_size = 512
config.model.grad_checkpoint = True
config.loss.name = "cosface"
config.loss.params = {"s": 64.0, "m": 0.4}
config.partial_fc.sample_rate = 0.2
config.optim.name = "adamw"
config.optim.lr = 0.001
config.optim.weight_decay = 0.1
config.optim.warmup_epochs = 4  # upstream's num_epoch // 10
config.optim.gradient_accumulation = 12  # upstream's gradient_acc
config.train.epochs = 40
config.train.amp = "auto"  # arcface_torch's fp16=True: fp16 on CUDA
config.eval.bins = []  # upstream's val_targets = []
config.output.dir = "work_dirs/wf42m_pfc02_vit_b"
