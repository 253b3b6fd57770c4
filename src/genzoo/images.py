"""Pictures a run writes: sample grids and the loss curve."""
from __future__ import annotations

import math
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from genzoo.files import atomic_write

__all__ = ["save_image_grid", "save_loss_curve", "as_images"]


def as_images(x: torch.Tensor | np.ndarray, value_range: str | None = None) -> np.ndarray:
    """uint8 images from (N, C, H, W), (N, H, W) or flat (N, D) with D a square (else one row of D
    pixels each): (N, H, W) gray, or (N, H, W, 3) in colour for C = 3; any other C puts the
    channels side by side, (N, H, C·W). ``value_range`` "unit" ([0, 1]: bits, probabilities) or
    "8-bit" ([0, 255]); None guesses from the values, which a dark 8-bit image can fool."""
    x = np.asarray(x.detach().cpu() if isinstance(x, torch.Tensor) else x, dtype=np.float32)
    n = len(x)
    if x.ndim == 4:
        c, h, w = x.shape[1:]
        if c == 3:
            x = x.transpose(0, 2, 3, 1)
        else:
            x = x.transpose(0, 2, 1, 3).reshape(n, h, c * w)
    elif x.ndim == 2:
        side = math.isqrt(x.shape[1])
        x = x.reshape(n, side, side) if side * side == x.shape[1] else x.reshape(n, 1, -1)
    if value_range is None:
        value_range = "unit" if x.max(initial=0) <= 1.0 else "8-bit"
    scale = 255.0 if value_range == "unit" else 1.0
    return np.clip(x * scale, 0, 255).astype(np.uint8)


def image_format(path: str | Path) -> str:
    """The image format Pillow writes for ``path``'s extension, or a ValueError naming the path,
    so that a command can refuse a bad name before its work rather than after it."""
    from PIL import Image

    suffix = Path(path).suffix.lower()
    image_format = Image.registered_extensions().get(suffix)
    if image_format is None or image_format not in Image.SAVE:
        raise ValueError(f"{path}: not an image file name; use a .png (or .jpg, .bmp, .gif, .tif, .webp) "
                         "name, and the .npy is written beside it")
    return image_format


def save_image_grid(x: torch.Tensor | np.ndarray, path: str | Path, ncols: int | None = None, zoom: int = 4,
                    padding: int = 2, value_range: str | None = None) -> Path:
    from PIL import Image

    images = as_images(x, value_range)
    n, h, w = images.shape[:3]
    ncols = ncols or math.ceil(math.sqrt(n))
    nrows = math.ceil(n / ncols)
    grid = np.full((nrows * (h + padding) + padding, ncols * (w + padding) + padding, *images.shape[3:]), 128, np.uint8)
    for i, image in enumerate(images):
        r, c = divmod(i, ncols)
        top, left = padding + r * (h + padding), padding + c * (w + padding)
        grid[top : top + h, left : left + w] = image
    picture = Image.fromarray(grid).resize((grid.shape[1] * zoom, grid.shape[0] * zoom), Image.NEAREST)
    return atomic_write(path, lambda f: picture.save(f, format=image_format(path)))


def save_loss_curve(records: Sequence[dict], path: str | Path, title: str = "") -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    epochs = [r["epoch"] for r in records]
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot(epochs, [r["train_loss"] for r in records], marker="o", label="train loss (nats)")
    validated = [r for r in records if "valid_nll" in r]  # with eval_every > 1 not every epoch is
    ax.plot([r["epoch"] for r in validated], [r["valid_nll"] for r in validated], marker="o", label="valid NLL (nats)")
    ax.set_xlabel("epoch")
    ax.set_ylabel("nats per example")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    try:
        suffix = Path(path).suffix.lstrip(".").lower()  # matplotlib's formats: png, pdf, svg, ...; else png
        picture_format = suffix if suffix in fig.canvas.get_supported_filetypes() else "png"
        return atomic_write(path, lambda f: fig.savefig(f, dpi=100, format=picture_format))
    finally:
        plt.close(fig)
