"""Mechanics shared by every loss: reductions and class weights, dtype promotion,
symbolic-zero tangents, and what explicit sharding needs spelled out."""

from __future__ import annotations

import math

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


def whole_last_axis(x):
    """``x`` with its last (class) axis whole on every device: under explicit sharding
    a class-sharded ``x`` is gathered (a sort or all-pairs computation needs every
    class); unchanged otherwise, where the partitioner decides."""
    sharding = explicit_sharding(x)
    if sharding is None or sharding.spec[-1:] in ((), (None,)) or len(sharding.spec) < x.ndim:
        return x
    spec = jax.P(*tuple(sharding.spec)[:-1], None)
    return jax.sharding.reshard(x, jax.sharding.NamedSharding(sharding.mesh, spec))


def like_tokens(values, x):
    """Per-token arrays (``x.shape[:-1]``: targets, token weights, segment ids) with the
    token sharding of ``x`` under explicit sharding, where a replicated one would not
    combine with sharded tokens; unchanged otherwise. ``None`` entries stay ``None``."""
    sharding = explicit_sharding(x)
    if sharding is None:
        return values
    spec = tuple(sharding.spec) + (None,) * (x.ndim - len(sharding.spec))
    tokens = jax.sharding.NamedSharding(sharding.mesh, jax.P(*spec[: x.ndim - 1]))
    return jax.tree.map(lambda a: jax.sharding.reshard(a, tokens), values)


def class_weight_of(weight: jax.Array, index: jax.Array) -> jax.Array:
    """``weight[index]`` (in range), sharded like ``index`` under explicit sharding."""
    sharding = explicit_sharding(index)
    if sharding is None:
        return weight[index]
    return weight.at[index].get(out_sharding=sharding)


def times(coefficient, value):
    """``coefficient * value``, exactly 0 where the coefficient is 0 (``0 * inf = 0``):
    the limit of each term, so that saturated logits and zero weights give finite
    losses, while a nan coefficient or a nan value with a nonzero coefficient stays nan."""
    return jnp.where(coefficient == 0, 0.0, coefficient * value)


def poison(x: jax.Array, bad: jax.Array) -> jax.Array:
    """``x`` with nan where ``bad`` (broadcast over trailing axes): added rather than
    selected, so that the gradient of those entries is nan too, not 0."""
    bad = jnp.reshape(bad, bad.shape + (1,) * (x.ndim - bad.ndim))
    return x + jnp.where(bad, jnp.nan, 0.0).astype(x.dtype)


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


def sequence_index(segment_ids: jax.Array | None, shape: tuple[int, ...]):
    """Each element's sequence, as an index into ``[0, count)``; returns ``(index, count)``.

    The last axis of ``shape`` holds a row's tokens. Without ``segment_ids`` each row is
    one sequence; with them, the tokens of a row that share an id form one sequence,
    whether or not they are adjacent. Ids are made dense per row by a sort, so any
    integer values work and no count of sequences needs to be known in advance.
    """
    if not shape:
        return jnp.zeros((), jnp.int32), 1
    tokens = shape[-1]
    rows = math.prod(shape[:-1])
    row = jnp.arange(rows, dtype=jnp.int32)[:, None]
    if segment_ids is None:
        return jnp.broadcast_to(row, (rows, tokens)).reshape(shape), max(rows, 1)
    ids = segment_ids.reshape(rows, tokens)
    order = jnp.argsort(ids, axis=-1, stable=True)
    ordered = jnp.take_along_axis(ids, order, axis=-1)
    first = jnp.concatenate(
        [jnp.ones((rows, min(tokens, 1)), bool), ordered[:, 1:] != ordered[:, :-1]], axis=-1
    )
    run = jnp.cumsum(first, axis=-1, dtype=jnp.int32) - 1
    rank = jnp.argsort(order, axis=-1)  # the inverse permutation
    dense = jnp.take_along_axis(run, rank, axis=-1) + row * tokens
    return dense.reshape(shape), max(rows * tokens, 1)


def element_scales(
    reduction: str,
    share: jax.Array,
    token_weight: jax.Array | None,
    segment_ids: jax.Array | None,
    normalizer: jax.Array | None,
) -> jax.Array:
    """The factors ``c`` with which the reduced loss is ``sum_n c_n l_n``.

    ``share`` is each element's part of the mean's denominator before its token weight
    (its class weight, or 1; 0 for an element that is ignored). With token weights
    ``t``: ``"sum"`` is ``c = t``; ``"mean"`` is ``c = t / D`` with ``D = sum_n t_n
    share_n`` (or ``normalizer``); ``"sequence_mean"`` is ``c_n = t_n / (D_s Q)`` for
    the sequence ``s`` of ``n``, with ``D_s`` that sum over the sequence and ``Q`` the
    number of sequences with ``D_s != 0`` (or ``normalizer``). A zero denominator
    gives ``c = 0``.
    """
    t = jnp.ones_like(share) if token_weight is None else token_weight.astype(share.dtype)
    if reduction == "sum":
        return t
    share = share * t
    if reduction == "mean":
        return safe_divide(t, jnp.sum(share) if normalizer is None else normalizer)
    sharding = explicit_sharding(share)
    if sharding is not None:
        # Explicit sharding will not partition the sort and the scatter on its own: the
        # per-token arrays (not the logits) are gathered for them, and the result
        # returned to the tokens' sharding.
        whole = jax.sharding.NamedSharding(sharding.mesh, jax.P())
        share, t, segment_ids = jax.sharding.reshard((share, t, segment_ids), whole)
    index, count = sequence_index(segment_ids, share.shape)
    totals = jax.ops.segment_sum(share.reshape(-1), index.reshape(-1), count)
    sequences = jnp.sum(totals != 0).astype(share.dtype) if normalizer is None else normalizer
    scales = safe_divide(t, totals[index] * sequences)
    return scales if sharding is None else jax.sharding.reshard(scales, sharding)


def dropped_elements(token_weight: jax.Array | None, segment_ids: jax.Array | None):
    """The elements that add nothing whatever their loss (token weight 0, or segment id 0,
    which marks padding), or None when there can be none."""
    dropped = None
    if token_weight is not None:
        dropped = token_weight == 0
    if segment_ids is not None:
        padding = segment_ids == 0
        dropped = padding if dropped is None else dropped | padding
    return dropped


def reduce_tokens(loss: jax.Array, share: jax.Array, reduction: str, weighting) -> jax.Array:
    """Applies a token loss's ``reduction`` (``"sequence_mean"`` included) to per-element
    losses ``loss`` (class weights applied), with ``share`` as in ``element_scales`` and
    the token options of ``weighting`` (a ``TokenWeighting``)."""
    token_weight, segment_ids, normalizer = weighting
    if reduction == "sequence_mean":
        scales = element_scales(reduction, share, token_weight, segment_ids, normalizer)
        return jnp.sum(loss * scales)
    if token_weight is not None:
        token_weight = token_weight.astype(loss.dtype)
        loss = loss * token_weight
        share = share * token_weight
    if reduction == "none":
        return loss
    if reduction == "sum":
        return jnp.sum(loss)
    denominator = jnp.sum(share) if normalizer is None else normalizer.astype(loss.dtype)
    return safe_divide(jnp.sum(loss), denominator)


def varying_zero(dtype, *arrays) -> jax.Array:
    """0 of ``dtype`` that, inside ``shard_map``, varies over the mesh axes that any of
    ``arrays`` varies over (elsewhere a plain constant).

    A loop's initial carry must have the type of its body's result, which varies over
    the axes its inputs vary over; adding this to a carry built from constants gives it
    that type. (``zeros_like`` keeps an array's varying axes; nothing is read.)
    """
    zero = jnp.zeros((), dtype)
    for a in jax.tree.leaves(arrays):
        zero = zero + jnp.zeros_like(a, dtype=dtype, shape=())
    return zero
