"""Mechanics shared by every loss: reductions and class weights, dtype promotion,
symbolic-zero tangents, and what explicit sharding needs spelled out."""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax.custom_derivatives import SymbolicZero


def compute_dtype(dtype) -> jnp.dtype:
    """Low-precision inputs are accumulated in float32; float64 stays float64."""
    return jnp.promote_types(dtype, jnp.float32)


def is_zero(tangent) -> bool:
    """Whether a ``symbolic_zeros=True`` JVP rule got no tangent for this input."""
    return isinstance(tangent, SymbolicZero)


def explicit_sharding(x):
    """The sharding of ``x`` under JAX's explicit sharding mode, else None.

    Operations whose output sharding JAX cannot infer in that mode (a gather or a
    contraction along a sharded axis) pass it as ``out_sharding``.
    """
    sharding = getattr(jax.typeof(x), "sharding", None)
    axis_types = getattr(getattr(sharding, "mesh", None), "axis_types", ())
    if any(t == jax.sharding.AxisType.Explicit for t in axis_types):
        return sharding
    return None


def class_weight_of(weight: jax.Array, index: jax.Array) -> jax.Array:
    """``weight[index]`` (in range), sharded like ``index`` under explicit sharding."""
    sharding = explicit_sharding(index)
    if sharding is None:
        return weight[index]
    return weight.at[index].get(out_sharding=sharding)


def safe_divide(numerator: jax.Array, denominator: jax.Array) -> jax.Array:
    """``numerator / denominator``, and 0 (with zero gradient) where the denominator is 0.

    This is the documented deviation from PyTorch, whose mean over zero total
    weight (every target ignored) is ``0 / 0 = nan``.
    """
    empty = denominator == 0
    return jnp.where(empty, 0.0, numerator / jnp.where(empty, 1.0, denominator))


def reduce_loss(
    per_element: jax.Array,
    reduction: str,
    denominator: jax.Array | None = None,
) -> jax.Array:
    """Applies ``reduction`` to per-element losses.

    ``"mean"`` divides the sum by ``denominator`` (the total weight of the
    counted elements) when given, otherwise by the number of elements.
    """
    if reduction == "none":
        return per_element
    total = jnp.sum(per_element)
    if reduction == "sum":
        return total
    if denominator is None:
        denominator = jnp.asarray(per_element.size, per_element.dtype)
    return safe_divide(total, denominator)
