"""SigLIP's loss of each row of ``z = a @ w + b``, a chunk of rows at a time.

``a`` holds this device's rows (``R x D``) in ``G`` groups, ``w`` every column's
embedding once per group (``G x D x B``, as in ``two_way``) and row ``i``'s pair is
column ``offset + i``. Row ``i``'s loss is ``sum_j softplus(-s_ij z_ij)`` with
``s_ij = +1`` on its pair and ``-1`` elsewhere; it needs nothing beyond its own row, so
one walk over row chunks gives the value. The JVP rule walks them again:
``d loss_i = sum_j g_ij dz_ij`` with ``g_ij = -s_ij sigmoid(-s_ij z_ij)`` and
``dz = da w + a dw + db``, rematerialized as in ``two_way``, so that no step holds more
than a chunk of rows of ``z``.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from jaxloss._fused.two_way import _chunked, _grouped, _logits, each_group


def _signed(z, first_row):
    """Whether each entry is its row's pair, and ``s * z``."""
    rows = first_row + jnp.arange(z.shape[0])
    pair = rows[:, None] == jnp.arange(z.shape[1])[None, :]
    return pair, jnp.where(pair, z, -z)


def _chunks_and_starts(a, first_row, chunk: int):
    """``a``'s rows in chunks, and the index in the batch of each chunk's first row."""
    chunks, _ = _chunked(a, chunk)
    return chunks, first_row + chunk * jnp.arange(chunks.shape[0])


def _group_losses(a, first_row, w, b, *, chunk: int):
    chunks, starts = _chunks_and_starts(a, first_row, chunk)

    def chunk_losses(inputs):
        _, signed = _signed(_logits(inputs[0], w, b), inputs[1])
        return jnp.sum(jax.nn.softplus(-signed), axis=1)

    return jax.lax.map(chunk_losses, (chunks, starts)).reshape(-1)[: a.shape[0]]


def _group_tangents(a, first_row, w, b, u, v, c, *, chunk: int):
    """``sum_j g_ij dz_ij`` of this group's rows, ``dz = u w + a v + c``: linear in
    ``(u, v, c)``."""
    chunks, starts = _chunks_and_starts(a, first_row, chunk)
    u_chunks, _ = _chunked(u, chunk)

    @jax.checkpoint
    def chunk_tangents(inputs):
        a_chunk, start, u_chunk = inputs
        z = _logits(a_chunk, w, b)
        pair, signed = _signed(z, start)
        g = jnp.where(pair, -1.0, 1.0) * jax.nn.sigmoid(-signed)
        dz = _logits(u_chunk, w, c) + jnp.dot(a_chunk, v, preferred_element_type=z.dtype)
        return jnp.sum(g * dz, axis=1)

    return jax.lax.map(chunk_tangents, (chunks, starts, u_chunks)).reshape(-1)[: a.shape[0]]


def _first_rows_of_groups(a, w, offset):
    groups = w.shape[0]
    return _grouped(a, groups), offset + (a.shape[0] // groups) * jnp.arange(groups)


def _losses(a, w, b, offset, chunk: int):
    each = each_group(functools.partial(_group_losses, chunk=chunk), (0, 0, 0, None), w.shape[0])
    return each(*_first_rows_of_groups(a, w, offset), w, b).reshape(-1)


def _tangent_sums(a, w, b, offset, chunk: int, u, v, c):
    each = functools.partial(_group_tangents, chunk=chunk)
    each = each_group(each, (0, 0, 0, None, 0, 0, None), w.shape[0])
    grouped_u = _grouped(u, w.shape[0])
    return each(*_first_rows_of_groups(a, w, offset), w, b, grouped_u, v, c).reshape(-1)


@functools.partial(jax.custom_jvp, nondiff_argnums=(4,))
def sigmoid_pair_losses(a, w, b, offset, chunk: int):
    """Each of this device's rows' SigLIP loss, ``(R,)``: ``w`` is ``(G, D, B)``,
    ``offset`` (an integer) the column of row 0's pair, ``b`` a scalar."""
    return _losses(a, w, b, offset, chunk)


@sigmoid_pair_losses.defjvp
def _sigmoid_pair_losses_jvp(chunk, primals, tangents):
    a, w, b, offset = primals
    da, dw, db, _ = tangents
    # As in two_way: the JVP of a map linear in (u, v, c), so that JAX transposes it.
    sums = functools.partial(_tangent_sums, a, w, b, offset, chunk)
    return _losses(a, w, b, offset, chunk), jax.jvp(sums, (a, w, b), (da, dw, db))[1]
