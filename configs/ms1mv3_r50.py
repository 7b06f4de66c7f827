"""MS1MV3 (93k identities, 5.2M images) with iResNet-50 and ArcFace, as arcface_torch's ms1mv3_r50."""

from fr.config import inherit

config = inherit(__file__)
config.data.root = "/train_tmp/ms1m-retinaface-t1"
config.data.num_classes = 93431
config.train.epochs = 20
config.output.dir = "work_dirs/ms1mv3_r50"
