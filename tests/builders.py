"""Random test data shared by the test modules, built from fixed seeds.

Float64 by default: the float64 references and finite differences need it (under
the ``x64`` fixture; without it JAX gives float32).
"""

import jax
import jax.numpy as jnp
import numpy as np


def logits(shape, seed=0, scale=2.0, dtype=jnp.float64):
    """Standard-normal logits times ``scale``."""
    return scale * jax.random.normal(jax.random.key(seed), shape, dtype)


def probabilities(shape, seed=1, dtype=jnp.float64):
    """Rows (last axis) of a softmax of standard-normal logits: strictly positive, sum 1."""
    return jax.nn.softmax(jax.random.normal(jax.random.key(seed), shape, dtype))


def index_problem(shape, axis, seed=0, ignore_frac=0.3, dtype=jnp.float64):
    """Logits of ``shape`` with classes on ``axis``, class-index targets of the other axes
    (about ``ignore_frac`` of them -100), and the class count."""
    key_x, key_t, key_i = jax.random.split(jax.random.key(seed), 3)
    x = 3 * jax.random.normal(key_x, shape, dtype)
    num_classes = shape[axis]
    index_shape = shape[: axis % len(shape)] + shape[axis % len(shape) + 1 :]
    targets = jax.random.randint(key_t, index_shape, 0, num_classes)
    ignored = jax.random.uniform(key_i, index_shape) < ignore_frac
    return x, jnp.where(ignored, -100, targets), num_classes


def linear_problem(n=40, h=8, v=29, seed=0, dtype=jnp.float64, batch=None):
    """Hidden states ``x``, projection ``w`` ``(h, v)``, bias ``b`` and token ids (about a
    fifth of them -100) for ``linear_cross_entropy``."""
    kx, kw, kb, ky, ki = jax.random.split(jax.random.key(seed), 5)
    shape = (n,) if batch is None else (batch, n)
    x = jax.random.normal(kx, (*shape, h), dtype)
    w = jax.random.normal(kw, (h, v), dtype) / np.sqrt(h) * 3
    b = 0.5 * jax.random.normal(kb, (v,), dtype)
    y = jax.random.randint(ky, shape, 0, v)
    y = jnp.where(jax.random.uniform(ki, shape) < 0.2, -100, y)
    return x, w, b, y
