"""Argument validation, run in Python before anything is traced.

Every check raises with a message that names the argument, what it got and
what it needs, so that misuse fails at trace time rather than as a shape error
deep inside XLA or, worse, as a silently broadcast wrong answer.
"""

from __future__ import annotations

import numbers

import jax
import jax.numpy as jnp
import numpy as np

REDUCTIONS = ("mean", "sum", "none")


def as_array(name: str, value) -> jax.Array:
    """Converts ``value`` to an array, naming the argument if that fails."""
    if isinstance(value, jax.Array):
        return value
    try:
        return jnp.asarray(value)
    except TypeError as err:
        raise TypeError(f"{name} must be an array, got {type(value).__name__}") from err


def floating_input(name: str, x, *, min_ndim: int = 0) -> jax.Array:
    """Returns ``x`` as an array after checking that it is floating with ``min_ndim`` axes."""
    x = as_array(name, x)
    if not jnp.issubdtype(x.dtype, jnp.floating):
        raise TypeError(f"{name} must have a floating dtype, got {x.dtype}")
    if x.ndim < min_ndim:
        raise ValueError(f"{name} must have at least {min_ndim} dimension(s), got shape {x.shape}")
    return x


def class_axis(axis, ndim: int, name: str = "axis") -> int:
    """Normalizes a class axis to a non-negative int in ``[0, ndim)``."""
    if isinstance(axis, bool) or not isinstance(axis, numbers.Integral):
        raise TypeError(f"{name} must be an int, got {axis!r}")
    if not -ndim <= axis < ndim:
        raise ValueError(f"{name} {axis} is out of bounds for logits of dimension {ndim}")
    return int(axis) % ndim


def reduction(value, allowed=REDUCTIONS) -> str:
    if value not in allowed:
        raise ValueError(f"reduction must be one of {allowed}, got {value!r}")
    return value


def ignore_index(value) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"ignore_index must be a Python int, got {value!r}")
    return int(value)


def is_concrete(value) -> bool:
    return not isinstance(value, jax.core.Tracer)


def is_static_zero(value) -> bool:
    """True for a value known at trace time to be 0: the option is off and its work
    can be skipped. A traced value keeps the general path, so changing it under
    ``jit`` never retraces."""
    return _concrete_float(value) == 0.0 if np.ndim(value) == 0 else False


def _concrete_float(value) -> float | None:
    """The value as a float when it is known at trace time (a Python number or a
    concrete array), ``None`` when it is traced. Checked before any conversion, since
    ``jnp.asarray`` of a Python number inside ``jit`` already gives a tracer."""
    if isinstance(value, numbers.Real):
        return float(value)
    if is_concrete(value):
        try:
            return float(np.asarray(value))
        except (TypeError, ValueError):
            return None
    return None


def unit_interval(name: str, value) -> jax.Array:
    """A scalar in [0, 1]; the range is checked whenever the value is concrete."""
    known = _concrete_float(value) if np.ndim(value) == 0 else None
    value = as_array(name, value)
    if value.ndim != 0:
        raise ValueError(f"{name} must be a scalar, got shape {value.shape}")
    if not (jnp.issubdtype(value.dtype, jnp.floating) or jnp.issubdtype(value.dtype, jnp.integer)):
        raise TypeError(f"{name} must be a real number, got dtype {value.dtype}")
    if known is not None and not 0.0 <= known <= 1.0:
        raise ValueError(f"{name} must be in [0, 1], got {known}")
    return value


def nonnegative_scalar(name: str, value, *, strict: bool = False) -> jax.Array:
    """A scalar >= 0 (> 0 if ``strict``), checked whenever the value is concrete."""
    known = _concrete_float(value) if np.ndim(value) == 0 else None
    value = as_array(name, value)
    if value.ndim != 0:
        raise ValueError(f"{name} must be a scalar, got shape {value.shape}")
    if known is not None and not (known > 0.0 if strict else known >= 0.0):
        raise ValueError(f"{name} must be {'>' if strict else '>='} 0, got {known}")
    return value


def logit_options(label_smoothing, z_loss, logit_softcap):
    """Checks the options shared by ``cross_entropy`` and ``linear_cross_entropy``.

    Returns them as arrays, plus whether smoothing and the z-loss can be on: a
    value known at trace time to be 0 turns its work off.
    """
    smoothing = not is_static_zero(label_smoothing)
    use_z_loss = not is_static_zero(z_loss)
    label_smoothing = unit_interval("label_smoothing", label_smoothing)
    z_loss = nonnegative_scalar("z_loss", z_loss)
    if logit_softcap is not None:
        logit_softcap = nonnegative_scalar("logit_softcap", logit_softcap, strict=True)
    return label_smoothing, z_loss, logit_softcap, smoothing, use_z_loss


def class_weight(weight, num_classes: int) -> jax.Array | None:
    """Per-class weights: a floating vector of length ``num_classes``."""
    if weight is None:
        return None
    weight = floating_input("weight", weight)
    if weight.shape != (num_classes,):
        raise ValueError(
            f"weight must have shape ({num_classes},), one entry per class, "
            f"got shape {weight.shape}"
        )
    return weight


def broadcastable_to(name: str, value, shape: tuple[int, ...], what: str) -> jax.Array:
    """Checks that ``value`` broadcasts to ``shape`` without changing ``shape``."""
    value = as_array(name, value)
    try:
        result = np.broadcast_shapes(value.shape, shape)
    except ValueError:
        result = None
    if result != tuple(shape):
        raise ValueError(
            f"{name} of shape {value.shape} does not broadcast to {what} shape {tuple(shape)}"
        )
    return value


def where_mask(where, shape: tuple[int, ...]) -> jax.Array | None:
    if where is None:
        return None
    where = broadcastable_to("where", where, shape, "the logits'")
    if where.dtype != jnp.bool_:
        raise TypeError(f"where must be a boolean mask, got dtype {where.dtype}")
    return jnp.broadcast_to(where, shape)


def index_or_probability_targets(targets, logits_shape: tuple[int, ...], axis: int):
    """Decides the target kind from its dtype and checks its shape.

    Returns ``(targets, is_index)``.
    """
    targets = as_array("targets", targets)
    index_shape = logits_shape[:axis] + logits_shape[axis + 1 :]
    if jnp.issubdtype(targets.dtype, jnp.integer):
        if targets.shape != index_shape:
            hint = ""
            if targets.shape == tuple(logits_shape):
                hint = (
                    "; integer targets are class indices, and targets of the logits' shape "
                    "are class probabilities, which must be floating"
                )
            raise ValueError(
                f"targets holds class indices (dtype {targets.dtype}) and must have shape "
                f"{index_shape} (the logits' shape {tuple(logits_shape)} without axis {axis}), "
                f"got {targets.shape}{hint}"
            )
        return targets, True
    if jnp.issubdtype(targets.dtype, jnp.floating):
        if targets.shape != tuple(logits_shape):
            hint = ""
            if targets.shape == index_shape:
                hint = "; class-index targets of this shape must have an integer dtype"
            raise ValueError(
                f"targets holds class probabilities (dtype {targets.dtype}) and must have the "
                f"logits' shape {tuple(logits_shape)}, got {targets.shape}{hint}"
            )
        return targets, False
    raise TypeError(
        f"targets must be integer class indices or floating class probabilities, "
        f"got dtype {targets.dtype}"
    )


def same_shape(name: str, value, shape: tuple[int, ...], what: str) -> jax.Array:
    value = as_array(name, value)
    if value.shape != tuple(shape):
        raise ValueError(f"{name} must have {what} shape {tuple(shape)}, got {value.shape}")
    return value
