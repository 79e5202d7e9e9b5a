"""ResNet-9 for CIFAR-10 in Flax NNX.

The architecture of David Page's "How to train your ResNet" (2018), the net
that first trained to 94% CIFAR-10 test accuracy in 24 epochs: a prep conv, three
stages that double the width and halve the resolution, residual blocks after
the first and third, global max pooling and a scaled linear classifier.
``width`` sets the first stage's channels (64 in the original).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx


class ConvBN(nnx.Module):
    """3x3 convolution, batch norm, ReLU."""

    def __init__(self, in_channels: int, out_channels: int, *, dtype, rngs: nnx.Rngs):
        self.conv = nnx.Conv(
            in_channels,
            out_channels,
            (3, 3),
            padding="SAME",
            use_bias=False,
            dtype=dtype,
            rngs=rngs,
        )
        self.norm = nnx.BatchNorm(out_channels, momentum=0.9, dtype=dtype, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        return nnx.relu(self.norm(self.conv(x)))


class Residual(nnx.Module):
    def __init__(self, channels: int, *, dtype, rngs: nnx.Rngs):
        self.first = ConvBN(channels, channels, dtype=dtype, rngs=rngs)
        self.second = ConvBN(channels, channels, dtype=dtype, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        return x + self.second(self.first(x))


def _max_pool(x: jax.Array) -> jax.Array:
    return nnx.max_pool(x, (2, 2), strides=(2, 2))


class ResNet9(nnx.Module):
    def __init__(
        self, num_classes: int = 10, width: int = 64, *, dtype=jnp.float32, rngs: nnx.Rngs
    ):
        w = width
        self.prep = ConvBN(3, w, dtype=dtype, rngs=rngs)
        self.stage1 = ConvBN(w, 2 * w, dtype=dtype, rngs=rngs)
        self.res1 = Residual(2 * w, dtype=dtype, rngs=rngs)
        self.stage2 = ConvBN(2 * w, 4 * w, dtype=dtype, rngs=rngs)
        self.stage3 = ConvBN(4 * w, 8 * w, dtype=dtype, rngs=rngs)
        self.res3 = Residual(8 * w, dtype=dtype, rngs=rngs)
        self.head = nnx.Linear(8 * w, num_classes, use_bias=False, dtype=dtype, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        x = self.prep(x)
        x = self.res1(_max_pool(self.stage1(x)))
        x = _max_pool(self.stage2(x))
        x = self.res3(_max_pool(self.stage3(x)))
        x = jnp.max(x, axis=(1, 2))
        # The 1/8 output scale of the original keeps early logits small, which
        # matters with label smoothing and a high learning rate.
        return (self.head(x) * 0.125).astype(jnp.float32)
