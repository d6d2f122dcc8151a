"""One trial as a stream of plain messages: what a sweep worker runs (docs/design.md, trial).

``run_trial(config)`` wraps the training loop so that nothing escapes it: each epoch
becomes an ``{"kind": "epoch", ...}`` message, the end an ``{"kind": "end", ...}`` message
with the final state and the artifacts as bytes (checkpoint, image grid), and an
exception a ``failed`` end with its traceback. It writes nothing anywhere: the driver
is the only writer, so a trial can run on a node that cannot reach the tracking store.
"""

from __future__ import annotations

import io
import os
import traceback
from collections.abc import Iterator
from typing import Any

import torch

from vaebench.core.models import VAE
from vaebench.core.train import configure_torch, train
from vaebench.data import Dataset, load_data
from vaebench.study.config import MetricsConfig, TrialConfig


def run_trial(config: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """Train the trial ``config`` (a TrialConfig as a dict); yield messages, never raise."""
    try:
        cfg = TrialConfig.model_validate(config)
        configure_torch(cfg.train.threads)  # before loading data: its first parallel op starts the threads
        data = load_data(cfg.data, cfg.data_seed)
        yield {"kind": "start", "pid": os.getpid(), "host": os.uname().nodename}
        report = None
        for report in train(cfg, data):
            yield {"kind": "epoch", "epoch": report.epoch, "metrics": report.metrics, "state": report.state}
        assert report is not None
        end: dict[str, Any] = {"kind": "end", "state": report.state, "epoch": report.epoch}
        if report.state == "completed":
            end["artifacts"] = artifacts(report.model, data, cfg.metrics)
        yield end
    except Exception:
        yield {"kind": "end", "state": "failed", "traceback": traceback.format_exc()}


def artifacts(model: VAE, data: Dataset, metrics: MetricsConfig | None = None) -> dict[str, bytes]:
    """The final checkpoint, and for image data a grid of reconstructions and samples and the latent
    traversals (vaebench.core.traversals; collapsed dims by ``metrics``' epsilon and delta); for token
    data a text of reconstructions and prior samples (``samples.txt``)."""
    from vaebench.core.traversals import traversals_png

    buf = io.BytesIO()
    torch.save({k: v.cpu() for k, v in model.state_dict().items()}, buf)
    out = {"checkpoint.pt": buf.getvalue()}
    if len(data.meta.shape) == 3 and getattr(model, "has_images", True):  # a plugin may have no image hook
        m = metrics or MetricsConfig()
        out["reconstructions.png"] = image_grid(model, data)
        out["traversals.png"] = traversals_png(model, data.val, epsilon=m.collapse_epsilon, delta=m.collapse_delta)
    elif data.meta.vocab:  # token data: reconstructions and prior samples as text
        from vaebench.core.models.sequence import text_artifact

        out["samples.txt"] = text_artifact(getattr(model, "inner", model), data.val, data.meta.vocab).encode()
    return out


ROW_LABELS = ("data", "reconstruction", "prior sample")


@torch.no_grad()
def image_grid(model: VAE, data: Dataset, n: int = 8, cell: int = 64) -> bytes:
    """PNG: a row of validation images, a row of their reconstructions (posterior means, decoded
    means) and a row of prior samples, each row labelled on the left; images are upscaled
    (nearest neighbour) to about ``cell`` pixels so that 8x8 digits are visible.
    PIL rather than matplotlib: it imports in milliseconds on the worker."""
    from PIL import Image, ImageDraw, ImageFont

    model.eval()
    device = next(model.parameters()).device
    x = data.val[:n].to(device)
    recon = model.decode_mean(model.encode(x)[0])
    g = torch.Generator(device).manual_seed(0)
    samples = model.decode_mean(torch.randn(n, model.latent_dim, generator=g, device=device))
    rows = torch.stack([x, recon, samples])[:, :, 0].clamp(0, 1).cpu()  # [3, n, H, W]
    H, W = rows.shape[-2:]
    scale = max(1, round(cell / max(H, W)))
    h, w, gap = H * scale, W * scale, 4
    try:
        font = ImageFont.load_default(size=14)
    except (TypeError, OSError):  # an old Pillow or no FreeType: the small bitmap font
        font = ImageFont.load_default()
    label_w = 16 + max(int(ImageDraw.Draw(Image.new("L", (1, 1))).textlength(t, font=font)) for t in ROW_LABELS)
    img = Image.new("L", (label_w + rows.shape[1] * (w + gap) + gap, 3 * (h + gap) + gap), 255)
    draw = ImageDraw.Draw(img)
    for r in range(3):
        top = gap + r * (h + gap)
        draw.text((8, top + h // 2), ROW_LABELS[r], fill=0, font=font, anchor="lm")
        for c in range(rows.shape[1]):
            tile = Image.fromarray((rows[r, c].numpy() * 255).astype("uint8"), mode="L").resize((w, h), Image.NEAREST)
            img.paste(tile, (label_w + gap + c * (w + gap), top))
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()
