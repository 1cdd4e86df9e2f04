"""ckptlab: pre-train with kept checkpoints, continue pre-training, fine-tune, evaluate and report."""

__version__ = "0.1.0"
