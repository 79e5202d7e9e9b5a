"""Argument validation, run in Python before anything is traced.

Every check raises with a message that names the argument, what it got and
what it needs, so that misuse fails at trace time rather than as a shape error
deep inside XLA or, worse, as a silently broadcast wrong answer.
"""

from __future__ import annotations

import math
import numbers
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

REDUCTIONS = ("mean", "sum", "none")
# The losses over tokens (cross_entropy, nll_loss, linear_cross_entropy) also average
# over sequences.
TOKEN_REDUCTIONS = (*REDUCTIONS, "sequence_mean")


def as_array(name: str, value: Any) -> jax.Array:
    """Converts ``value`` to an array, naming the argument if that fails.

    Integers that JAX would store in a narrower type (64-bit integers without
    ``jax_enable_x64``) are checked first: a value that does not fit is an error,
    never a silent wrap-around into another class index.
    """
    if isinstance(value, jax.Array):
        return value
    if value is None:
        raise TypeError(f"{name} must be an array, got None")
    try:
        host = np.asarray(value)
    except (TypeError, ValueError, OverflowError) as err:
        raise _conversion_error(name, value, err) from err
    if host.dtype == object:
        raise ValueError(
            f"{name} must be a rectangular array of numbers; it converts to an object array "
            f"of shape {host.shape} (a ragged nested sequence, None entries, or an integer "
            "beyond 64 bits)"
        )
    try:
        array = jnp.asarray(host)
    except (TypeError, ValueError, OverflowError) as err:
        raise _conversion_error(name, value, err) from err
    if jnp.issubdtype(host.dtype, jnp.integer) and array.dtype != host.dtype and host.size:
        info = jnp.iinfo(array.dtype)
        low, high = int(host.min()), int(host.max())
        if low < info.min or high > info.max:
            raise ValueError(
                f"{name} holds {host.dtype} values in [{low}, {high}], outside the range of "
                f"{array.dtype}, the type JAX stores them in (enable jax_enable_x64 to keep "
                f"64-bit integers)"
            )
    return array


def _conversion_error(name: str, value: Any, err: Exception) -> Exception:
    if isinstance(err, TypeError):
        return TypeError(f"{name} must be an array, got {type(value).__name__}")
    if isinstance(err, OverflowError):
        return ValueError(f"{name} holds a number too large for any JAX dtype: {err}")
    return ValueError(f"{name} must be a rectangular array of numbers; converting it failed: {err}")


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
    axis = int(axis)
    if not -ndim <= axis < ndim:
        raise ValueError(f"{name} {axis} is out of bounds for logits of dimension {ndim}")
    return axis % ndim


def has_classes(name: str, shape: tuple[int, ...], axis: int, what: str = "class") -> None:
    """A class axis of length 0 has no distribution to normalize over."""
    if shape[axis] == 0:
        raise ValueError(
            f"{name} must have at least one {what} along axis {axis}, got shape {tuple(shape)}"
        )


def reduction(value, allowed=REDUCTIONS) -> str:
    if value not in allowed:
        raise ValueError(f"reduction must be one of {allowed}, got {value!r}")
    return value


def flag(name: str, value) -> bool:
    """A static on/off option: a Python bool."""
    if not isinstance(value, bool):
        raise TypeError(f"{name} must be a bool, got {value!r}")
    return value


def class_scores(name: str, x) -> jax.Array:
    """Floating scores with the classes on the last axis, at least one of them."""
    x = floating_input(name, x, min_ndim=1)
    has_classes(name, x.shape, x.ndim - 1)
    return x


def class_indices(name: str, targets, scores_shape: tuple[int, ...]) -> jax.Array:
    """Integer class indices of the scores' shape without its last (class) axis."""
    targets = as_array(name, targets)
    if not jnp.issubdtype(targets.dtype, jnp.integer):
        raise TypeError(f"{name} must hold integer class indices, got dtype {targets.dtype}")
    if targets.shape != scores_shape[:-1]:
        raise ValueError(
            f"{name} must have shape {scores_shape[:-1]} (the scores' shape without the class "
            f"axis), got {targets.shape}"
        )
    return targets


def ignore_index(value) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"ignore_index must be a Python int, got {value!r}")
    return int(value)


def is_readable(value) -> bool:
    """Whether this process can read ``value`` at trace time: not a tracer, and not a
    global array with parts on other processes' devices (reading one would need them:
    such values are left unchecked, as traced ones are)."""
    if isinstance(value, jax.core.Tracer):
        return False
    if isinstance(value, jax.Array):
        return value.is_fully_addressable or value.is_fully_replicated
    return True


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
    if is_readable(value):
        try:
            return float(np.asarray(value))
        except (TypeError, ValueError):
            return None
    return None


def real_scalar(
    name: str, value: Any, *, minimum: float, maximum: float = math.inf, strict: bool = False
) -> jax.Array:
    """A finite real scalar in ``[minimum, maximum]`` (``(minimum, maximum]`` if ``strict``).

    The range is checked whenever the value is known at trace time; a traced value
    is accepted as it is. Booleans are refused: ``True`` is neither a probability
    nor a coefficient.
    """
    if isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{name} must be a real number, got {value!r}")
    if isinstance(value, (str, bytes)) or value is None:
        raise TypeError(f"{name} must be a real number, got {value!r}")
    known = _concrete_float(value) if np.ndim(value) == 0 else None
    value = as_array(name, value)
    if value.ndim != 0:
        raise ValueError(f"{name} must be a scalar, got shape {value.shape}")
    if not (jnp.issubdtype(value.dtype, jnp.floating) or jnp.issubdtype(value.dtype, jnp.integer)):
        raise TypeError(f"{name} must be a real number, got dtype {value.dtype}")
    if known is None:
        return value
    above = known > minimum if strict else known >= minimum
    if not (math.isfinite(known) and above and known <= maximum):
        if maximum == math.inf:
            wanted = f"{'>' if strict else '>='} {minimum:g} and finite"
        else:
            wanted = f"in [{minimum:g}, {maximum:g}]"
        raise ValueError(f"{name} must be {wanted}, got {known}")
    return value


def logit_options(
    label_smoothing, z_loss, logit_softcap
) -> tuple[jax.Array, jax.Array, jax.Array | None, bool, bool]:
    """Checks the options shared by ``cross_entropy`` and ``linear_cross_entropy``.

    Returns them as arrays, plus whether smoothing and the z-loss can be on: a
    value known at trace time to be 0 turns its work off.
    """
    smoothing = not is_static_zero(label_smoothing)
    use_z_loss = not is_static_zero(z_loss)
    label_smoothing = real_scalar("label_smoothing", label_smoothing, minimum=0.0, maximum=1.0)
    z_loss = real_scalar("z_loss", z_loss, minimum=0.0)
    if logit_softcap is not None:
        logit_softcap = real_scalar("logit_softcap", logit_softcap, minimum=0.0, strict=True)
    return label_smoothing, z_loss, logit_softcap, smoothing, use_z_loss


def optional_positive_int(name: str, value) -> int | None:
    """A static size: a positive Python int, or None for the default."""
    if value is not None and (
        isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1
    ):
        raise ValueError(f"{name} must be a positive int or None, got {value!r}")
    return None if value is None else int(value)


def vocab_size(value, padded: int) -> int:
    """The classes in use of a padded vocabulary of ``padded`` (static): the first
    ``value`` of them, or all for None."""
    if value is None:
        return padded
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"vocab_size must be a Python int (static) or None, got {value!r}")
    count = int(value)
    if not 1 <= count <= padded:
        raise ValueError(
            f"vocab_size must be in [1, {padded}] (the classes of the logits or of w), got {count}"
        )
    return count


def class_weight(weight, num_classes: int, name: str = "weight") -> jax.Array | None:
    """Per-class weights (the argument ``name``): a floating vector of length
    ``num_classes``."""
    if weight is None:
        return None
    weight = floating_input(name, weight)
    if weight.shape != (num_classes,):
        raise ValueError(
            f"{name} must have shape ({num_classes},), one entry per class, "
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


def index_or_probability_targets(
    targets, logits_shape: tuple[int, ...], axis: int
) -> tuple[jax.Array, bool]:
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


class TokenWeighting(NamedTuple):
    """The per-token options of the token losses, validated: each ``None`` or an array
    (``normalizer`` a scalar)."""

    token_weight: jax.Array | None
    segment_ids: jax.Array | None
    normalizer: jax.Array | None


def token_weighting(
    token_weight, segment_ids, normalizer, reduction: str, shape: tuple[int, ...]
) -> TokenWeighting:
    """Checks ``token_weight`` and ``segment_ids`` (the targets' ``shape``) and
    ``normalizer`` (a positive scalar, for the two means only)."""
    if token_weight is not None:
        token_weight = as_array("token_weight", token_weight)
        if not (
            jnp.issubdtype(token_weight.dtype, jnp.floating)
            or jnp.issubdtype(token_weight.dtype, jnp.integer)
        ):
            raise TypeError(f"token_weight must be real, got dtype {token_weight.dtype}")
        token_weight = same_shape("token_weight", token_weight, shape, "the targets'")
        if is_readable(token_weight):
            values = np.asarray(token_weight, np.float64)
            if not np.all(np.isfinite(values) & (values >= 0)):
                raise ValueError("token_weight must be finite and non-negative")
    if segment_ids is not None:
        segment_ids = as_array("segment_ids", segment_ids)
        if not jnp.issubdtype(segment_ids.dtype, jnp.integer):
            raise TypeError(f"segment_ids must be integers, got dtype {segment_ids.dtype}")
        segment_ids = same_shape("segment_ids", segment_ids, shape, "the targets'")
    if normalizer is not None:
        if reduction not in ("mean", "sequence_mean"):
            raise ValueError(
                "normalizer replaces the denominator of reduction='mean' or 'sequence_mean', "
                f"got reduction={reduction!r}"
            )
        normalizer = real_scalar("normalizer", normalizer, minimum=0.0, strict=True)
    return TokenWeighting(token_weight, segment_ids, normalizer)


def softmax_logits_and_targets(
    logits, targets, axis, index_to_ignore
) -> tuple[jax.Array, int, jax.Array, bool, int]:
    """The checks shared by the softmax losses with index or probability targets.

    Returns ``(logits, axis, targets, is_index, ignore_index)``: the logits as an array,
    the axis made non-negative, the targets and their kind, and the checked
    ``ignore_index`` (``index_to_ignore``), which only index targets may set.
    """
    logits = floating_input("logits", logits, min_ndim=1)
    axis = class_axis(axis, logits.ndim)
    has_classes("logits", logits.shape, axis)
    targets, is_index = index_or_probability_targets(targets, logits.shape, axis)
    checked = ignore_index(index_to_ignore)
    if not is_index and checked != -100:
        raise ValueError(
            "ignore_index only applies to class-index targets; got probability targets "
            f"(dtype {targets.dtype}) with ignore_index={checked}"
        )
    return logits, axis, targets, is_index, checked


def passes(value):
    """The ``passes`` of a fused loss: 1, 2 or None (chosen by dtype and devices)."""
    if value not in (None, 1, 2) or isinstance(value, bool):
        raise ValueError(
            f"passes must be 1, 2 or None (chosen by dtype and devices), got {value!r}"
        )
    return value
