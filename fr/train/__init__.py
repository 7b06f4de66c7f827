"""Training: the loop, its composition from a Config, optimizers, checkpoints, logging and evaluation hooks."""
