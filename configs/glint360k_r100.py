"""Glint360K (360k identities, 17M images) with iResNet-100, CosFace and Partial FC sampling 0.1."""

from fr.config import inherit

config = inherit(__file__)
config.data.root = "/train_tmp/glint360k"
config.data.num_classes = 360232
config.model.backbone = "iresnet100"
config.loss.name = "cosface"  # s=64, m=0.4
config.partial_fc.sample_rate = 0.1
config.train.epochs = 20
config.output.dir = "work_dirs/glint360k_r100"
