"""Integer targets of any dtype, resolved once for every family: class indices (the
softmax losses, the margin and sparsemax losses, Dice, CTC's labels) and lengths (CTC).

JAX compares an integer array with a Python int in the array's dtype, so
``jnp.array([100], jnp.int8) < 300`` is False (300 wraps to 44) and ``uint8`` targets
never equal -100. Every comparison here is made only where its bound fits the
targets' dtype; the result is int32 codes that every dtype maps to alike.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

IGNORED = -1  # the code of an element whose target is ignore_index
OUT_OF_RANGE = -2  # the code of a kept element whose target is outside [0, C)


def target_codes(
    targets: jax.Array, num_classes: int, ignore_index: int | None = None
) -> jax.Array:
    """Integer targets as int32 codes: the class in ``[0, num_classes)``, ``IGNORED``
    (equal to ``ignore_index``) or ``OUT_OF_RANGE``.

    ``ignore_index`` and ``num_classes`` are mathematical integers: a value the dtype
    cannot hold (-100 for ``uint8`` targets, 300 classes for ``int8``) never matches
    or bounds a target by wrapping around. Once resolved, every dtype gives the same
    int32 array, so the same losses and gradients, bit for bit.
    """
    info = jnp.iinfo(targets.dtype)
    if ignore_index is not None and info.min <= ignore_index <= info.max:
        keep = targets != ignore_index
    else:
        keep = jnp.ones(targets.shape, bool)
    in_range = targets >= 0 if info.min < 0 else jnp.ones(targets.shape, bool)
    if num_classes <= info.max:
        in_range = in_range & (targets < num_classes)
    class_index = jnp.where(in_range, targets, 0).astype(jnp.int32)
    codes = jnp.where(keep, jnp.where(in_range, class_index, OUT_OF_RANGE), IGNORED)
    # The barrier keeps XLA from fusing the dtype-specific comparisons into the loss,
    # so that the program after it, and so its rounding, is the same for every dtype.
    return jax.lax.optimization_barrier(codes)


# Called by the public functions before their core: the core is then one program for
# every target dtype and ignore_index, compiled once and rounding alike.
resolve_targets = jax.jit(target_codes, static_argnums=(1, 2))


class ClassIndex(NamedTuple):
    """Class indices without an ignored value, resolved (from ``class_index``)."""

    class_index: jax.Array  # int32 class, 0 where out of range (safe to gather)
    valid: jax.Array  # the target is in [0, C); elsewhere the element is nan


def class_index(targets: jax.Array, num_classes: int) -> ClassIndex:
    """Class indices of any integer dtype, with whether each is in ``[0, num_classes)``."""
    codes = target_codes(targets, num_classes)
    return ClassIndex(jnp.maximum(codes, 0), codes >= 0)


def bounded_count(values: jax.Array, limit: int) -> tuple[jax.Array, jax.Array]:
    """Counts (lengths) of any integer dtype as int32, with whether each is in
    ``[0, limit]``; 0 where it is not."""
    resolved = class_index(values, limit + 1)
    return resolved.class_index, resolved.valid
