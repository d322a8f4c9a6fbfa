"""flanx: the FLAN instruction-tuning pipeline in JAX/Flax.

The package is split by responsibility (see README "Map of the repo"):
`models/` and `train/` hold the TensorFlow-free core, `data/` owns seqio and
TensorFlow, `checkpoints/` converts to and from public formats, `eval/` glues
seqio evaluation, `experiments/` runs the forgetting study.
"""

__version__ = "0.1.0"
