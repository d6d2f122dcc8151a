"""Typed configuration of one trial: data, model, objective, training, metrics.

Configs live apart from the code that uses them (as in pythae): every section is a
pydantic model with unknown keys refused, so a typo in a study file is an error and
never a silently ignored setting. A study (``vaebench.study.spec``) is a base
``TrialConfig`` plus the factors that vary; each trial gets a fully validated copy.
"""

from __future__ import annotations

import hashlib
import json
from typing import Annotated, Any, Literal, Union

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator, model_validator

# Encoder log-variance is clamped to this range: exp(-10) ~ 4.5e-5 is a smaller
# posterior std than any dataset here needs, exp(10) ~ 2.2e4 far wider than the prior;
# outside it exp() overflows or the KL's -log(sigma^2) dominates the loss.
LOGVAR_MIN, LOGVAR_MAX = -10.0, 10.0


# Seeds feed numpy's legacy RandomState (Optuna's samplers) as well as torch and numpy's
# Generator: the common range is that of an unsigned 32-bit integer.
SEED_MAX = 2**32 - 1
# Any other whole number must fit the signed 64-bit integers of torch, numpy and the stores' columns.
INT_MIN, INT_MAX = -(2**63), 2**63 - 1


def _int64(value: Any) -> Any:
    """``value`` (or every whole number inside a list or mapping) within a signed 64-bit integer."""
    if isinstance(value, bool):
        return value
    if isinstance(value, int) and not INT_MIN <= value <= INT_MAX:
        raise ValueError(f"{value} is out of range; allowed: a whole number from -2^63 to 2^63-1")
    if isinstance(value, list):
        for v in value:
            _int64(v)
    if isinstance(value, dict):
        for v in value.values():
            _int64(v)
    return value


class Section(BaseModel):
    """Base of every config section: unknown keys are an error, values are checked (no NaN or
    infinity in a float, no whole number beyond 64 bits)."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, allow_inf_nan=False)

    @field_validator("*", mode="after")
    @classmethod
    def _bounded_ints(cls, v: Any, info: ValidationInfo) -> Any:
        # a study's space is checked level by level, as each level's trial config (study.spec)
        return v if info.field_name == "space" else _int64(v)


Seed = Annotated[int, Field(ge=0, le=SEED_MAX)]


# ----------------------------------------------------------------------------- data


class DigitsData(Section):
    """scikit-learn's bundled 8x8 digits (1,797 images), scaled to [0, 1]."""

    kind: Literal["digits"] = "digits"
    binarize: bool = False
    val_fraction: float = Field(0.2, gt=0, lt=1)


class DSpritesData(Section):
    """Procedural dSprites (REFERENCE.md): a random sample of the 737,280 factor combinations."""

    kind: Literal["dsprites"] = "dsprites"
    n_samples: int = Field(10_000, ge=2)
    val_fraction: float = Field(0.1, gt=0, lt=1)
    shapes: list[Literal["square", "ellipse", "heart"]] = ["square", "ellipse", "heart"]


class PPCAData(Section):
    """Zero-mean Gaussian data whose sample covariance has exactly the given eigenvalues."""

    kind: Literal["ppca"] = "ppca"
    eigenvalues: list[Annotated[float, Field(gt=0)]] = [5.0, 2.0, 0.8, 0.3, 0.1]
    n_samples: int = Field(5_000, ge=10)
    val_fraction: float = Field(0.2, gt=0, lt=1)


class IdxData(Section):
    """MNIST-style IDX files (gzipped or not) from disk; never downloaded."""

    kind: Literal["idx"] = "idx"
    train_images: str
    val_images: str | None = None  # None: hold out val_fraction of the training file
    val_fraction: float = Field(0.1, gt=0, lt=1)
    binarize: bool = False


class NpzData(Section):
    """Arrays from a .npz file; ``train_key``/``val_key`` name them."""

    kind: Literal["npz"] = "npz"
    path: str
    train_key: str = "x_train"
    val_key: str | None = None  # None: hold out val_fraction of the train array
    val_fraction: float = Field(0.1, gt=0, lt=1)
    binarize: bool = False


DataConfig = Annotated[Union[DigitsData, DSpritesData, PPCAData, IdxData, NpzData], Field(discriminator="kind")]

# ---------------------------------------------------------------------------- model


class ModelConfig(Section):
    """Encoder/decoder family and likelihood. See ``vaebench.core.models``."""

    kind: Literal["mlp", "conv", "linear"] = "mlp"
    latent_dim: int = Field(10, ge=1, le=1024)
    hidden: list[Annotated[int, Field(ge=1)]] = [256]  # mlp: widths of the hidden layers
    channels: list[Annotated[int, Field(ge=1)]] = [32, 32, 64, 64]  # conv: per stride-2 layer
    likelihood: Literal["bernoulli", "gaussian", "gaussian_learned"] = "bernoulli"
    sigma: float = Field(1.0, gt=0)  # gaussian: the fixed observation std

    @model_validator(mode="after")
    def _linear_is_gaussian(self) -> ModelConfig:
        if self.kind == "linear" and self.likelihood == "bernoulli":
            raise ValueError("model.kind 'linear' needs likelihood 'gaussian' or 'gaussian_learned'")
        return self


# ------------------------------------------------------------------------ objective


class NoAnneal(Section):
    kind: Literal["none"] = "none"


class LinearAnneal(Section):
    """a_t = min(1, start + t (1 - start) / warmup_steps); warmup_steps defaults to 30% of T."""

    kind: Literal["linear"] = "linear"
    start: float = Field(0.0, ge=0, le=1)
    warmup_steps: int | None = Field(None, ge=1)


class SigmoidAnneal(Section):
    """a_t = 1 / (1 + exp(-k (t - t0))); k defaults to 10/T and t0 to T/2."""

    kind: Literal["sigmoid"] = "sigmoid"
    k: float | None = Field(None, gt=0)
    t0: int | None = Field(None, ge=0)


class CyclicalAnneal(Section):
    """Fu et al. 2019: ``cycles`` cycles over T steps, rising for the first ``ratio``."""

    kind: Literal["cyclical"] = "cyclical"
    cycles: int = Field(4, ge=1)
    ratio: float = Field(0.5, gt=0, le=1)


class CapacityAnneal(Section):
    """Burgess et al. 2018: regulariser gamma |KL - C_t|, C_t from 0 to c_max over ``steps``."""

    kind: Literal["capacity"] = "capacity"
    c_max: float = Field(25.0, ge=0)
    gamma: float = Field(100.0, gt=0)
    steps: int | None = Field(None, ge=1)  # defaults to T


AnnealConfig = Annotated[
    Union[NoAnneal, LinearAnneal, SigmoidAnneal, CyclicalAnneal, CapacityAnneal],
    Field(discriminator="kind"),
]


class ObjectiveConfig(Section):
    """loss = distortion + beta * a_t * regulariser (REFERENCE.md, Objective).

    ``kind: beta_tcvae`` (Chen et al. 2018; REFERENCE.md, beta-TCVAE) splits the KL into index-code
    MI, total correlation and dimension-wise KL: loss = distortion + a_t (alpha MI + beta TC +
    gamma DWKL), the aggregate posterior estimated by minibatch-weighted (``mws``) or stratified
    (``mss``) sampling. Free bits and capacity apply to the KL of beta_vae only."""

    kind: Literal["beta_vae", "beta_tcvae"] = "beta_vae"
    beta: float = Field(1.0, ge=0)
    alpha: float = Field(1.0, ge=0)  # beta_tcvae: weight of the index-code MI
    gamma: float = Field(1.0, ge=0)  # beta_tcvae: weight of the dimension-wise KL
    tc_estimator: Literal["mws", "mss"] = "mws"
    anneal: AnnealConfig = NoAnneal()
    free_bits: float = Field(0.0, ge=0)  # lambda, nats per latent dim
    free_bits_mode: Literal["per_dim", "total"] = "per_dim"

    @field_validator("anneal", mode="before")
    @classmethod
    def _anneal_shorthand(cls, v: Any) -> Any:
        # `anneal: linear` is shorthand for `anneal: {kind: linear}`.
        return {"kind": v} if isinstance(v, str) else v

    @model_validator(mode="after")
    def _capacity_excludes_free_bits(self) -> ObjectiveConfig:
        if self.anneal.kind == "capacity" and self.free_bits > 0:
            raise ValueError("objective.free_bits must be 0 with anneal 'capacity' (it sets its own target KL)")
        if self.kind == "beta_tcvae" and (self.free_bits > 0 or self.anneal.kind == "capacity"):
            raise ValueError(
                "objective.kind 'beta_tcvae' takes neither free_bits nor anneal 'capacity' "
                "(they act on the plain KL); use kind 'beta_vae' for them"
            )
        return self


# ---------------------------------------------------------------------------- train


class TrainConfig(Section):
    epochs: int = Field(10, ge=1)
    batch_size: int = Field(128, ge=1)
    optimizer: Literal["adam", "adamw", "sgd"] = "adam"
    lr: float = Field(1e-3, gt=0)
    weight_decay: float = Field(0.0, ge=0)
    grad_clip: float | None = Field(None, gt=0)
    device: Literal["auto", "cpu", "cuda"] = "auto"  # auto: cuda when available
    threads: int = Field(1, ge=1)  # torch intra-op threads; a sweep sets it to cpus_per_trial


# -------------------------------------------------------------------------- metrics


class MetricsConfig(Section):
    """Settings of the held-out metrics (REFERENCE.md, Metrics on held-out data)."""

    active_threshold: float = Field(0.01, gt=0)
    mi_batch_size: int = Field(256, ge=2)  # B of the He et al. estimator; MI <= ~log B
    iw_samples: int = Field(32, ge=1)  # K of the importance-weighted bound
    # first N val examples for iw_nll (None: all). The same N examples and noise in every trial,
    # so this error is shared and mostly cancels between trials, while K's bias does not: keep K
    # and cut N to keep an evaluation under 10% of an epoch (benchmarks/RESULTS.md, 2)
    iw_examples: int | None = Field(500, ge=1)
    collapse_epsilon: float = Field(0.01, gt=0)
    collapse_delta: float = Field(0.01, ge=0, lt=1)
    eval_batch_size: int = Field(1024, ge=1)
    every: int = Field(1, ge=1)  # evaluate every N epochs (and always at the last)
    # iw_nll takes iw_samples decoder passes per example, most of an evaluation's time: None computes
    # it at every evaluation, N at the evaluations whose epoch is a multiple of N, "last" at the last
    # epoch only (the final value is the same whichever: same examples, same noise)
    iw_every: int | Literal["last"] | None = None
    # ground-truth-factor metrics (vaebench.core.disentanglement), recorded as val/dis/NAME; data with known
    # factors only (dsprites). dci records dci_disentanglement, dci_completeness, dci_informativeness.
    disentanglement: list[Literal["beta_vae", "factor_vae", "mig", "dci", "sap", "modularity"]] = []
    disentanglement_every: int | None = Field(None, ge=1)  # None: at the last epoch only
    disentanglement_preset: Literal["default", "publish"] = "default"  # sample sizes; publish = disentanglement_lib
    disentanglement_seed: Seed = 0  # the metrics' own sampling; the same for every trial

    @field_validator("iw_every", mode="before")
    @classmethod
    def _iw_every(cls, v: Any) -> Any:
        if v is None or v == "last" or (isinstance(v, int) and not isinstance(v, bool) and v >= 1):
            return v
        raise ValueError(f"got {v!r}; allowed: null (every evaluation), last, or a number of epochs >= 1")

    @field_validator("disentanglement")
    @classmethod
    def _distinct(cls, v: list[str]) -> list[str]:
        return list(dict.fromkeys(v))


# ---------------------------------------------------------------------------- trial


class TrialConfig(Section):
    """Everything one trial needs; the unit the training loop takes."""

    data: DataConfig = DigitsData()
    model: ModelConfig = ModelConfig()
    objective: ObjectiveConfig = ObjectiveConfig()
    train: TrainConfig = TrainConfig()
    metrics: MetricsConfig = MetricsConfig()
    seed: Seed = 0  # model init, minibatch order, reparameterisation noise
    data_seed: Seed = 0  # data generation and the train/val split, shared by all seeds

    @model_validator(mode="after")
    def _factors_known(self) -> TrialConfig:
        from vaebench.data import FACTOR_KINDS

        if self.metrics.disentanglement and self.data.kind not in FACTOR_KINDS:
            raise ValueError(
                f"metrics.disentanglement needs data whose generative factors are known "
                f"(data.kind: {', '.join(FACTOR_KINDS)}); data.kind {self.data.kind!r} has none, "
                f"so leave metrics.disentanglement empty"
            )
        return self

    def flat(self) -> dict[str, Any]:
        """The config as {dotted.path: value}, every setting (the config hash's input)."""
        return flatten(self.model_dump(mode="json"))

    def params(self) -> dict[str, Any]:
        """The settings that apply to this trial, as {dotted.path: value}: what a run logs as its
        params. ``flat()`` less the other model kinds' settings (``model.hidden`` is the MLP's,
        ``model.channels`` the conv's), ``model.sigma`` unless the likelihood is the fixed-sigma
        Gaussian, beta-TCVAE's weights and estimator for another objective, and the
        disentanglement settings when no disentanglement metric is computed. The config hash
        still covers every setting (``config_hash``)."""
        out = self.flat()
        m = self.model
        unused = {"mlp": ["model.channels"], "conv": ["model.hidden"], "linear": ["model.hidden", "model.channels"]}
        unused = unused[m.kind] + ([] if m.likelihood == "gaussian" else ["model.sigma"])
        if self.objective.kind != "beta_tcvae":
            unused += ["objective.alpha", "objective.gamma", "objective.tc_estimator"]
        if not self.metrics.disentanglement:
            unused += [k for k in out if k.startswith("metrics.disentanglement_")]
        for key in unused:
            out.pop(key, None)
        return out

    def config_hash(self) -> str:
        """Stable hash of the full config (seed included): a trial's identity on resume. Settings added
        after records existed are left out while at their defaults, so those records' trials keep
        their hashes (and are not rerun by a resume or a reproduction)."""
        d = self.model_dump(mode="json")
        for (section, key), default in LATER_DEFAULTS.items():
            if d[section].get(key) == default:
                del d[section][key]
        blob = json.dumps(d, sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(blob.encode()).hexdigest()[:16]


#: settings added after the first records (beta-TCVAE, disentanglement metrics) with their defaults
LATER_DEFAULTS: dict[tuple[str, str], Any] = {
    ("objective", "kind"): "beta_vae",
    ("objective", "alpha"): 1.0,
    ("objective", "gamma"): 1.0,
    ("objective", "tc_estimator"): "mws",
    ("metrics", "iw_every"): None,
    ("metrics", "disentanglement"): [],
    ("metrics", "disentanglement_every"): None,
    ("metrics", "disentanglement_preset"): "default",
    ("metrics", "disentanglement_seed"): 0,
}


def flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """{'a': {'b': 1}} -> {'a.b': 1}; lists stay values."""
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(flatten(v, key + "."))
        else:
            out[key] = v
    return out


def set_dotted(d: dict[str, Any], path: str, value: Any) -> None:
    """Set d['a']['b'] = value for path 'a.b', creating mappings on the way."""
    *parents, leaf = path.split(".")
    for p in parents:
        d = d.setdefault(p, {})
        if not isinstance(d, dict):
            raise KeyError(path)
    d[leaf] = value
