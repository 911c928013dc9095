"""The source experiments as written: ``normlab reproduce --profile sources``.

Each reruns an experiment of one of the articles the lab started from with what its
source specifies (architecture, optimizer, batch size, Keras's initialization where
Keras built it, preprocessing, budget) and makes the source's own comparison and plot:

* ``keras-cnn-cifar100``: the blog post reviewing Ioffe and Szegedy's batch
  normalization with a Keras CNN on CIFAR-100, {sigmoid, ReLU} x {BN, none};
* ``vgg-noise-cifar10``: Santurkar et al.'s VGG with BN, "noisy" BN and none on
  CIFAR-10, as Shipra Saxena's "Introduction to Batch Normalization" retells it;
* ``keras-dense-synthetic``: the dense network of the 3-minute tutorial "Batch
  Normalization", its summary and training curve on its synthetic data.

Where a source is silent, the choice made is stated in the module and in
docs/sources.md next to the source's words. A source experiment whose data is not
given (``--data`` naming no folder with its CIFAR set) is skipped with the reason. In
the tiny profile each runs a test budget of a few steps.
"""

from __future__ import annotations

from . import keras_cnn_cifar100, keras_dense_synthetic, vgg_noise_cifar10
from ..base import Claim

SOURCES: dict[str, Claim] = {
    c.name: c for c in [keras_cnn_cifar100.CLAIM, vgg_noise_cifar10.CLAIM, keras_dense_synthetic.CLAIM]
}

__all__ = ["SOURCES"]
