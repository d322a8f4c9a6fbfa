"""flanx.models: T5 / FLAN-T5 in Flax linen (TensorFlow-free).

Public API (docs/architecture.md): `T5Config`, `LoraConfig`, `get_config`,
`Transformer`, `init_params`, `param_axes`, and the submodules `decoding`
(greedy / beam / sampling / score) and `lora`. Restacking existing params
between the per-layer and scanned layouts is `flanx.checkpoints.stack_layers`
/ `unstack_layers`.
"""
from flanx.models.config import LoraConfig, T5Config, get_config
from flanx.models.network import Transformer, init_params, param_axes

__all__ = ["LoraConfig", "T5Config", "get_config", "Transformer", "init_params", "param_axes"]
