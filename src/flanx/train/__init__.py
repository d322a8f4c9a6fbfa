"""Training: configs, optimizers, losses, the train step, checkpoints and the loop.

TensorFlow- and seqio-free. The plain-Python entry is
`flanx.train.trainer.train(train_cfg, model_config, data_iter_factory, ...)`;
`python -m flanx.train` (gin) lives in `flanx.entrypoints`.
"""
from flanx.train.config import LossConfig, MeshConfig, OptimizerConfig, TrainConfig

__all__ = ["LossConfig", "MeshConfig", "OptimizerConfig", "TrainConfig"]
