"""Study arms: one registered function each, returning the arm's training plan.

An arm is how a model is obtained from the base for the target task. Each is
one function registered in `ARMS` that gets an `ArmContext` (the study
config, the base parameters, the seed, helpers) and the value of its knob,
and returns an `ArmPlan`: what to train on (mixture), which model (config),
from which parameters, with which optimizer and learning rate and which extra
loss, or, for an evaluation-only arm, the parameters to evaluate. The study
runs every plan the same way; nothing else knows arm names.

Built-in arms (knob: what `StudyConfig.knobs[arm]` sweeps):

| arm | knob | what |
|---|---|---|
| `single_task` | - | full fine-tune on the target task |
| `replay` | `ratio` | target mixed with the base mixture; `ratio` = share of replayed examples |
| `l2sp` | `coef` | full fine-tune + coef/2 * ||θ - θ_base||² (L2-SP) |
| `ewc` | `coef` | full fine-tune + coef/2 * sum F (θ - θ_base)², F the diagonal Fisher on the base mixture |
| `lora` | `rank` | LoRA adapters (`StudyConfig.lora` with this rank, alpha scaled to keep alpha/rank), base frozen |
| `wise_ft` | `alpha` | no training: (1 - alpha) * θ_base + alpha * θ_arm, θ_arm = `StudyConfig.wise_ft_source` |

Add one with a function and a gin line:

    from flanx.experiments.arms import ArmPlan, register_arm

    @register_arm("half_lr", description="full fine-tune at half the learning rate")
    def half_lr(ctx, _):
        return ArmPlan(ctx.model_config, mixture=ctx.cfg.target_task, init_params=ctx.base,
                       optimizer=ctx.optimizer(ctx.cfg.arm_learning_rate / 2))

    flanx.StudyConfig.arms = ('single_task', 'half_lr')
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Callable

import jax
import numpy as np

from flanx.registry import Registry
from flanx.train.config import OptimizerConfig
from flanx.train.regularizers import ExtraLoss, ewc_loss, l2_sp_loss

BASE = "base"


@dataclass(frozen=True)
class ArmPlan:
    """What one arm variant does for one seed.

    Training arms set `mixture` (and the rest); evaluation-only arms set
    `params` (host parameters of `model_config`), or `same_as`: a variant whose
    parameters are exactly these, whose evaluation is then reused.
    """
    model_config: Any
    mixture: str | None = None
    init_params: Any = None
    optimizer: OptimizerConfig | None = None
    extra_loss: ExtraLoss | None = None
    params: Any = None
    same_as: str | None = None

    @property
    def trains(self) -> bool:
        return self.mixture is not None

    def describe(self) -> str:
        """The optimizer (and extra loss) in words, for the report."""
        if not self.trains:
            return "none (evaluation only)"
        opt = self.optimizer
        text = f"{opt.name}, lr {opt.learning_rate:g}"
        if opt.name == "adafactor" and not opt.multiply_by_parameter_scale:
            text += ", no parameter scaling"
        if self.model_config.lora is not None:
            text += f"; LoRA r={self.model_config.lora.rank} alpha={self.model_config.lora.alpha:g} on adapters only"
        if self.extra_loss is not None:
            text += f"; + {self.extra_loss.name} penalty"
        return text


@dataclass(frozen=True)
class Arm:
    fn: Callable[["ArmContext", Any], ArmPlan]
    knob: str | None = None          # name of the swept value (None: one variant)
    defaults: tuple = ()             # knob values when StudyConfig.knobs does not name the arm
    description: str = ""
    evaluation_only: bool = False    # runs after the training arms (it may read their parameters)


ARMS: Registry[Arm] = Registry(
    "study arm", hint="Register one with @flanx.experiments.arms.register_arm('name').")


def register_arm(name: str, knob: str | None = None, defaults: tuple = (), description: str = "",
                 evaluation_only: bool = False, override: bool = False):
    """Decorator: register `fn(ctx, value) -> ArmPlan` as arm `name` (with knob values `defaults`)."""
    def add(fn):
        if knob is not None and not defaults:
            raise ValueError(f"arm {name!r}: a knob ({knob!r}) needs default values")
        doc = description or ((fn.__doc__ or "").strip().splitlines() or [""])[0]
        ARMS.register(name, Arm(fn, knob, tuple(defaults), doc, evaluation_only), override=override)
        return fn
    return add


@dataclass(frozen=True)
class Variant:
    """One arm at one knob value, e.g. `replay@0.3`; `name` is also its directory."""
    arm: str
    value: Any = None

    @property
    def name(self) -> str:
        if self.value is None:
            return self.arm
        value = f"{self.value:g}" if isinstance(self.value, (int, float)) else str(self.value)
        return f"{self.arm}@{value}"

    @property
    def knob(self) -> str | None:
        return ARMS[self.arm].knob if self.arm in ARMS else None


def variants(arms, knobs: dict) -> list[Variant]:
    """The variants a study runs: each arm at each of its knob values, training arms first."""
    for name in knobs:  # sweeps of arms left out of `arms` are kept for later; a misspelt arm is an error
        ARMS.check(name, "StudyConfig.knobs")
    out = []
    for name in arms:
        arm = ARMS.check(name, "StudyConfig.arms")
        if arm.knob is None:
            if knobs.get(name):
                raise ValueError(f"StudyConfig.knobs[{name!r}]: arm {name!r} has no knob to sweep")
            out.append(Variant(name))
        else:
            values = tuple(knobs.get(name) or arm.defaults)
            out += [Variant(name, v) for v in values]
    return sorted(out, key=lambda v: ARMS[v.arm].evaluation_only)  # stable: config order otherwise


@dataclass
class ArmContext:
    """What an arm function may use: the study config, base params, seed and the study's helpers."""
    cfg: Any                                   # StudyConfig
    model_config: Any                          # the base model's T5Config
    base: Any                                  # base parameters (host arrays)
    seed: int
    fisher: Callable[[], Any]                  # diagonal Fisher of the base on the base mixture (cached)
    trained: Callable[[str], Any]              # variant name -> its trained params for this seed (host, merged)

    def optimizer(self, learning_rate: float | None = None, adapters: bool = False) -> OptimizerConfig:
        """The study's optimizer family at `learning_rate` (default: arm_learning_rate).

        For adapters (`adapters=True`) Adafactor runs without parameter scaling:
        its scaled steps (lr * rms(θ)) barely move zero-initialised `lora_b`.
        """
        name = self.cfg.lora_optimizer if adapters and self.cfg.lora_optimizer else self.cfg.optimizer
        lr = self.cfg.arm_learning_rate if learning_rate is None else learning_rate
        return OptimizerConfig(name=name, learning_rate=lr, multiply_by_parameter_scale=not adapters)


def interpolate(base, tuned, alpha: float):
    """WiSE-FT weights (1 - alpha) * base + alpha * tuned (exactly base at 0 and tuned at 1)."""
    a = np.float32(alpha)
    return jax.tree.map(lambda b, t: ((np.float32(1) - a) * np.asarray(b, np.float32)
                                      + a * np.asarray(t, np.float32)).astype(np.asarray(b).dtype), base, tuned)


# ------------------------------------------------------------------------------------ built-in arms

@register_arm("single_task")
def single_task(ctx: ArmContext, _) -> ArmPlan:
    """Full fine-tune on the target task only."""
    return ArmPlan(ctx.model_config, mixture=ctx.cfg.target_task, init_params=ctx.base, optimizer=ctx.optimizer())


@register_arm("replay", knob="ratio", defaults=(0.3,))
def replay(ctx: ArmContext, ratio: float) -> ArmPlan:
    """Full fine-tune on the target mixed with the base mixture (`ratio` = share of replayed examples)."""
    from flanx.data import mixtures

    mixture = mixtures.replay_mixture(ctx.cfg.target_task, ctx.cfg.base_mixture, float(ratio))
    return ArmPlan(ctx.model_config, mixture=mixture, init_params=ctx.base, optimizer=ctx.optimizer())


@register_arm("l2sp", knob="coef", defaults=(0.1,))
def l2sp(ctx: ArmContext, coef: float) -> ArmPlan:
    """Full fine-tune plus coef/2 * ||θ - θ_base||² (L2-SP)."""
    return ArmPlan(ctx.model_config, mixture=ctx.cfg.target_task, init_params=ctx.base, optimizer=ctx.optimizer(),
                   extra_loss=l2_sp_loss(ctx.base, coef))


@register_arm("ewc", knob="coef", defaults=(0.1,))
def ewc(ctx: ArmContext, coef: float) -> ArmPlan:
    """Full fine-tune plus coef/2 * sum F (θ - θ_base)², F the base's diagonal Fisher on the base mixture (EWC)."""
    return ArmPlan(ctx.model_config, mixture=ctx.cfg.target_task, init_params=ctx.base, optimizer=ctx.optimizer(),
                   extra_loss=ewc_loss(ctx.base, ctx.fisher(), coef))


@register_arm("lora", knob="rank", defaults=(8,))
def lora(ctx: ArmContext, rank: int) -> ArmPlan:
    """LoRA adapters of this rank on the base (frozen); alpha scaled so alpha/rank stays StudyConfig.lora's."""
    template = ctx.cfg.lora
    rank = int(rank)
    lcfg = dataclasses.replace(template, rank=rank, alpha=template.scale * rank)
    # The trainer gives the base weights fresh adapters (flanx.models.lora.setup, seeded by the run's seed).
    return ArmPlan(ctx.model_config.replace(lora=lcfg), mixture=ctx.cfg.target_task, init_params=ctx.base,
                   optimizer=ctx.optimizer(ctx.cfg.lora_learning_rate, adapters=True))


@register_arm("wise_ft", knob="alpha", defaults=(0.0, 0.25, 0.5, 0.75, 1.0), evaluation_only=True)
def wise_ft(ctx: ArmContext, alpha: float) -> ArmPlan:
    """No training: WiSE-FT interpolation (1 - alpha) * base + alpha * the fine-tuned `wise_ft_source` arm."""
    alpha = float(alpha)
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"StudyConfig.knobs['wise_ft']: alpha must be in [0, 1], got {alpha}")
    source = ctx.cfg.wise_ft_source
    if alpha == 0.0:
        return ArmPlan(ctx.model_config, same_as=BASE)
    if alpha == 1.0:
        return ArmPlan(ctx.model_config, same_as=source)
    return ArmPlan(ctx.model_config, params=interpolate(ctx.base, ctx.trained(source), alpha))
