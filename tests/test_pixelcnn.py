"""The PixelCNN decoder: causality of its masked convolutions, its likelihood, its samples."""

from __future__ import annotations

import math

import pytest
import torch

from vaebench.core.models.pixelcnn import MaskedConv2d, PixelCNNVAE, causal_mask


def _model(layers: int = 3, seed: int = 0, H: int = 6, W: int = 5) -> PixelCNNVAE:
    torch.manual_seed(seed)
    return PixelCNNVAE(event_shape=(1, H, W), latent_dim=3, layers=layers, channels=8, kernel=3, first_kernel=5)


def test_mask_shapes():
    a, b = causal_mask(3, "A"), causal_mask(3, "B")
    assert a.tolist() == [[1, 1, 1], [1, 0, 0], [0, 0, 0]]
    assert b.tolist() == [[1, 1, 1], [1, 1, 0], [0, 0, 0]]
    with pytest.raises(ValueError):
        MaskedConv2d(1, 1, 4, "A")


@pytest.mark.parametrize("layers", [1, 2, 4])
def test_output_pixel_never_sees_current_or_future_inputs(layers):
    """d logit_i / d x_j == 0 exactly for every j >= i in raster order, and nonzero for some j < i
    (the decoder does look at the past: a test that could fail both ways)."""
    model = _model(layers)
    H, W = 6, 5
    n = H * W
    z = torch.randn(1, 3)
    x = torch.rand(1, 1, H, W, requires_grad=True)  # continuous input: every gradient is defined
    logits = model.logits(x, z).flatten()
    seen_past = 0
    for i in range(n):
        (g,) = torch.autograd.grad(logits[i], x, retain_graph=True)
        g = g.flatten()
        assert torch.all(g[i:] == 0), f"output pixel {i} depends on input pixels {(g[i:] != 0).nonzero().flatten()}"
        seen_past += int(bool((g[:i] != 0).any()))
    assert seen_past == n - 1  # every pixel but the first depends on some earlier pixel


def test_masks_hold_after_training_steps():
    """The mask is applied at every call: an optimiser step cannot make a future pixel visible."""
    model = _model(2)
    opt = torch.optim.SGD(model.parameters(), lr=1.0)
    x = (torch.rand(4, 1, 6, 5) > 0.5).float()
    for _ in range(2):
        opt.zero_grad()
        (-model.log_likelihood(x, model.encode(x)[0]).sum()).backward()
        opt.step()
    xi = torch.rand(1, 1, 6, 5, requires_grad=True)
    (g,) = torch.autograd.grad(model.logits(xi, torch.zeros(1, 3)).flatten()[7], xi)
    assert torch.all(g.flatten()[7:] == 0)


def test_log_likelihood_equals_independent_per_pixel_sum():
    """log p(x|z) = sum_i [x_i log sigmoid(l_i) + (1 - x_i) log(1 - sigmoid(l_i))], each term computed
    on its own in float64, where l_i is obtained with every pixel >= i of the input set to a
    different value (causality makes that irrelevant)."""
    model = _model(3).double()
    x = (torch.rand(3, 1, 6, 5, generator=torch.Generator().manual_seed(1)) > 0.5).double()
    z = torch.randn(3, 3, dtype=torch.float64)
    got = model.log_likelihood(x, z)
    want = torch.zeros(3, dtype=torch.float64)
    flat = x.flatten(1)
    for i in range(30):
        masked = flat.clone()
        masked[:, i:] = 0.5  # hide the current and future pixels
        logit = model.logits(masked.view_as(x), z).flatten(1)[:, i]
        p = 1 / (1 + torch.exp(-logit))
        want += torch.where(flat[:, i] == 1, torch.log(p), torch.log(1 - p))
    torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-10)


def test_log_likelihood_folds_sample_dims():
    model = _model(2)
    x = (torch.rand(4, 1, 6, 5) > 0.5).float()
    z = torch.randn(7, 4, 3)
    ll = model.log_likelihood(x, z)
    assert ll.shape == (7, 4)
    torch.testing.assert_close(ll[5], model.log_likelihood(x, z[5]))
    assert torch.all(ll <= 0)


def test_encode_shapes_and_clamp():
    model = _model(1)
    mu, logvar = model.encode(torch.zeros(2, 1, 6, 5))
    assert mu.shape == logvar.shape == (2, 3)
    assert torch.all(logvar <= 10) and torch.all(logvar >= -10)


def test_ancestral_sample_matches_the_model_distribution():
    """Sampling one pixel at a time from its conditional: for a 1x2 image, the empirical frequency of
    each of the 4 images matches p(x|z) = exp(log_likelihood) within 4 standard errors."""
    torch.manual_seed(3)
    model = PixelCNNVAE(event_shape=(1, 1, 2), latent_dim=2, layers=2, channels=4, kernel=3, first_kernel=3)
    z = torch.randn(1, 2).expand(20_000, 2)
    s = model.sample(z, torch.Generator().manual_seed(0)).flatten(1)
    assert set(s.unique().tolist()) <= {0.0, 1.0}
    for a in (0, 1):
        for b in (0, 1):
            x = torch.tensor([[[[a, b]]]], dtype=torch.float32)
            p = math.exp(float(model.log_likelihood(x, z[:1]).detach()))
            freq = float(((s[:, 0] == a) & (s[:, 1] == b)).float().mean())
            assert abs(freq - p) <= 4 * math.sqrt(p * (1 - p) / 20_000) + 1e-4


def test_sample_is_reproducible():
    model = _model(2)
    z = torch.randn(3, 3)
    a = model.sample(z, torch.Generator().manual_seed(5))
    b = model.sample(z, torch.Generator().manual_seed(5))
    assert torch.equal(a, b) and a.shape == (3, 1, 6, 5)


def test_bad_shapes_refused():
    with pytest.raises(ValueError, match="one-channel images"):
        PixelCNNVAE(event_shape=(64,), latent_dim=2)
