"""Latent traversals (vaebench.core.traversals): rows sorted by KL, collapsed dims found by docs/reference.md's
(epsilon, delta) rule, each row decoded along its own dim only; the per-trial artifact."""

from __future__ import annotations

import io

import torch
from PIL import Image

from vaebench.core.models import build_model
from vaebench.core.traversals import traversal_grid, traversals_png
from vaebench.core.trial import artifacts
from vaebench.data import load_data
from vaebench.study.config import DigitsData, MetricsConfig, ModelConfig


def model_with_a_dead_dim(data):
    """An MLP VAE on digits whose dim 1 is the prior for every x (mean 0, log-variance 0: KL 0) and is
    ignored by the decoder, and whose dim 0 has a larger posterior mean scale than dim 2 (more KL)."""
    torch.manual_seed(0)
    model = build_model(ModelConfig(kind="mlp", latent_dim=3, hidden=[32]), data.meta.shape)
    head = model.encoder.head  # rows 0..2: mu, rows 3..5: logvar
    with torch.no_grad():
        head.weight[1].zero_()
        head.bias[1].zero_()
        head.weight[4].zero_()
        head.bias[4].zero_()
        head.weight[0] *= 10
        model.decoder.body[0].weight[:, 1].zero_()
    return model


def test_rows_sorted_by_kl_and_collapsed_dim_marked():
    data = load_data(DigitsData(), 0)
    model = model_with_a_dead_dim(data)
    images, dims, kls, collapsed = traversal_grid(model, data.val, steps=7)
    assert images.shape == (3, 7, 8, 8)
    assert kls == sorted(kls, reverse=True) and dims[0] == 0 and dims[-1] == 1
    assert collapsed == [False, False, True] and kls[-1] == 0.0
    # the dead dim changes nothing, up to float rounding: with several threads the rows of one matrix
    # product may be summed in different orders
    assert torch.allclose(images[2], images[2, :1].expand(7, 8, 8), rtol=0, atol=1e-6)
    assert not torch.allclose(images[0, 0], images[0, -1])  # a live dim does
    assert 0 <= images.min() and images.max() <= 1


def test_png_is_large_enough_and_labelled_rows():
    data = load_data(DigitsData(), 0)
    png = traversals_png(model_with_a_dead_dim(data), data.val, steps=11)
    img = Image.open(io.BytesIO(png))
    # 8x8 digits are drawn at 64x64; one row per dim under a header, a label column on the left
    assert img.width >= 190 + 11 * 64 and img.height >= 3 * 64
    label = img.crop((0, 34, 190, img.height)).convert("L")
    assert min(label.getdata()) < 100  # text was drawn in the label column


def test_artifact_of_an_image_trial():
    data = load_data(DigitsData(), 0)
    out = artifacts(model_with_a_dead_dim(data), data, MetricsConfig())
    assert {"checkpoint.pt", "reconstructions.png", "traversals.png"} <= set(out)
    assert out["traversals.png"].startswith(b"\x89PNG")
