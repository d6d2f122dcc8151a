"""Disentanglement metrics against known generative factors (docs/reference.md, "Disentanglement metrics").

Six metrics as disentanglement_lib computes them (Locatello et al. 2019), written anew for PyTorch
encoders and scikit-learn, each with the one signature

    metric(codes: Codes, preset: Preset, seed: int) -> dict[str, float]

``codes`` maps factor combinations of a ground-truth dataset (``vaebench.data.GroundTruth``) to the
representation, the encoder's posterior mean; each metric draws its own factor combinations from
``numpy.random.default_rng(seed)`` (it needs pairs that share a factor, which a validation split
does not provide), renders and encodes them. Names returned: beta_vae, factor_vae, mig,
dci_disentanglement, dci_completeness, dci_informativeness, sap, modularity (all in [0, 1]).

Properties the tests check:

- deterministic: the same seed gives the same numbers (every estimator gets ``seed`` as its
  random_state). Every metric starts a fresh generator from the same seed, so MIG, DCI, SAP and
  modularity score the same random observations, as disentanglement_lib's metrics do (each
  evaluation starts from random seed 0); ``Codes`` encodes them once.
- order-independent: the scores are pure functions of the *set* of (code, factor) examples;
  examples are put in a canonical order (lexicographic) before any fit whose result could depend
  on it (logistic regression, boosted trees, liblinear's coordinate descent).
- factors with a single value (dSprites restricted to one shape) carry no information and are left
  out: K counts the factors that vary.

Sample sizes come from a ``Preset``: ``publish`` is disentanglement_lib's unsupervised_study_v1
(BetaVAE alone encodes 1.28 M images), ``default`` costs seconds on 2 CPU cores; README states how
far the default moves the scores from the publish preset on a trained model.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import torch

from vaebench.data import GroundTruth
from vaebench.record.vocab import DIS_METRICS

if TYPE_CHECKING:
    from vaebench.study.config import TrialConfig

NAMES = DIS_METRICS


@dataclass(frozen=True)
class Preset:
    """Sample sizes and settings of every metric (numbers of points, observations per point)."""

    beta_vae_batch: int  # observation pairs averaged per point
    beta_vae_train: int
    beta_vae_eval: int
    factor_vae_batch: int  # observations sharing a factor per vote
    factor_vae_variance: int  # observations for the global variances
    factor_vae_train: int
    factor_vae_eval: int
    factor_vae_prune: float  # codes with global std below this are dropped
    mig_points: int
    bins: int  # equal-width bins of MIG and modularity
    dci_train: int
    dci_test: int
    dci_estimators: int  # boosting stages of each factor's GradientBoostingClassifier
    sap_train: int
    sap_test: int
    modularity_points: int


PRESETS = {
    # disentanglement_lib, config/unsupervised_study_v1/metric_configs (random seed 0 there)
    "publish": Preset(
        beta_vae_batch=64,
        beta_vae_train=10_000,
        beta_vae_eval=5_000,
        factor_vae_batch=64,
        factor_vae_variance=10_000,
        factor_vae_train=10_000,
        factor_vae_eval=5_000,
        factor_vae_prune=0.05,
        mig_points=10_000,
        bins=20,
        dci_train=10_000,
        dci_test=5_000,
        dci_estimators=100,
        sap_train=10_000,
        sap_test=5_000,
        modularity_points=10_000,
    ),
    # seconds on 2 cores: the same batch sizes, bins and thresholds; fewer points, 10 boosting stages
    "default": Preset(
        beta_vae_batch=64,
        beta_vae_train=300,
        beta_vae_eval=150,
        factor_vae_batch=64,
        factor_vae_variance=5_000,
        factor_vae_train=300,
        factor_vae_eval=150,
        factor_vae_prune=0.05,
        mig_points=5_000,
        bins=20,
        dci_train=1_000,
        dci_test=500,
        dci_estimators=10,
        sap_train=2_000,
        sap_test=1_000,
        modularity_points=5_000,
    ),
}


class Codes:
    """The representation of a ground-truth dataset: factor rows -> codes, float64 ``[n, J]``.

    ``represent`` maps observations to codes (for a VAE, its posterior mean); it must treat each
    observation on its own (eval mode). The codes of the last few factor arrays are kept, so
    metrics that draw the same observations (the same seed) encode them once."""

    def __init__(self, data: GroundTruth, represent: Callable[[torch.Tensor], np.ndarray], batch_size: int = 2048):
        self.data, self.represent, self.batch_size = data, represent, batch_size
        self.sizes = np.asarray(data.factor_sizes)
        self.varying = np.flatnonzero(self.sizes > 1)  # the factors the metrics score
        self._memo: dict[bytes, np.ndarray] = {}

    def __call__(self, factors: np.ndarray) -> np.ndarray:
        key = factors.tobytes() + bytes(str(factors.shape), "ascii")
        if key not in self._memo:
            out = [
                np.asarray(self.represent(self.data.observations(f)), dtype=np.float64)
                for f in np.array_split(factors, max(1, -(-len(factors) // self.batch_size)))
            ]
            if len(self._memo) >= 4:
                self._memo.pop(next(iter(self._memo)))
            self._memo[key] = np.concatenate(out)
        return self._memo[key]

    def sample(self, n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        """``n`` random observations: (codes [n, J], the varying factors [n, K])."""
        f = self.data.sample_factors(n, rng)
        return self(f), f[:, self.varying]


def model_codes(model: torch.nn.Module, data: GroundTruth) -> Codes:
    """The posterior mean of a VAE (``model.encode(x)[0]``) as the representation, in eval mode."""
    device = next(model.parameters()).device

    @torch.no_grad()
    def represent(x: torch.Tensor) -> np.ndarray:
        return model.encode(x.to(device))[0].double().cpu().numpy()

    return Codes(data, represent)


# ------------------------------------------------------------------------- pure helpers


def canonical(*columns: np.ndarray) -> np.ndarray:
    """The permutation that sorts the examples (rows of the given arrays side by side)
    lexicographically: fits on examples in this order do not depend on the order they came in."""
    table = np.concatenate([np.asarray(c, dtype=np.float64).reshape(len(c), -1) for c in columns], axis=1)
    return np.lexsort(table.T[::-1])


def discretize(codes: np.ndarray, bins: int) -> np.ndarray:
    """Each code into ``bins`` equal-width bins over its range (disentanglement_lib's histogram
    discretizer: np.digitize against the histogram's left edges, values 1 .. bins)."""
    out = np.zeros(codes.shape, dtype=np.int64)
    for j in range(codes.shape[1]):
        out[:, j] = np.digitize(codes[:, j], np.histogram(codes[:, j], bins)[1][:-1])
    return out


def discrete_mi(a: np.ndarray, b: np.ndarray) -> float:
    """Mutual information (nats) of two integer label vectors from their contingency table."""
    _, ai = np.unique(a, return_inverse=True)
    _, bi = np.unique(b, return_inverse=True)
    if ai.max() == 0 or bi.max() == 0:  # a constant carries no information (exactly 0, not rounding noise)
        return 0.0
    joint = np.bincount(ai * (bi.max() + 1) + bi, minlength=(ai.max() + 1) * (bi.max() + 1))
    p = joint.reshape(ai.max() + 1, bi.max() + 1) / len(a)
    pa, pb = p.sum(1, keepdims=True), p.sum(0, keepdims=True)
    nz = p > 0
    return float(max(0.0, (p[nz] * np.log(p[nz] / (pa @ pb)[nz])).sum()))


def mi_matrix(codes: np.ndarray, factors: np.ndarray, bins: int) -> np.ndarray:
    """m[j, k] = discrete MI between code j (``bins`` bins) and factor k."""
    d = discretize(codes, bins)
    return np.array(
        [[discrete_mi(d[:, j], factors[:, k]) for k in range(factors.shape[1])] for j in range(codes.shape[1])]
    )


def _gap(matrix: np.ndarray) -> np.ndarray:
    """Per column: largest minus second largest entry (the second is 0 with one row)."""
    s = np.sort(matrix, axis=0)[::-1]
    return s[0] - (s[1] if len(s) > 1 else 0.0)


def mig_score(codes: np.ndarray, factors: np.ndarray, bins: int) -> float:
    """Chen et al. 2018: mean_k (m_(1)k - m_(2)k) / H_k on the discretised codes."""
    m = mi_matrix(codes, factors, bins)
    h = np.array([discrete_mi(factors[:, k], factors[:, k]) for k in range(factors.shape[1])])
    return float(np.mean(_gap(m) / h))


def modularity_score(mi: np.ndarray) -> float:
    """Ridgeway & Mozer 2018 on m[j, k]: mean_j 1 - (sum_k m_jk^2 - theta_j^2) / (theta_j^2 (K - 1)),
    theta_j = max_k m_jk; a code with no information scores 0 (as disentanglement_lib)."""
    sq = np.square(mi)
    top = sq.max(axis=1)
    with np.errstate(divide="ignore", invalid="ignore"):
        score = 1.0 - (sq.sum(axis=1) - top) / (top * (sq.shape[1] - 1.0))
    score[top == 0] = 0.0
    return float(np.mean(score))


def _entropy(p: np.ndarray, base: int) -> np.ndarray:
    """Entropy of each column of non-negative weights (normalised), in base ``base``."""
    p = p / p.sum(axis=0, keepdims=True)
    return -(p * np.log(p)).sum(axis=0) / np.log(base)


def dci_from_importance(r: np.ndarray) -> tuple[float, float]:
    """Eastwood & Williams 2018 from the importance matrix R [J codes, K factors]: disentanglement
    sum_j rho_j (1 - H_K(P_j.)), completeness sum_k rho_k (1 - H_J(P~.k)); 1e-11 added to R inside
    the entropies as disentanglement_lib does (so an all-zero row has entropy 1)."""
    J, K = r.shape
    weights = r if r.sum() > 0 else np.ones_like(r)
    dis = (1.0 - _entropy(r.T + 1e-11, K)) if K > 1 else np.ones(J)
    com = (1.0 - _entropy(r + 1e-11, J)) if J > 1 else np.ones(K)
    return (float(np.sum(dis * weights.sum(1) / weights.sum())), float(np.sum(com * weights.sum(0) / weights.sum())))


def _quiet():
    from sklearn.exceptions import ConvergenceWarning

    ctx = warnings.catch_warnings()
    ctx.__enter__()
    warnings.simplefilter("ignore", ConvergenceWarning)
    return ctx


# ------------------------------------------------------------------------- the metrics


def _pick_factors(codes: Codes, n: int, rng: np.random.Generator) -> np.ndarray:
    """For each of ``n`` points, the factor (an index into the varying ones) held fixed."""
    return codes.varying[rng.integers(0, len(codes.varying), size=n)]


def _beta_vae_points(codes: Codes, n: int, batch: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """n BetaVAE points: feature = mean over ``batch`` pairs sharing factor k of |r(x1) - r(x2)|."""
    ks = _pick_factors(codes, n, rng)
    feats = []
    chunk = max(1, 8192 // (2 * batch))  # points encoded together: bounds the memory of the images
    for start in range(0, n, chunk):
        k = ks[start : start + chunk]
        f1 = codes.data.sample_factors(len(k) * batch, rng)
        f2 = codes.data.sample_factors(len(k) * batch, rng)
        rows = np.repeat(k, batch)
        f2[np.arange(len(rows)), rows] = f1[np.arange(len(rows)), rows]
        diff = np.abs(codes(f1) - codes(f2)).reshape(len(k), batch, -1)
        feats.append(diff.mean(axis=1))
    return np.concatenate(feats), np.searchsorted(codes.varying, ks)


def beta_vae(codes: Codes, preset: Preset, seed: int) -> dict[str, float]:
    """Higgins et al. 2017: logistic regression predicting the fixed factor from the BetaVAE
    features; score = accuracy on fresh points."""
    rng = np.random.default_rng(seed)
    x_tr, y_tr = _beta_vae_points(codes, preset.beta_vae_train, preset.beta_vae_batch, rng)
    x_te, y_te = _beta_vae_points(codes, preset.beta_vae_eval, preset.beta_vae_batch, rng)
    return {"beta_vae": beta_vae_accuracy(x_tr, y_tr, x_te, y_te, seed)}


def beta_vae_accuracy(x_tr: np.ndarray, y_tr: np.ndarray, x_te: np.ndarray, y_te: np.ndarray, seed: int) -> float:
    from sklearn.linear_model import LogisticRegression

    if len(np.unique(y_tr)) < 2:
        return 1.0 if len(np.unique(y_te)) <= 1 and np.all(y_te == y_tr[0]) else 0.0
    o = canonical(x_tr, y_tr)
    ctx = _quiet()
    try:
        model = LogisticRegression(max_iter=1000, random_state=seed).fit(x_tr[o], y_tr[o])
    finally:
        ctx.__exit__(None, None, None)
    return float(np.mean(model.predict(x_te) == y_te))


def factor_vae(codes: Codes, preset: Preset, seed: int) -> dict[str, float]:
    """Kim & Mnih 2018: codes divided by their global std (N-1, over random observations; codes
    with std < prune dropped); per point the code of least variance among ``batch`` observations
    sharing factor k votes for k; a majority-vote classifier (each code -> its most voted factor)
    is scored on fresh votes. No code left: 0."""
    rng = np.random.default_rng(seed)
    glob = codes(codes.data.sample_factors(preset.factor_vae_variance, rng)).var(axis=0, ddof=1)
    active = np.flatnonzero(np.sqrt(glob) >= preset.factor_vae_prune)
    if active.size == 0:
        return {"factor_vae": 0.0}
    train = _factor_vae_votes(codes, preset.factor_vae_train, preset.factor_vae_batch, rng, glob, active)
    test = _factor_vae_votes(codes, preset.factor_vae_eval, preset.factor_vae_batch, rng, glob, active)
    return {"factor_vae": factor_vae_accuracy(train, test)}


def _factor_vae_votes(
    codes: Codes, n: int, batch: int, rng: np.random.Generator, glob: np.ndarray, active: np.ndarray
) -> np.ndarray:
    """votes[k, j]: points where factor k was fixed and code j had the least normalised variance."""
    K = len(codes.varying)
    votes = np.zeros((K, glob.shape[0]), dtype=np.int64)
    ks = _pick_factors(codes, n, rng)
    chunk = max(1, 8192 // batch)
    for start in range(0, n, chunk):
        k = ks[start : start + chunk]
        f = codes.data.sample_factors(len(k) * batch, rng).reshape(len(k), batch, -1)
        f[np.arange(len(k)), :, k] = f[np.arange(len(k)), 0, k][:, None]
        c = codes(f.reshape(len(k) * batch, -1)).reshape(len(k), batch, -1)
        local = c[:, :, active].var(axis=1, ddof=1) / glob[active]
        np.add.at(votes, (np.searchsorted(codes.varying, k), active[local.argmin(axis=1)]), 1)
    return votes


def factor_vae_accuracy(train_votes: np.ndarray, test_votes: np.ndarray) -> float:
    """Accuracy on ``test_votes`` of the classifier code j -> argmax_k train_votes[k, j]."""
    classifier = train_votes.argmax(axis=0)
    total = test_votes.sum()
    return float(test_votes[classifier, np.arange(test_votes.shape[1])].sum() / total) if total else 0.0


def mig(codes: Codes, preset: Preset, seed: int) -> dict[str, float]:
    """Mutual information gap (Chen et al. 2018), discretised as in disentanglement_lib."""
    c, f = codes.sample(preset.mig_points, np.random.default_rng(seed))
    return {"mig": mig_score(c, f, preset.bins)}


def dci(codes: Codes, preset: Preset, seed: int) -> dict[str, float]:
    """Eastwood & Williams 2018 with one gradient-boosted tree classifier per factor; informativeness
    = mean test accuracy (disentanglement_lib's informativeness_test)."""
    rng = np.random.default_rng(seed)
    c_tr, f_tr = codes.sample(preset.dci_train, rng)
    c_te, f_te = codes.sample(preset.dci_test, rng)
    d, c, i = dci_scores(c_tr, f_tr, c_te, f_te, preset.dci_estimators, seed)
    return {"dci_disentanglement": d, "dci_completeness": c, "dci_informativeness": i}


def dci_scores(
    c_tr: np.ndarray, f_tr: np.ndarray, c_te: np.ndarray, f_te: np.ndarray, estimators: int, seed: int
) -> tuple[float, float, float]:
    from sklearn.ensemble import GradientBoostingClassifier

    o = canonical(c_tr, f_tr)
    c_tr, f_tr = c_tr[o], f_tr[o]
    r = np.zeros((c_tr.shape[1], f_tr.shape[1]))
    acc = []
    for k in range(f_tr.shape[1]):
        model = GradientBoostingClassifier(n_estimators=estimators, random_state=seed).fit(c_tr, f_tr[:, k])
        r[:, k] = np.abs(model.feature_importances_)
        acc.append(np.mean(model.predict(c_te) == f_te[:, k]))
    d, c = dci_from_importance(r)
    return d, c, float(np.mean(acc))


def sap(codes: Codes, preset: Preset, seed: int) -> dict[str, float]:
    """Kumar et al. 2018: S[j, k] = test accuracy of a linear SVM (C = 0.01, balanced classes)
    predicting factor k from code j alone; SAP = mean_k of the gap between the top two S[., k]."""
    rng = np.random.default_rng(seed)
    c_tr, f_tr = codes.sample(preset.sap_train, rng)
    c_te, f_te = codes.sample(preset.sap_test, rng)
    return {"sap": float(np.mean(_gap(sap_matrix(c_tr, f_tr, c_te, f_te, seed))))}


def sap_matrix(
    c_tr: np.ndarray, f_tr: np.ndarray, c_te: np.ndarray, f_te: np.ndarray, seed: int, continuous: bool = False
) -> np.ndarray:
    """S[j, k] for SAP. ``continuous=True`` is disentanglement_lib's variant for continuous factors
    (the squared correlation of code j and factor k on the training points, 0 for a constant code);
    vaebench records the classification variant (dSprites' factors are discrete, as in
    unsupervised_study_v1). With one code per factor and many values, the 1-D linear SVM separates
    only the extreme values (one-vs-rest), so even the true factors score low: about 0.19 for ten
    factors of ten values (tests/test_disentanglement.py)."""
    from sklearn.svm import LinearSVC

    s = np.zeros((c_tr.shape[1], f_tr.shape[1]))
    if continuous:
        for j in range(c_tr.shape[1]):
            for k in range(f_tr.shape[1]):
                cov = np.cov(c_tr[:, j], f_tr[:, k], ddof=1)
                s[j, k] = cov[0, 1] ** 2 / (cov[0, 0] * cov[1, 1]) if cov[0, 0] > 1e-12 else 0.0
        return s
    ctx = _quiet()
    try:
        for k in range(f_tr.shape[1]):
            for j in range(c_tr.shape[1]):
                o = canonical(c_tr[:, j], f_tr[:, k])
                if np.ptp(c_tr[:, j]) == 0:  # a constant code predicts one class: it carries nothing
                    s[j, k] = np.mean(f_te[:, k] == np.bincount(f_tr[:, k]).argmax())
                    continue
                svm = LinearSVC(C=0.01, class_weight="balanced", random_state=seed)
                svm.fit(c_tr[o, j, None], f_tr[o, k])
                s[j, k] = np.mean(svm.predict(c_te[:, j, None]) == f_te[:, k])
    finally:
        ctx.__exit__(None, None, None)
    return s


def modularity(codes: Codes, preset: Preset, seed: int) -> dict[str, float]:
    """Modularity (Ridgeway & Mozer 2018) on the discretised MI matrix, as disentanglement_lib."""
    c, f = codes.sample(preset.modularity_points, np.random.default_rng(seed))
    return {"modularity": modularity_score(mi_matrix(c, f, preset.bins))}


Metric = Callable[[Codes, Preset, int], dict[str, float]]
METRICS: dict[str, Metric] = {
    "beta_vae": beta_vae,
    "factor_vae": factor_vae,
    "mig": mig,
    "dci": dci,
    "sap": sap,
    "modularity": modularity,
}


def evaluate(
    codes: Codes, names: list[str] | tuple[str, ...], preset: str | Preset = "default", seed: int = 0
) -> dict[str, float]:
    """The named metrics of ``codes`` merged into one {name: value} dict."""
    p = PRESETS[preset] if isinstance(preset, str) else preset
    out: dict[str, float] = {}
    for name in names:
        out.update(METRICS[name](codes, p, seed))
    return out


def evaluate_model(
    model: torch.nn.Module,
    data: GroundTruth,
    names: list[str] | tuple[str, ...],
    preset: str | Preset = "default",
    seed: int = 0,
) -> dict[str, float]:
    """The named metrics of a VAE's posterior mean on ``data``, in eval mode (the training loop's one call)."""
    was_training = model.training
    model.eval()
    try:
        return evaluate(model_codes(model, data), names, preset, seed)
    finally:
        model.train(was_training)


def evaluate_trial(model: torch.nn.Module, cfg: TrialConfig) -> dict[str, float]:
    """The metrics ``cfg.metrics.disentanglement`` of a trial's model on its data's factors (the
    training loop's one call; names without the ``val/dis/`` prefix)."""
    from vaebench.data import ground_truth

    data = ground_truth(cfg.data)
    if data is None:
        raise ValueError(f"data.kind {cfg.data.kind!r} has no known factors for metrics.disentanglement")
    m = cfg.metrics
    return evaluate_model(model, data, m.disentanglement, m.disentanglement_preset, m.disentanglement_seed)
