"""The log-sum-exp of every row and every column of ``z = a @ w + b`` in one walk.

``a`` holds this device's rows (``R x D``), split into ``G`` equal groups, ``w`` every
column's embedding once per group (``G x D x B``: the whole batch's, transposed once so
that no step transposes it) and ``b`` a scalar. With no mesh set the caller makes one
group per device: the partitioner, which cannot see the layout there, then walks each
group on the device that holds its rows, with its own copy of ``w`` gathered once
before the walk (not a chunk of rows at a time in it), and the transpose of the
caller's broadcast sums ``dw`` over the groups once, after it. One pass over each
group's chunks of rows gives each row's log-sum-exp and, as running maxima and shifted
sums, each column's over the group's rows (merged over the groups, and over this
device's rows; over ``axis_name`` the columns' statistics are combined across devices
(``B`` numbers each, not the ``B x D`` embeddings). The JVP rule walks the chunks again:
``d lse_row_i = sum_j P_ij dz_ij`` and ``d lse_col_j = sum_k Q_kj dz_kj`` with ``P``
and ``Q`` the row and column softmaxes and ``dz = da w + a dw + db``. The walk is
rematerialized, so reverse mode recomputes each chunk of ``z`` instead of saving it and
accumulates ``dw`` chunk by chunk: no step holds more than a chunk of rows of ``z``.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp


def _chunked(a, size: int):
    """``a``'s rows as ``(count, size, ...)`` with zero rows appended, and which are real."""
    count = max(1, -(-a.shape[0] // size))
    extra = count * size - a.shape[0]
    padded = jnp.pad(a, ((0, extra), *((0, 0),) * (a.ndim - 1)))
    real = jnp.arange(count * size) < a.shape[0]
    return padded.reshape(count, size, *a.shape[1:]), real.reshape(count, size)


def _logits(a_chunk, w, b):
    return jnp.dot(a_chunk, w, preferred_element_type=a_chunk.dtype) + b


def _finite(m):
    return jnp.where(jnp.isfinite(m), m, 0.0)


def _chunk_stats(a_chunk, real, w, b):
    """A chunk's row log-sum-exps, and its columns' maxima and shifted sums."""
    z = _logits(a_chunk, w, b)
    row_max = jax.lax.stop_gradient(_finite(jnp.max(z, axis=1, keepdims=True)))
    row_lse = row_max[:, 0] + jnp.log(jnp.sum(jnp.exp(z - row_max), axis=1))
    z = jnp.where(real[:, None], z, -jnp.inf)
    col_max = jax.lax.stop_gradient(jnp.max(z, axis=0))
    col_sum = jnp.sum(jnp.exp(z - _finite(col_max)), axis=0)
    return row_lse, col_max, col_sum


def _merged(first, second):
    """Two columns' (maximum, shifted sum) pairs as one."""
    (m1, s1), (m2, s2) = first, second
    m = jnp.maximum(m1, m2)
    return m, s1 * jnp.exp(m1 - _finite(m)) + s2 * jnp.exp(m2 - _finite(m))


def _columns_like(a, w):
    """A ``(B,)`` array whose type is the columns' statistics': inside ``shard_map``
    they vary over the devices as ``a`` and ``w`` do (its values are not used)."""
    return a[0, 0] + w[0]


def _local_stats(a, w, b, *, chunk: int):
    """This group's rows' log-sum-exps, and its columns' maxima and shifted sums."""
    chunks, real = _chunked(a, chunk)

    def step(carry, inputs):
        rows, col_max, col_sum = _chunk_stats(*inputs, w, b)
        return _merged(carry, (col_max, col_sum)), rows

    columns = _columns_like(a, w)
    empty = (jnp.full_like(columns, -jnp.inf), jnp.zeros_like(columns))
    (col_max, col_sum), row_lse = jax.lax.scan(step, empty, (chunks, real))
    return row_lse.reshape(-1)[: a.shape[0]], col_max, col_sum


def _grouped(a, groups: int):
    return a.reshape(groups, a.shape[0] // groups, *a.shape[1:])


def each_group(fn, in_axes: tuple, groups: int):
    """``fn`` mapped over the groups (``vmap``); one group is called as it is, since a
    mapped scan moves its inputs' group axis behind the chunks' with a copy."""
    if groups > 1:
        return jax.vmap(fn, in_axes=in_axes)

    def once(*args):
        args = [a if axis is None else a[0] for a, axis in zip(args, in_axes, strict=True)]
        return jax.tree.map(lambda out: out[None], fn(*args))

    return once


def _stats(a, w, b, chunk: int, axis_name):
    local = each_group(functools.partial(_local_stats, chunk=chunk), (0, 0, None), w.shape[0])
    row_lse, col_max, col_sum = local(_grouped(a, w.shape[0]), w, b)
    top = jax.lax.stop_gradient(jnp.max(col_max, axis=0))
    col_sum = jnp.sum(col_sum * jnp.exp(col_max - _finite(top)), axis=0)
    if axis_name is not None:
        col_max = jax.lax.stop_gradient(jax.lax.pmax(top, axis_name))
        col_sum = jax.lax.psum(col_sum * jnp.exp(top - _finite(col_max)), axis_name)
        top = col_max
    return row_lse.reshape(-1), _finite(top) + jnp.log(col_sum)


@functools.partial(jax.custom_jvp, nondiff_argnums=(4, 5))
def two_way_lse(a, w, b, offset, chunk: int, axis_name):
    """Each of this device's rows' log-sum-exp over the columns, ``(R,)``, and the
    log-sum-exp over every row of the columns of this device's pairs (columns
    ``offset`` to ``offset + R``), ``(R,)``; ``w`` is ``(G, D, B)``, ``offset`` an
    integer, ``b`` a scalar."""
    row_lse, col_lse = _stats(a, w, b, chunk, axis_name)
    return row_lse, jax.lax.dynamic_slice_in_dim(col_lse, offset, a.shape[0])


def _group_tangents(a, w, b, row_lse, col_lse, u, v, c, *, chunk: int):
    """``(sum_k Q_kj dz_kj over this group's rows k, sum_j P_ij dz_ij)`` with
    ``dz = u w + a v + c``: linear in ``(u, v, c)``, a scan over row chunks."""
    chunks, real = _chunked(a, chunk)
    u_chunks, _ = _chunked(u, chunk)
    row_lses, _ = _chunked(row_lse, chunk)

    @jax.checkpoint
    def chunk_tangents(a_chunk, rows_real, lse, u_chunk):
        """A chunk's columns' tangents summed over its rows, and each row's."""
        z = _logits(a_chunk, w, b)
        dz = _logits(u_chunk, w, c) + jnp.dot(a_chunk, v, preferred_element_type=z.dtype)
        p = jnp.exp(z - lse[:, None])
        q = jnp.where(rows_real[:, None], jnp.exp(z - col_lse), 0.0)
        return jnp.sum(q * dz, axis=0), jnp.sum(p * dz, axis=1)

    def step(col_tangent, inputs):
        cols, rows = chunk_tangents(*inputs)
        return col_tangent + cols, rows

    inputs = (chunks, real, row_lses, u_chunks)
    col_tangent, rows = jax.lax.scan(step, jnp.zeros_like(_columns_like(a, w)), inputs)
    return col_tangent, rows.reshape(-1)[: a.shape[0]]


def _tangent_sums(a, w, b, row_lse, col_lse, chunk: int, u, v, c):
    """``_group_tangents`` of every group, the columns' summed over the groups."""
    each = functools.partial(_group_tangents, chunk=chunk)
    each = each_group(each, (0, 0, None, 0, None, 0, 0, None), w.shape[0])
    groups = w.shape[0]
    cols, rows = each(
        _grouped(a, groups), w, b, _grouped(row_lse, groups), col_lse, _grouped(u, groups),
        v, c,
    )  # fmt: skip
    return jnp.sum(cols, axis=0), rows.reshape(-1)


@two_way_lse.defjvp
def _two_way_lse_jvp(chunk, axis_name, primals, tangents):
    a, w, b, offset = primals
    da, dw, db, _ = tangents
    row_lse, col_lse = _stats(a, w, b, chunk, axis_name)
    # The JVP of a function linear in (u, v, c), taken by JAX: older JAX cannot
    # transpose a scan written directly in a JVP rule.
    sums = functools.partial(_tangent_sums, a, w, b, row_lse, col_lse, chunk)
    col_tangent, row_tangent = jax.jvp(sums, (a, w, b), (da, dw, db))[1]
    if axis_name is not None:
        col_tangent = jax.lax.psum(col_tangent, axis_name)
    rows = a.shape[0]
    primal_out = (row_lse, jax.lax.dynamic_slice_in_dim(col_lse, offset, rows))
    tangent_out = (row_tangent, jax.lax.dynamic_slice_in_dim(col_tangent, offset, rows))
    return primal_out, tangent_out
