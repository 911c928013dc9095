"""Keras's batch-norm conventions, converted explicitly into normlab's (PyTorch's).

The same word means opposite things in the two libraries, a common silent bug when a
model or a recipe moves between them:

    momentum   Keras: the weight of the OLD average, default 0.99
                   moving = momentum * moving + (1 - momentum) * batch
               torch / normlab: the weight of the NEW batch, default 0.1
                   running = (1 - momentum) * running + momentum * batch
               so Keras's 0.99 is 0.01 here, and Keras's 0.9 is torch's 0.1.
    epsilon    Keras: default 1e-3;  torch: eps, default 1e-5.
    center     Keras: whether there is a beta (torch: the bias).
    scale      Keras: whether there is a gamma (torch: the weight).

Passing Keras's 0.99 as a normlab momentum makes the running statistics follow each
batch almost entirely: no error, just an inference that quietly behaves badly. Convert
through :func:`from_keras_momentum` (or build the layer with
:func:`batch_norm_from_keras`) instead.

One difference no argument removes: Keras moves ``moving_variance`` towards the biased
batch variance, torch towards the unbiased one (``var * m / (m - 1)`` for m values per
channel). With m in the hundreds the two differ by well under 1%.
"""

from __future__ import annotations

from .batchnorm import BatchNorm1d, BatchNorm2d, BatchNorm3d, _BatchNorm

__all__ = ["from_keras_momentum", "to_keras_momentum", "batch_norm_from_keras"]


def from_keras_momentum(keras_momentum: float) -> float:
    """Keras's momentum (weight of the old average) as normlab's (weight of the new batch): ``1 - m``.

    Rounded to 12 decimals, so that 0.99 gives 0.01 rather than 0.010000000000000009.
    """
    if not 0 <= keras_momentum <= 1:
        raise ValueError(f"from_keras_momentum: a Keras momentum lies in [0, 1], got {keras_momentum}")
    return round(1.0 - keras_momentum, 12)


def to_keras_momentum(momentum: float) -> float:
    """normlab's momentum (weight of the new batch) as Keras's (weight of the old average): ``1 - m``,
    rounded to 12 decimals."""
    if momentum is None:
        raise ValueError("to_keras_momentum: momentum=None (a cumulative average) has no Keras equivalent")
    if not 0 <= momentum <= 1:
        raise ValueError(f"to_keras_momentum: a momentum lies in [0, 1], got {momentum}")
    return round(1.0 - momentum, 12)


_BY_SPATIAL_DIMS = {0: BatchNorm1d, 1: BatchNorm1d, 2: BatchNorm2d, 3: BatchNorm3d}


def batch_norm_from_keras(
    num_features: int,
    spatial_dims: int = 2,
    *,
    momentum: float = 0.99,
    epsilon: float = 1e-3,
    center: bool = True,
    scale: bool = True,
    device=None,
    dtype=None,
) -> _BatchNorm:
    """A normlab batch norm configured as ``keras.layers.BatchNormalization(momentum=..., epsilon=...,
    center=..., scale=...)`` would be, with Keras's defaults.

    ``num_features`` is the number of channels (Keras infers it from the input);
    ``spatial_dims`` picks the layer: 0 (after a Dense layer) or 1 gives
    :class:`BatchNorm1d`, 2 :class:`BatchNorm2d`, 3 :class:`BatchNorm3d`. The channels are
    dim 1, as everywhere in PyTorch: a Keras model's ``axis=-1`` on NHWC data is dim 1
    of the NCHW tensor PyTorch layers take.

    ``momentum`` is converted by :func:`from_keras_momentum`; ``epsilon`` becomes ``eps``;
    ``center=False`` leaves out the bias (beta) and ``scale=False`` the weight (gamma),
    so that the ``state_dict`` holds exactly the tensors Keras would have.
    """
    if spatial_dims not in _BY_SPATIAL_DIMS:
        raise ValueError(f"batch_norm_from_keras: spatial_dims must be 0, 1, 2 or 3, got {spatial_dims!r}")
    layer = _BY_SPATIAL_DIMS[spatial_dims](
        num_features,
        eps=epsilon,
        momentum=from_keras_momentum(momentum),
        affine=scale or center,
        bias=center,
        device=device,
        dtype=dtype,
    )
    if not scale and center:
        layer.register_parameter("weight", None)  # a beta without a gamma
    return layer
