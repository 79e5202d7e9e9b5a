"""The log-sum-exp of every row and every column of ``z = a @ o.T + b`` in one walk.

``a`` holds this device's rows (``R x D``), ``o`` every column's embedding (``B x D``,
the whole batch) and ``b`` a scalar. One pass over chunks of ``a``'s rows gives each
row's log-sum-exp and, as running maxima and shifted sums, each column's over this
device's rows; over ``axis_name`` the columns' statistics are combined across devices
(``B`` numbers each, not the ``B x D`` embeddings). The JVP rule walks the chunks again:
``d lse_row_i = sum_j P_ij dz_ij`` and ``d lse_col_j = sum_k Q_kj dz_kj`` with ``P``
and ``Q`` the row and column softmaxes and ``dz = da o^T + a do^T + db``. The walk is
rematerialized, so reverse mode recomputes each chunk of ``z`` instead of saving it and
accumulates ``do`` chunk by chunk: no step holds more than a chunk of rows of ``z``.
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


def _logits(a_chunk, o, b):
    return jnp.dot(a_chunk, o.T, preferred_element_type=a_chunk.dtype) + b


def _finite(m):
    return jnp.where(jnp.isfinite(m), m, 0.0)


def _chunk_stats(a_chunk, real, o, b):
    """A chunk's row log-sum-exps, and its columns' maxima and shifted sums."""
    z = _logits(a_chunk, o, b)
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


def _stats(a, o, b, chunk: int, axis_name):
    chunks, real = _chunked(a, chunk)
    row_lse, col_max, col_sum = _chunk_stats(chunks[0], real[0], o, b)

    def step(carry, inputs):
        rows, col_max, col_sum = _chunk_stats(*inputs, o, b)
        return _merged(carry, (col_max, col_sum)), rows

    (col_max, col_sum), rest = jax.lax.scan(step, (col_max, col_sum), (chunks[1:], real[1:]))
    row_lse = jnp.concatenate([row_lse, rest.reshape(-1)])[: a.shape[0]]
    if axis_name is not None:
        top = jax.lax.stop_gradient(jax.lax.pmax(col_max, axis_name))
        col_sum = jax.lax.psum(col_sum * jnp.exp(col_max - _finite(top)), axis_name)
        col_max = top
    return row_lse, _finite(col_max) + jnp.log(col_sum)


@functools.partial(jax.custom_jvp, nondiff_argnums=(4, 5))
def two_way_lse(a, o, b, offset, chunk: int, axis_name):
    """Each of this device's rows' log-sum-exp over the columns, ``(R,)``, and the
    log-sum-exp over every row of the columns of this device's pairs (columns
    ``offset`` to ``offset + R``), ``(R,)``; ``offset`` is an integer, ``b`` a scalar."""
    row_lse, col_lse = _stats(a, o, b, chunk, axis_name)
    return row_lse, jax.lax.dynamic_slice_in_dim(col_lse, offset, a.shape[0])


def _tangent_sums(a, o, b, row_lse, col_lse, chunk: int, u, v, c):
    """``(sum_k Q_kj dz_kj over this device's rows k, sum_j P_ij dz_ij)`` with
    ``dz = u o^T + a v^T + c``: linear in ``(u, v, c)``, a scan over row chunks."""
    chunks, real = _chunked(a, chunk)
    u_chunks, _ = _chunked(u, chunk)
    row_lses, _ = _chunked(row_lse, chunk)

    @jax.checkpoint
    def chunk_tangents(a_chunk, rows_real, lse, u_chunk):
        """A chunk's columns' tangents summed over its rows, and each row's."""
        z = _logits(a_chunk, o, b)
        dz = _logits(u_chunk, o, c) + jnp.dot(a_chunk, v.T, preferred_element_type=z.dtype)
        p = jnp.exp(z - lse[:, None])
        q = jnp.where(rows_real[:, None], jnp.exp(z - col_lse), 0.0)
        return jnp.sum(q * dz, axis=0), jnp.sum(p * dz, axis=1)

    def step(col_tangent, inputs):
        cols, rows = chunk_tangents(*inputs)
        return col_tangent + cols, rows

    inputs = (chunks, real, row_lses, u_chunks)
    col_tangent, first_rows = chunk_tangents(*(i[0] for i in inputs))
    col_tangent, rest = jax.lax.scan(step, col_tangent, tuple(i[1:] for i in inputs))
    return col_tangent, jnp.concatenate([first_rows, rest.reshape(-1)])[: a.shape[0]]


@two_way_lse.defjvp
def _two_way_lse_jvp(chunk, axis_name, primals, tangents):
    a, o, b, offset = primals
    da, do, db, _ = tangents
    row_lse, col_lse = _stats(a, o, b, chunk, axis_name)
    # The JVP of a function linear in (u, v, c), taken by JAX: older JAX cannot
    # transpose a scan written directly in a JVP rule.
    sums = functools.partial(_tangent_sums, a, o, b, row_lse, col_lse, chunk)
    col_tangent, row_tangent = jax.jvp(sums, (a, o, b), (da, do, db))[1]
    if axis_name is not None:
        col_tangent = jax.lax.psum(col_tangent, axis_name)
    rows = a.shape[0]
    primal_out = (row_lse, jax.lax.dynamic_slice_in_dim(col_lse, offset, rows))
    tangent_out = (row_tangent, jax.lax.dynamic_slice_in_dim(col_tangent, offset, rows))
    return primal_out, tangent_out
