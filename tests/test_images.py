"""Sample grids and loss curves."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from genzoo.images import as_images, save_image_grid, save_loss_curve


def test_as_images_shapes_and_scaling():
    binary = torch.zeros(3, 1, 4, 4)
    binary[0, 0, 1, 2] = 1
    images = as_images(binary)
    assert images.shape == (3, 4, 4) and images.dtype == np.uint8
    assert images[0, 1, 2] == 255 and images.sum() == 255
    flat = as_images(np.full((2, 9), 200.0))  # 8-bit values are kept, a square D becomes a square
    assert flat.shape == (2, 3, 3) and (flat == 200).all()
    assert as_images(np.zeros((2, 6))).shape == (2, 1, 6)  # not a square: one row each
    assert as_images(np.ones((2, 5, 7))).shape == (2, 5, 7)


def test_image_grid_layout(tmp_path):
    x = torch.zeros(5, 1, 2, 3)
    x[4] = 1  # the fifth image is white
    path = save_image_grid(x, tmp_path / "sub" / "grid.png", ncols=2, zoom=1, padding=1)
    with Image.open(path) as image:
        grid = np.asarray(image)
    # 3 rows x 2 columns of 2x3 images with 1-pixel padding
    assert grid.shape == (3 * 3 + 1, 2 * 4 + 1)
    assert grid[0, 0] == 128  # padding is gray
    assert (grid[1:3, 1:4] == 0).all()  # image 0 is black
    assert (grid[7:9, 1:4] == 255).all()  # image 4 (row 2, column 0) is white
    assert (grid[7:9, 5:8] == 128).all()  # the unused cell stays gray


def test_image_grid_zoom(tmp_path):
    path = save_image_grid(np.zeros((4, 8, 8)), tmp_path / "grid.png", zoom=3)
    with Image.open(path) as image:
        assert image.size == ((2 * 10 + 2) * 3, (2 * 10 + 2) * 3)


def test_loss_curve(tmp_path):
    records = [{"epoch": e, "train_loss": 50.0 / e, "valid_nll": 55.0 / e} for e in (1, 2, 3)]
    path = save_loss_curve(records, tmp_path / "curve.png", title="made on digits")
    with Image.open(path) as image:
        assert image.format == "PNG" and image.size == (600, 400)


@pytest.mark.parametrize("n", [1, 2])
def test_loss_curve_with_few_points(tmp_path, n):
    records = [{"epoch": e, "train_loss": 1.0, "valid_nll": 1.0} for e in range(1, n + 1)]
    assert save_loss_curve(records, tmp_path / "curve.png").is_file()


def test_a_dark_8bit_image_is_scaled_by_its_range_not_its_values():
    dark = torch.tensor([[[[0.0, 1.0], [1.0, 0.0]]]])  # 8-bit gray levels 0 and 1: nearly black
    assert as_images(dark, "8-bit").max() == 1
    assert as_images(dark, "unit").max() == 255  # bits or Bernoulli means
    assert as_images(dark).max() == 255  # guessed from the values, as before


def test_three_channels_make_a_colour_grid_and_other_counts_sit_side_by_side(tmp_path):
    rgb = torch.zeros(2, 3, 4, 5)
    rgb[:, 0] = 1.0  # red
    images = as_images(rgb)
    assert images.shape == (2, 4, 5, 3) and (images[..., 0] == 255).all() and (images[..., 1:] == 0).all()
    path = save_image_grid(rgb, tmp_path / "rgb.png", zoom=1, padding=0)
    assert Image.open(path).mode == "RGB" and Image.open(path).getpixel((0, 0)) == (255, 0, 0)
    two = torch.stack([torch.zeros(4, 5), torch.ones(4, 5)], dim=0).expand(3, 2, 4, 5)
    tiled = as_images(two)
    assert tiled.shape == (3, 4, 10) and (tiled[:, :, :5] == 0).all() and (tiled[:, :, 5:] == 255).all()
