"""Random test data shared by the test modules, built from fixed seeds.

Drawn with NumPy in float64 and then converted: building the data compiles nothing, so
a test's compilations are those of the code it tests. Float64 by default: the float64
references and finite differences need it (under the ``x64`` fixture; without it JAX
gives float32).
"""

import jax.numpy as jnp
import numpy as np


def _normal(seed, shape):
    return np.random.default_rng(seed).standard_normal(shape)


def logits(shape, seed=0, scale=2.0, dtype=jnp.float64):
    """Standard-normal logits times ``scale``."""
    return jnp.asarray(scale * _normal(seed, shape), dtype)


def probabilities(shape, seed=1, dtype=jnp.float64):
    """Rows (last axis) of a softmax of standard-normal logits: strictly positive, sum 1."""
    z = _normal(seed, shape)
    e = np.exp(z - z.max(axis=-1, keepdims=True))
    return jnp.asarray(e / e.sum(axis=-1, keepdims=True), dtype)


def index_problem(shape, axis, seed=0, ignore_frac=0.3, dtype=jnp.float64):
    """Logits of ``shape`` with classes on ``axis``, class-index targets of the other axes
    (about ``ignore_frac`` of them -100), and the class count."""
    rng = np.random.default_rng(seed)
    x = 3 * rng.standard_normal(shape)
    num_classes = shape[axis]
    index_shape = shape[: axis % len(shape)] + shape[axis % len(shape) + 1 :]
    targets = rng.integers(0, num_classes, index_shape)
    ignored = rng.uniform(size=index_shape) < ignore_frac
    targets = np.where(ignored, -100, targets)
    return jnp.asarray(x, dtype), jnp.asarray(targets), num_classes


def linear_problem(n=40, h=8, v=29, seed=0, dtype=jnp.float64, batch=None):
    """Hidden states ``x``, projection ``w`` ``(h, v)``, bias ``b`` and token ids (about a
    fifth of them -100) for ``linear_cross_entropy``."""
    rng = np.random.default_rng(seed)
    shape = (n,) if batch is None else (batch, n)
    x = rng.standard_normal((*shape, h))
    w = rng.standard_normal((h, v)) / np.sqrt(h) * 3
    b = 0.5 * rng.standard_normal(v)
    y = np.where(rng.uniform(size=shape) < 0.2, -100, rng.integers(0, v, shape))
    arrays = (jnp.asarray(a, dtype) for a in (x, w, b))
    return (*arrays, jnp.asarray(y))


def normal(shape, seed=0, dtype=None):
    """Standard-normal draws; ``dtype`` None is JAX's default float."""
    return jnp.asarray(_normal(seed, shape), dtype)


def uniform(shape, seed=0, dtype=None, low=0.0, high=1.0):
    """Uniform draws in ``[low, high)``; ``dtype`` None is JAX's default float."""
    return jnp.asarray(np.random.default_rng(seed).uniform(low, high, shape), dtype)


def integers(shape, seed=0, low=0, high=2):
    """Integers in ``[low, high)`` of JAX's default integer type."""
    return jnp.asarray(np.random.default_rng(seed).integers(low, high, shape))
