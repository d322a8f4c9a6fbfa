"""Model configuration for flanx's T5: `T5Config`, `LoraConfig` and the named presets.

Both configs are frozen (hashable) dataclasses, so they can be passed as static
arguments to jitted functions. `PRESETS` is the one table of model sizes (a
`flanx.registry.Registry`); `get_config(name, **overrides)` returns a preset:

- `tiny`: a small T5 v1.1 for tests and the demo (vocab 384 covers
  seqio.ByteVocabulary's 259 ids); `tiny_spm`: the same with FLAN-T5's
  vocab_size 32128, for tasks using the T5 SentencePiece vocabulary;
- `t5_1_1_{small,base,large,xl,xxl}` and `flan_t5_{small,base,large,xl,xxl}`:
  the published T5 v1.1 / FLAN-T5 sizes (gated-GELU, untied logits);
- `t5_{small,base}`: the original T5 (ReLU MLP, logits through the tied
  embedding scaled by d_model**-0.5).

A new size is one registered entry, `PRESETS.register("my_t5", T5Config(...))`;
the gin files in `t5x_configs/models/<name>.gin` only name a preset
(`flanx.get_config.name = '<name>'`) and never repeat its numbers.
"""
from __future__ import annotations

import dataclasses
import numbers
import operator
from typing import Optional

from flanx.registry import Registry

ACTIVATIONS = ("gelu", "relu", "silu", "linear")
DTYPES = ("float32", "bfloat16")
REMAT_POLICIES = ("none", "full", "dots_saveable")
# Dense layers LoRA can adapt, by their parameter name.
LORA_TARGETS = ("query", "key", "value", "out", "wi", "wi_0", "wi_1", "wo")


def _is_real(value) -> bool:
    """An int or float (numpy scalars too), not a bool or a string."""
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


@dataclasses.dataclass(frozen=True)
class LoraConfig:
    """Low-rank adapters: `kernel + (alpha / rank) * lora_a @ lora_b` on each target."""

    rank: int = 8
    alpha: float = 16.0
    dropout: float = 0.0
    targets: tuple = ("query", "value")

    def __post_init__(self):
        object.__setattr__(self, "targets", tuple(self.targets))
        if not isinstance(self.rank, int) or self.rank <= 0:
            raise ValueError(f"LoraConfig.rank must be positive, got {self.rank}")
        if not _is_real(self.dropout) or not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"LoraConfig.dropout must be in [0, 1), got {self.dropout}")
        bad = [t for t in self.targets if t not in LORA_TARGETS]
        if bad or not self.targets:
            raise ValueError(f"LoraConfig.targets {self.targets!r}: unknown {bad}; "
                             f"choose from {LORA_TARGETS}")

    @property
    def scale(self) -> float:
        return self.alpha / self.rank


@dataclasses.dataclass(frozen=True)
class T5Config:
    """Sizes and options of a T5 encoder-decoder.

    mlp_activations: ("gelu", "linear") is T5 v1.1's gated GELU (tanh
      approximation); ("relu",) is the original T5 MLP. One activation gives a
      `wi` kernel, several give `wi_0, wi_1, ...` multiplied together.
    logits_via_embedding: original T5: logits from the tied token embedding,
      decoder output scaled by d_model**-0.5; otherwise an untied `logits_dense`.
    dtype: activation dtype; parameters are always float32.
    scan_layers: stack each stack's layers with nn.scan (layer axis at position 1).
    remat_policy: "none", "full" (recompute everything) or "dots_saveable".
    """

    vocab_size: int
    d_model: int
    num_heads: int
    head_dim: int
    d_ff: int
    num_encoder_layers: int
    num_decoder_layers: int
    relative_attention_num_buckets: int = 32
    relative_attention_max_distance: int = 128
    dropout_rate: float = 0.1
    mlp_activations: tuple = ("gelu", "linear")
    logits_via_embedding: bool = False
    layer_norm_epsilon: float = 1e-6
    dtype: str = "float32"
    scan_layers: bool = False
    remat_policy: str = "none"
    lora: Optional[LoraConfig] = None

    def __post_init__(self):
        object.__setattr__(self, "mlp_activations", tuple(self.mlp_activations))
        for name in ("vocab_size", "d_model", "num_heads", "head_dim", "d_ff",
                     "num_encoder_layers", "num_decoder_layers",
                     "relative_attention_num_buckets", "relative_attention_max_distance"):
            value = getattr(self, name)
            try:
                value = operator.index(value)  # numpy ints pass, floats fail
            except TypeError:
                value = None
            if value is None or isinstance(getattr(self, name), bool) or value <= 0:
                raise ValueError(f"T5Config.{name} must be a positive int, got {getattr(self, name)!r}")
            object.__setattr__(self, name, int(value))
        bad = [a for a in self.mlp_activations if a not in ACTIVATIONS]
        if bad or not self.mlp_activations:
            raise ValueError(f"T5Config.mlp_activations {self.mlp_activations!r}: "
                             f"unknown {bad}; choose from {ACTIVATIONS}")
        if self.dtype not in DTYPES:
            raise ValueError(f"T5Config.dtype {self.dtype!r}: choose from {DTYPES}")
        if self.remat_policy not in REMAT_POLICIES:
            raise ValueError(f"T5Config.remat_policy {self.remat_policy!r}: "
                             f"choose from {REMAT_POLICIES}")
        if not _is_real(self.dropout_rate) or not 0.0 <= self.dropout_rate < 1.0:
            raise ValueError(f"T5Config.dropout_rate (DROPOUT_RATE) must be a number in [0, 1), "
                             f"got {self.dropout_rate!r}")
        if self.lora is not None and not isinstance(self.lora, LoraConfig):
            raise ValueError(f"T5Config.lora must be a LoraConfig or None, got {self.lora!r}")

    @property
    def inner_dim(self) -> int:
        """Width of the joined attention heads (heads * head_dim)."""
        return self.num_heads * self.head_dim

    def replace(self, **changes) -> "T5Config":
        return dataclasses.replace(self, **changes)


# The one table of model sizes: name -> T5Config.
PRESETS: Registry[T5Config] = Registry(
    "model config", hint="Register a new size with flanx.models.config.PRESETS.register(name, T5Config(...)).")

# (d_model, num_heads, d_ff, num_layers) of the published T5 v1.1 / FLAN-T5 sizes.
_V1_1_SIZES = {
    "small": (512, 6, 1024, 8),
    "base": (768, 12, 2048, 12),
    "large": (1024, 16, 2816, 24),
    "xl": (2048, 32, 5120, 24),
    "xxl": (4096, 64, 10240, 24),
}
# The original T5 (ReLU, tied embedding): small 512/8 heads/6+6/2048, base 768/12/12+12/3072.
_ORIGINAL_SIZES = {"small": (512, 8, 2048, 6), "base": (768, 12, 3072, 12)}


def _register_builtin_presets() -> None:
    tiny = T5Config(vocab_size=384, d_model=64, num_heads=4, head_dim=16, d_ff=128,
                    num_encoder_layers=2, num_decoder_layers=2, dropout_rate=0.0)
    PRESETS.register("tiny", tiny)
    PRESETS.register("tiny_spm", tiny.replace(vocab_size=32128))  # tiny for T5 SentencePiece (32,100 ids) tasks
    for size, (d_model, heads, d_ff, layers) in _V1_1_SIZES.items():
        v1_1 = T5Config(vocab_size=32128, d_model=d_model, num_heads=heads, head_dim=64, d_ff=d_ff,
                        num_encoder_layers=layers, num_decoder_layers=layers)
        PRESETS.register(f"t5_1_1_{size}", v1_1)
        PRESETS.register(f"flan_t5_{size}", v1_1)  # FLAN-T5: the T5 v1.1 architecture, instruction-tuned
    for size, (d_model, heads, d_ff, layers) in _ORIGINAL_SIZES.items():
        PRESETS.register(f"t5_{size}", T5Config(
            vocab_size=32128, d_model=d_model, num_heads=heads, head_dim=64, d_ff=d_ff,
            num_encoder_layers=layers, num_decoder_layers=layers, mlp_activations=("relu",),
            logits_via_embedding=True))


_register_builtin_presets()


def get_config(name: str, **overrides) -> T5Config:
    """The preset `name` with fields replaced by `overrides` (e.g. lora=LoraConfig(rank=32))."""
    preset = PRESETS.check(name, f"get_config({name!r})")
    fields = {f.name for f in dataclasses.fields(T5Config)}
    unknown = sorted(set(overrides) - fields)
    if unknown:
        raise ValueError(f"get_config({name!r}): unknown T5Config fields {unknown}; "
                         f"valid fields: {sorted(fields)}")
    return dataclasses.replace(preset, **overrides)
