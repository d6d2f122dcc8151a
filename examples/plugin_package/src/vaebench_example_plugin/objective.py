"""An objective plugin: the ELBO with an extra L2 penalty on the posterior means (a toy rate)."""

from __future__ import annotations


def l2_rate(log_lik, mu, logvar, z, *, step, total_steps, n_data, config, generator=None, weight: float = 0.1):
    """Terms as minibatch means, ``loss`` included: they are logged as train/NAME."""
    recon = -log_lik.mean()
    kl = (0.5 * (mu.pow(2) + logvar.exp() - logvar - 1)).sum(-1).mean()
    l2 = mu.pow(2).sum(-1).mean()
    return {"loss": recon + config.beta * kl + weight * l2, "recon": recon, "kl": kl, "l2": l2}
