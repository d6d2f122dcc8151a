"""Held-out metrics of a VAE, as defined in docs/metrics.md (Metrics on held-out data).

The validation split is encoded once into an ``Encoded`` (mu, logvar, per-dim KL);
every metric then has the same signature, as in disentanglement_lib:

    metric(model, enc, cfg, generator) -> dict[str, Tensor]

and ``evaluate`` merges their dicts into floats. Names (without the ``val/`` prefix the
training loop adds): elbo, recon, kl, kl_dim/NN, active_units, mi, iw_nll, collapsed_dims,
collapsed_fraction, posterior_collapse, mi_ceiling (log of the MI estimator's batch: the most it can
report); for token data also neg_elbo_per_token, nll_per_token and perplexity. In nats per example
unless named per token.

One code path serves one model and a pack of M models (vaebench.core.members.SharedInput):
``model`` maps x [B, *event] to posteriors [*members, B, J] and gives log p(x|z) for z
[..., *members, B, J] (``log_likelihood(x, z)``, the model contract of vaebench.core.protocol);
``members`` is () for a VAE and (M,) for a pack, and every value comes out with that
shape (a 0-d tensor for one model, [M] for a pack: ``evaluate_members``).

Sampling uses the caller's ``torch.Generator`` so that evaluating never disturbs the
training RNG stream (a run with metrics every epoch trains exactly like one without).
The noise is drawn without the member dims and shared by every member: a member of a
pack gets the very draws it would get evaluated alone with the same generator seed.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from vaebench.core.objectives import kl_per_dim
from vaebench.study.config import MetricsConfig

LOG_2PI = math.log(2 * math.pi)
DECODE_PIECE = 2**18  # decoder outputs are made in ~1 MB pieces: they stay in cache (2x faster on CPU)


@dataclass(frozen=True)
class Encoded:
    """The validation split and its posteriors: x [N, *event], mu/logvar/kl [*members, N, J]."""

    x: torch.Tensor
    mu: torch.Tensor
    logvar: torch.Tensor
    kl: torch.Tensor


@torch.no_grad()
def encode(model: Any, x: torch.Tensor, batch_size: int) -> Encoded:
    mus, logvars = zip(*(model.encode(xb) for xb in x.split(batch_size)))
    mu, logvar = torch.cat(mus, dim=-2), torch.cat(logvars, dim=-2)
    return Encoded(x, mu, logvar, kl_per_dim(mu, logvar))


def gaussian_log_density(z: torch.Tensor, mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """log N(z; mu, diag(exp(logvar))), summed over the last dim."""
    return -0.5 * (LOG_2PI + logvar + (z - mu) ** 2 * torch.exp(-logvar)).sum(-1)


def shared_noise(mu: torch.Tensor, generator: torch.Generator | None, n: int | None = None) -> torch.Tensor:
    """eps ~ N(0, I) of shape [(n,) B, J] (mu's last two dims), viewed to broadcast against mu
    [*members, B, J] (as [(n,) 1.., B, J]): one draw for every member."""
    shape = mu.shape[-2:] if n is None else (n, *mu.shape[-2:])
    eps = torch.randn(shape, generator=generator, device=mu.device, dtype=mu.dtype)
    return eps if n is None else eps.view(n, *[1] * (mu.dim() - 2), *mu.shape[-2:])


def _log_likelihood(model: Any, x: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    """log p(x|z) [..., B] for z [..., B, J], in pieces of examples of ~DECODE_PIECE decoded values."""
    per_example = x[0].numel() * max(1, z[..., 0, 0].numel())
    piece = max(1, DECODE_PIECE // per_example)
    return torch.cat([model.log_likelihood(xp, zp) for xp, zp in zip(x.split(piece), z.split(piece, dim=-2))], dim=-1)


# ------------------------------------------------------------------------ metrics


@torch.no_grad()
def elbo(model: Any, enc: Encoded, cfg: MetricsConfig, generator: torch.Generator) -> dict[str, torch.Tensor]:
    """elbo = mean_x(E_q log p(x|z) - KL(x)) with beta = 1, no free bits; recon = -E_q log p(x|z)
    (one sample of z per example); kl = mean_x KL(x) with the closed-form Gaussian KL."""
    recon = -torch.cat(
        [
            _log_likelihood(model, xb, mb + torch.exp(0.5 * lb) * shared_noise(mb, generator))
            for xb, mb, lb in zip(
                enc.x.split(cfg.eval_batch_size),
                enc.mu.split(cfg.eval_batch_size, dim=-2),
                enc.logvar.split(cfg.eval_batch_size, dim=-2),
            )
        ],
        dim=-1,
    ).mean(-1)
    kl = enc.kl.sum(-1).mean(-1)
    return {"elbo": -(recon + kl), "recon": recon, "kl": kl}


def kl_dims(model: Any, enc: Encoded, cfg: MetricsConfig, generator: torch.Generator) -> dict[str, torch.Tensor]:
    """kl_dim/NN = mean_x KL_j(x), one value per latent dim."""
    per_dim = enc.kl.mean(-2)
    return {f"kl_dim/{j:02d}": per_dim[..., j] for j in range(per_dim.shape[-1])}


def active_units(model: Any, enc: Encoded, cfg: MetricsConfig, generator: torch.Generator) -> dict[str, torch.Tensor]:
    """Burda et al. 2015: dim j is active iff Var_x(mu_j(x)) > threshold (N-1 variance, as He et al. 2019)."""
    return {"active_units": (enc.mu.var(-2, unbiased=True) > cfg.active_threshold).sum(-1).float()}


@torch.no_grad()
def mutual_information(
    model: Any, enc: Encoded, cfg: MetricsConfig, generator: torch.Generator
) -> dict[str, torch.Tensor]:
    """He et al. 2019 estimator of I(x; z) over minibatches of B = mi_batch_size examples:
    I = mean_i log q(z_i|x_i) - mean_i [logsumexp_k log q(z_i|x_k) - log B], z_i ~ q(z|x_i),
    averaged over minibatches weighted by their size. Bounded by about log B."""
    total, n = torch.zeros(enc.mu.shape[:-2], dtype=torch.float64, device=enc.mu.device), 0
    for mu, logvar in zip(enc.mu.split(cfg.mi_batch_size, dim=-2), enc.logvar.split(cfg.mi_batch_size, dim=-2)):
        B = mu.shape[-2]
        z = mu + torch.exp(0.5 * logvar) * shared_noise(mu, generator)
        neg_entropy = gaussian_log_density(z, mu, logvar).mean(-1)
        log_q_matrix = pairwise_gaussian_log_density(z, mu, logvar)  # [..., i, k]
        log_qz = (torch.logsumexp(log_q_matrix, dim=-1) - math.log(B)).mean(-1)
        total += (neg_entropy.double() - log_qz) * B
        n += B
    return {"mi": total / n}


def pairwise_gaussian_log_density(z: torch.Tensor, mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """[..., i, k] = log N(z_i; mu_k, diag(exp(logvar_k))) for z [..., I, J] and mu, logvar [..., K, J].

    The square (z - mu)^2 / var is expanded into two matrix products instead of an [I, K, J]
    tensor (B = 256: 60x less time). In float64: the expansion cancels large terms when a
    variance is small (exp(-logvar) up to e^10), which float32 would not survive."""
    z, mu, logvar = z.double(), mu.double(), logvar.double()
    prec = torch.exp(-logvar)  # [..., K, J]
    quad = (z * z) @ prec.mT - 2 * z @ (mu * prec).mT + (mu * mu * prec).sum(-1).unsqueeze(-2)  # [..., I, K]
    return -0.5 * (z.shape[-1] * LOG_2PI + logvar.sum(-1).unsqueeze(-2) + quad)


@torch.no_grad()
def iw_nll(model: Any, enc: Encoded, cfg: MetricsConfig, generator: torch.Generator) -> dict[str, torch.Tensor]:
    """Burda et al. 2015: -mean_x log (1/K) sum_k p(x, z_k) / q(z_k|x), z_k ~ q(z|x).
    K = 1 is the ELBO; the bound tightens as K grows. Over the first iw_examples of the split."""
    K, N = cfg.iw_samples, enc.x.shape[0] if cfg.iw_examples is None else min(cfg.iw_examples, enc.x.shape[0])
    chunk = max(1, 2**24 // (K * enc.x[0].numel()))  # noise is drawn per chunk of examples (bounds it to ~64 MB)
    members = enc.mu[..., 0, 0].numel()
    piece = max(1, DECODE_PIECE // (K * enc.x[0].numel() * members))  # ...and used piece by piece (cache-sized)
    bounds = []
    for xc, mc, lc in zip(
        enc.x[:N].split(chunk), enc.mu[..., :N, :].split(chunk, dim=-2), enc.logvar[..., :N, :].split(chunk, dim=-2)
    ):
        eps = shared_noise(mc, generator, n=K)  # [K, 1.., B, J]: the same draws whatever the piece size
        for xb, mu, logvar, e in zip(
            xc.split(piece), mc.split(piece, dim=-2), lc.split(piece, dim=-2), eps.split(piece, dim=-2)
        ):
            z = mu + torch.exp(0.5 * logvar) * e  # [K, *members, b, J]
            log_w = (
                model.log_likelihood(xb, z)
                - 0.5 * (LOG_2PI + z**2).sum(-1)  # log N(z; 0, I)
                - gaussian_log_density(z, mu, logvar)
            )  # [K, *members, b]
            bounds.append(torch.logsumexp(log_w, dim=0) - math.log(K))
    return {"iw_nll": -torch.cat(bounds, dim=-1).mean(-1)}


def collapse(model: Any, enc: Encoded, cfg: MetricsConfig, generator: torch.Generator) -> dict[str, torch.Tensor]:
    """Lucas et al. 2019 (epsilon, delta)-collapse: dim j collapsed iff P_x[KL_j(x) < eps] >= 1 - delta.
    posterior_collapse = 1 when every dim is collapsed."""
    collapsed = (enc.kl < cfg.collapse_epsilon).float().mean(-2) >= 1 - cfg.collapse_delta
    n = collapsed.sum(-1)
    J = collapsed.shape[-1]
    return {"collapsed_dims": n.float(), "collapsed_fraction": n / J, "posterior_collapse": (n == J).float()}


Metric = Callable[[Any, Encoded, MetricsConfig, torch.Generator], dict[str, torch.Tensor]]
METRICS: dict[str, Metric] = {
    "elbo": elbo,
    "kl_dims": kl_dims,
    "active_units": active_units,
    "mi": mutual_information,
    "iw_nll": iw_nll,
    "collapse": collapse,
}


TOKEN_PAD = 0  # the <pad> id of token data (vaebench.data.text)


def per_token(values: dict[str, torch.Tensor], x: torch.Tensor, cfg: MetricsConfig) -> dict[str, torch.Tensor]:
    """Token data (int64 x [N, T], pads 0): the bounds per token, total nats over total tokens
    (words and <eos>, as language models count them; Bowman et al. 2016). neg_elbo_per_token over
    the whole split; nll_per_token and perplexity = exp(nll_per_token) from iw_nll, over the same
    first iw_examples, when it was computed."""
    tokens = (x != TOKEN_PAD).sum(-1).double()
    out = {"neg_elbo_per_token": -values["elbo"] / tokens.mean()}
    if "iw_nll" in values:
        n = x.shape[0] if cfg.iw_examples is None else min(cfg.iw_examples, x.shape[0])
        nll = values["iw_nll"] / tokens[:n].mean()
        out.update({"nll_per_token": nll, "perplexity": torch.exp(nll)})
    return out


def mi_ceiling(cfg: MetricsConfig, n: int) -> float:
    """The most the MI estimator can report: log of its minibatch size (the split's size if smaller)."""
    return math.log(min(cfg.mi_batch_size, n))


def iw_due(cfg: MetricsConfig, epoch: int, last: bool) -> bool:
    """Whether an evaluation at ``epoch`` computes iw_nll (``metrics.iw_every``)."""
    if last or cfg.iw_every is None:
        return True
    return cfg.iw_every != "last" and epoch % cfg.iw_every == 0


@torch.no_grad()
def evaluate_batched(
    model: Any, x: torch.Tensor, cfg: MetricsConfig, generator: torch.Generator, iw: bool = True
) -> dict[str, torch.Tensor]:
    """Every metric over the validation split ``x``: {name: tensor of the model's member shape};
    iw_nll only if ``iw``. iw_nll is the last metric to draw noise: leaving it out changes no other value."""
    enc = encode(model, x, cfg.eval_batch_size)
    out: dict[str, torch.Tensor] = {}
    for name, metric in METRICS.items():
        if name != "iw_nll" or iw:
            out.update(metric(model, enc, cfg, generator))
    if not x.is_floating_point():
        out.update(per_token(out, x, cfg))
    out["mi_ceiling"] = torch.full_like(out["mi"], mi_ceiling(cfg, x.shape[0]))
    return out


@torch.no_grad()
def evaluate(
    model: torch.nn.Module, x: torch.Tensor, cfg: MetricsConfig, generator: torch.Generator, iw: bool = True
) -> dict[str, float]:
    """Every metric of one VAE over the validation split ``x``, in eval mode; returns {name: value}."""
    was_training = model.training
    model.eval()
    out = {k: float(v) for k, v in evaluate_batched(model, x, cfg, generator, iw).items()}
    model.train(was_training)
    return out


def evaluate_members(
    model: Any, x: torch.Tensor, cfg: MetricsConfig, generator: torch.Generator, iw: bool = True
) -> list[dict[str, float]]:
    """Every metric of each member of a pack (``model`` with members (M,)): M dicts, each what
    ``evaluate`` gives that member alone with a generator seeded alike (up to float rounding).
    A model alone (an ``nn.Module``, members ()) gives one dict: ``evaluate``'s."""
    if isinstance(model, torch.nn.Module):
        return [evaluate(model, x, cfg, generator, iw)]
    values = {k: v.tolist() for k, v in evaluate_batched(model, x, cfg, generator, iw).items()}
    M = len(next(iter(values.values())))
    return [{k: v[i] for k, v in values.items()} for i in range(M)]
