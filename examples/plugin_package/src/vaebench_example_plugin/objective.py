"""An objective plugin: the ELBO with an extra L2 penalty on the posterior means (a toy rate).

An objective takes the step's ``batch`` (vaebench.core.objectives.ObjectiveBatch: x, mu, logvar, z,
log_lik of M members, each with a leading member axis) and ``hp`` (MemberSettings: each member's
ObjectiveConfig in ``hp.configs``, numeric fields as [M] tensors by ``hp.column``) and returns its
named terms, each [M] (a minibatch mean per member), ``loss`` among them; all are logged as train/NAME.
"""

from __future__ import annotations

import torch


def l2_rate(batch, hp):
    weight = torch.tensor([c.args.get("weight", 0.1) for c in hp.configs], device=batch.mu.device)
    recon = -batch.log_lik.mean(-1)
    kl = (0.5 * (batch.mu.pow(2) + batch.logvar.exp() - batch.logvar - 1)).sum(-1).mean(-1)
    l2 = batch.mu.pow(2).sum(-1).mean(-1)
    loss = recon + hp.column("beta", recon.dtype) * kl + weight * l2
    return {"loss": loss, "recon": recon, "kl": kl, "l2": l2}
