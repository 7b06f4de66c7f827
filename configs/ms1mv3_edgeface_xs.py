"""MS1MV3 (93k identities, 5.2M images), EdgeFace-XS (gamma 0.6), CosFace.

From the EdgeFace paper (George et al., IEEE T-BIOM 2024, arXiv 2307.01838): the edgeface_xs_gamma_06 network
(EdgeNeXt-XS widths with rank-0.6 linear layers, 1.77M parameters), a 512-d embedding of 112x112 aligned faces
and the CosFace loss (s 64, m 0.4). The paper trained on WebFace260M subsets (WebFace4M/12M), not MS1MV3, and the
optimiser settings below are not from it: they are arcface_torch's AdamW recipe for small transformers
(configs/wf42m_pfc03_40epoch_8gpu_vit_t.py: lr 1e-3, weight decay 0.1, a tenth of the epochs as warmup, linear
decay), at MS1MV3's 20 epochs. Batch 128 per GPU on 8 GPUs (global 1024).
"""

from fr.config import inherit

config = inherit(__file__)
config.data.root = "/train_tmp/ms1m-retinaface-t1"
config.data.num_classes = 93431
config.data.batch_size = 128
config.model.backbone = "edgeface_xs_gamma_06"
config.model.embedding_size = 512
config.loss.name = "cosface"
config.loss.params = {"s": 64.0, "m": 0.4}
config.partial_fc.sample_rate = 1.0
config.optim.name = "adamw"
config.optim.lr = 0.001
config.optim.weight_decay = 0.1
config.optim.warmup_epochs = 2
config.train.epochs = 20
config.train.amp = "auto"  # fp16 on CUDA
config.eval.bins = ["lfw", "cfp_fp", "agedb_30"]
config.eval.every = 2000
config.output.dir = "work_dirs/ms1mv3_edgeface_xs"
