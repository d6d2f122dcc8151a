"""Latent traversals: how people look at disentanglement (Higgins et al. 2017, Chen et al. 2018).

``traversals_png`` draws one row per latent dim, sorted by its mean KL over the validation split
(the most informative first): the images decoded (likelihood mean) as that dim moves from -3 to +3
with every other dim held at a validation example's posterior mean. Collapsed dims (REFERENCE.md,
Lucas et al. 2019: P_x[KL_j(x) < epsilon] >= 1 - delta) are labelled as such and greyed; their rows
should not change. PIL only (imports in milliseconds on a worker).
"""

from __future__ import annotations

import io
import math

import torch

from vaebench.core.models import VAE
from vaebench.core.objectives import kl_per_dim

LABEL_WIDTH = 190
CELL = 64  # smallest drawn size of an image, pixels: small images are upscaled


@torch.no_grad()
def traversal_grid(
    model: VAE,
    x_val: torch.Tensor,
    steps: int = 11,
    limit: float = 3.0,
    example: int = 0,
    epsilon: float = 0.01,
    delta: float = 0.01,
    batch_size: int = 1024,
):
    """(images [J, steps, H, W] in [0, 1] in display order, dims in that order, their mean KL, collapsed flags)."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    kls = [kl_per_dim(*model.encode(xb.to(device))) for xb in x_val.split(batch_size)]
    base = model.encode(x_val[example : example + 1].to(device))[0][0]
    kl = torch.cat(kls)
    mean_kl = kl.mean(0)
    collapsed = (kl < epsilon).float().mean(0) >= 1 - delta
    order = torch.argsort(mean_kl, descending=True, stable=True)
    values = torch.linspace(-limit, limit, steps, device=device)
    rows = []
    for j in order.tolist():
        z = base.repeat(steps, 1)
        z[:, j] = values
        rows.append(model.decode_mean(z)[:, 0].clamp(0, 1).cpu())  # first channel
    model.train(was_training)
    return torch.stack(rows), order.tolist(), mean_kl[order].tolist(), collapsed[order].tolist()


def traversals_png(
    model: VAE,
    x_val: torch.Tensor,
    steps: int = 11,
    limit: float = 3.0,
    example: int = 0,
    epsilon: float = 0.01,
    delta: float = 0.01,
) -> bytes:
    """The traversal grid as PNG bytes, rows labelled with the dim, its KL (nats) and 'collapsed'."""
    from PIL import Image, ImageDraw, ImageFont

    images, dims, kls, collapsed = traversal_grid(model, x_val, steps, limit, example, epsilon, delta)
    J, _, H, W = images.shape
    scale = max(1, math.ceil(CELL / max(H, W)))
    h, w, gap, top = H * scale, W * scale, 2, 34
    canvas = Image.new("RGB", (LABEL_WIDTH + steps * (w + gap) + gap, top + J * (h + gap) + gap), "white")
    draw = ImageDraw.Draw(canvas)
    try:
        font = ImageFont.load_default(size=14)
    except TypeError:  # Pillow < 10.1: the fixed bitmap font
        font = ImageFont.load_default()
    draw.text((6, 4), f"val example {example}", fill="black", font=font)
    draw.text((6, 18), "dims sorted by KL", fill="black", font=font)
    for i, v in enumerate(torch.linspace(-limit, limit, steps).tolist()):
        draw.text(
            (LABEL_WIDTH + gap + i * (w + gap) + w // 2 - 12, 10),
            f"{v:+.1f}".replace("-0.0", " 0.0"),
            fill="black",
            font=font,
        )
    for r in range(J):
        y = top + gap + r * (h + gap)
        if collapsed[r]:
            draw.rectangle([0, y, LABEL_WIDTH - 4, y + h - 1], fill=(225, 225, 225))
        draw.text((6, y + h // 2 - 16), f"z{dims[r]}  KL {kls[r]:.2f}", fill="black", font=font)
        if collapsed[r]:
            draw.text((6, y + h // 2 + 2), "collapsed", fill=(170, 0, 0), font=font)
        for c in range(steps):
            tile = (images[r, c].numpy() * 255).astype("uint8")
            if collapsed[r]:  # greyed: a collapsed dim's row carries nothing
                tile = (tile // 2 + 64).astype("uint8")
            img = Image.fromarray(tile, mode="L").resize((w, h), Image.NEAREST)
            canvas.paste(img.convert("RGB"), (LABEL_WIDTH + gap + c * (w + gap), y))
    buf = io.BytesIO()
    canvas.save(buf, format="PNG")
    return buf.getvalue()
