"""A check that a PNG written beside a command's JSON is a real picture with something drawn in it."""

from __future__ import annotations

from pathlib import Path

import numpy as np


def assert_picture(path: Path, min_width: int = 300) -> None:
    """``path`` is a PNG at least ``min_width`` pixels wide, not blank: several distinct colours
    (axes, text, data) over a substantial share of its pixels."""
    from matplotlib.image import imread

    assert path.is_file(), f"{path.name} was not written"
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", f"{path.name} is not a PNG"
    image = imread(path)
    assert image.ndim == 3 and image.shape[1] >= min_width, image.shape
    rgb = np.round(image[..., :3] * 255).astype(int).reshape(-1, 3)
    colours, counts = np.unique(rgb, axis=0, return_counts=True)
    assert len(colours) > 20, f"{path.name}: {len(colours)} colours"
    assert 1 - counts.max() / counts.sum() > 0.02, f"{path.name} is almost blank"
