"""Data augmentation of training batches, as the source experiments' Keras code did it.

``AUGMENTATIONS[name](x, generator)`` returns a randomly transformed copy of a batch of
images ``x`` ``(N, C, H, W)``, each image with its own draw from ``generator`` (the
run's, so that a run stays reproducible). The one the lab has:

* ``"shear-zoom-flip"``: Keras's ``ImageDataGenerator(shear_range=0.2, zoom_range=0.2,
  horizontal_flip=True)``, the augmentation of the blog post reviewing Ioffe and
  Szegedy's batch normalization with a Keras CNN on CIFAR-100 (:func:`random_affine`).
"""

from __future__ import annotations

import math
from functools import partial

import torch
import torch.nn.functional as F

__all__ = ["AUGMENTATIONS", "random_affine", "affine"]


def affine(x: torch.Tensor, matrix: torch.Tensor, flip: torch.Tensor) -> torch.Tensor:
    """Each image ``x[i]`` ``(C, H, W)`` resampled as Keras's ``apply_affine_transform`` does,
    then mirrored left to right where ``flip[i]``.

    ``matrix[i]`` ``(2, 2)`` maps an output pixel's (row, column) to the input's, about
    Keras's center ``(H / 2 + 0.5, W / 2 + 0.5)`` (``transform_matrix_offset_center``;
    half a pixel past the true center ``((H - 1) / 2, (W - 1) / 2)``, kept for
    equivalence): ``input = matrix (output - center) + center``. Values between pixels
    are interpolated bilinearly and outside the image taken from the nearest edge pixel,
    as ``scipy.ndimage.affine_transform(order=1, mode="nearest")`` does in Keras.
    """
    n, _, h, w = x.shape
    rows = torch.arange(h, dtype=x.dtype).view(1, h, 1) - (h / 2 + 0.5)
    cols = torch.arange(w, dtype=x.dtype).view(1, 1, w) - (w / 2 + 0.5)
    m = matrix.to(x.dtype).view(n, 4, 1, 1)
    source_row = m[:, 0] * rows + m[:, 1] * cols + (h / 2 + 0.5)
    source_col = m[:, 2] * rows + m[:, 3] * cols + (w / 2 + 0.5)
    # grid_sample's coordinates: x (the column) then y (the row), -1 and 1 at the centers of the edge pixels
    grid = torch.stack([2 * source_col / max(w - 1, 1) - 1, 2 * source_row / max(h - 1, 1) - 1], dim=-1)
    out = F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=True)
    return torch.where(flip.view(n, 1, 1, 1), out.flip(-1), out)


def random_affine(
    x: torch.Tensor, generator: torch.Generator, *, shear: float = 0.0, zoom: float = 0.0, horizontal_flip: bool = False
) -> torch.Tensor:
    """Keras's ``ImageDataGenerator(shear_range=shear, zoom_range=zoom, horizontal_flip=...)``
    on a batch ``x`` ``(N, C, H, W)``, each image with its own random draw.

    Per image, as Keras's ``get_random_transform`` draws them: a shear angle uniform in
    ``[-shear, shear]`` *degrees* (Keras since 2.2; before, radians), zoom factors ``zx``
    (rows) and ``zy`` (columns) uniform in ``[1 - zoom, 1 + zoom]`` each (above 1 the
    image shrinks), a left-right mirror with probability 1/2. The affine map is Keras's
    ``shear_matrix @ zoom_matrix`` on (row, column), ``[[zx, -sin(s) zy], [0, cos(s) zy]]``,
    applied about its center by :func:`affine`, the mirror after it.

    Example::

        >>> g = torch.Generator().manual_seed(0)
        >>> random_affine(torch.rand(4, 3, 32, 32), g, shear=0.2, zoom=0.2, horizontal_flip=True).shape
        torch.Size([4, 3, 32, 32])
    """
    if x.dim() != 4:
        raise ValueError(f"random_affine: expected images (N, C, H, W), got shape {tuple(x.shape)}")
    n = x.shape[0]

    def uniform(low, high):
        return torch.rand(n, generator=generator, dtype=torch.float64) * (high - low) + low

    s = uniform(-shear, shear) * (math.pi / 180) if shear else torch.zeros(n, dtype=torch.float64)
    zx, zy = (uniform(1 - zoom, 1 + zoom) for _ in range(2)) if zoom else (torch.ones(n, dtype=torch.float64),) * 2
    flip = torch.rand(n, generator=generator) < 0.5 if horizontal_flip else torch.zeros(n, dtype=torch.bool)
    matrix = torch.stack([zx, -torch.sin(s) * zy, torch.zeros_like(zx), torch.cos(s) * zy], dim=1).view(n, 2, 2)
    return affine(x, matrix, flip)


# name -> fn(images (N, C, H, W), generator) -> augmented images; "none" trains on the images as they are
AUGMENTATIONS = {
    "none": None,
    "shear-zoom-flip": partial(random_affine, shear=0.2, zoom=0.2, horizontal_flip=True),
}
