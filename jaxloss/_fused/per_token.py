"""Per-token outputs of a fused head, differentiable for any cotangent.

``fused_sum`` serves losses whose per-token factors are fixed before the gradient is
asked for. Outputs a caller weights afterwards (an advantage per token's
log-probability, an entropy bonus) need the gradient of ``sum_n a_n . y_n`` for
cotangents ``a`` that only reverse mode knows. ``per_token_values`` gives each token's
``k`` outputs ``y_n = f(z_n)`` of the raw logits ``z_n = x_n w + bias`` with a JVP
rule whose tangent is

    dy_n = A_n . dx_n + sum_v G_n[:, v] (x_n dw + dbias)_v,
    A_n = G_n w^T,   G_n = dy_n / dz_n   ([k, V]),

``A`` formed in a pass over the token chunks (``token_pass``) while the logits are at
hand, and the second term in a scan over the vocabulary chunks (``vocab_tangent``),
each step recomputing its columns of the logits from all the tokens. Transposed for
reverse mode the first term is elementwise, and each step of the second forms one
vocabulary chunk of ``dL/dw = x^T (a G)`` from all the tokens: with the tokens spread
over devices each block of the weight gradient is reduced over them once, as in the
engine's second pass. A scan over token chunks would reduce the whole weight gradient
once per chunk. The scan's body is rematerialized, so reverse mode saves its inputs,
not its logits.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import NamedTuple, Protocol

import jax
import jax.numpy as jnp

from jaxloss._fused import engine
from jaxloss._fused.chunking import VocabChunk, VocabChunks, spread_over_devices
from jaxloss._reduce import is_zero
from jaxloss._xent import Fill


class TokenHead(Protocol):
    """``outputs`` values per token from one chunk's raw logits (accumulation dtype)."""

    @property
    def outputs(self) -> int: ...

    @property
    def saved_width(self) -> int: ...

    def counted(self, tokens, params) -> jax.Array:
        """``[c]`` bool: the tokens with outputs (the others' are 0, with no gradient)."""
        ...

    def values(self, z, tokens, params) -> jax.Array:
        """``[c, outputs]``."""
        ...

    def values_and_grads(
        self, z, tokens, params, fill: Fill
    ) -> tuple[jax.Array, jax.Array, jax.Array]:
        """The values, their logit gradients ``[outputs, c, V]`` and the per-token
        values ``vocab_chunk_grads`` needs (``[c, saved_width]``)."""
        ...

    def vocab_chunk_grads(self, z_t, tokens, saved, params, chunk: VocabChunk, fill: Fill):
        """The logit gradients of the columns ``chunk``, ``[outputs, width, c]``, from
        their logits ``z_t`` ``[width, c]``."""
        ...


@dataclasses.dataclass(frozen=True)
class OneOutput:
    """An ``engine.Head`` as a ``TokenHead`` of one output, its per-token loss: the
    fused losses' ``reduction="none"``."""

    head: engine.Head

    @property
    def outputs(self) -> int:
        return 1

    @property
    def saved_width(self) -> int:
        return self.head.saved_width

    def counted(self, tokens, params):
        return self.head.counted(tokens, params)

    def values(self, z, tokens, params):
        return self.head.loss(z, tokens, params)[0][:, None]

    def values_and_grads(self, z, tokens, params, fill: Fill):
        terms = self.head.loss_and_grad(z, tokens, params, fill)
        return terms.loss[:, None], terms.grad[None], terms.saved

    def vocab_chunk_grads(self, z_t, tokens, saved, params, chunk: VocabChunk, fill: Fill):
        return self.head.vocab_chunk_grad(z_t, tokens, saved, params, chunk, fill)[None]


class TokenPass(NamedTuple):
    values: jax.Array  # [n, outputs]
    saved: jax.Array  # [n, saved_width]
    hidden: tuple[jax.Array, ...]  # per output, A = G w^T: [n, H]


def _counted_rows(head: TokenHead, x, tokens, params, zero):
    return jnp.where(head.counted(tokens, params)[:, None], x, zero.astype(x.dtype))


def token_pass(
    head: TokenHead, config: engine.Config, with_grads: bool, x, w, bias, tokens, params
):
    """The values (and with ``with_grads`` the saved values and ``A``), one loop over the
    token chunks."""
    n = x.shape[0]
    ones = jnp.ones_like(x[:, 0])  # token factors, sharded as the tokens are
    walk = engine._TokenWalk.of(x, w, bias, tokens, params, ones, config)
    acc = walk.zero.dtype
    init = [walk.rows(head.outputs) + walk.zero]
    if with_grads:
        init += [walk.rows(head.saved_width) + walk.zero]
        init += [engine._dx_buffer(walk) for _ in range(head.outputs)]

    def body(i, carry):
        x_c, _, tokens_c, fill = walk.chunk(i)
        x_c = _counted_rows(head, x_c, tokens_c, params, fill.zero)
        z = engine._logits(x_c, w, bias, acc)
        if not with_grads:
            return [walk.chunks.put(carry[0], i, head.values(z, tokens_c, params))]
        values, grads, saved = head.values_and_grads(z, tokens_c, params, fill)
        mm = engine._matmul_dtype(x_c, w)
        hidden = [engine._hidden_grad(g.astype(mm), w, x_c) for g in grads]
        rows = [values, saved, *hidden]
        return [walk.chunks.put(buf, i, value) for buf, value in zip(carry, rows, strict=True)]

    out = [walk.chunks.unview(a, n) for a in walk.loop(body, init)]
    if not with_grads:
        return out[0]
    return TokenPass(out[0], out[1], tuple(out[2:]))


def vocab_width(x, w, requested: int | None) -> int:
    """Columns per step of ``vocab_tangent`` (before tracing), whose logits
    ``[width, tokens]`` are formed for all the tokens at once: ``requested``, else with
    the tokens spread over devices the engine's ``vocab_chunk_size`` (a divisor of the
    vocabulary that bounds a device's share of the logits), else as many multiples of
    128 as fit ``CHUNK_BYTES`` of float32 logits (at least 128)."""
    rows, vocab = math.prod(x.shape[:-1]), w.shape[1]
    if spread_over_devices(x):
        return engine.spread_vocab_chunk_size(rows, vocab, requested)
    width = requested or max(128, engine.CHUNK_BYTES // (4 * max(rows, 1)) // 128 * 128)
    return min(vocab, width)


def _stacked(layout: VocabChunks, a):
    """``a`` ``[..., V]`` as ``[count, ..., size]`` (its full chunks, for ``lax.scan``) and
    the tail's columns (contiguous layouts) or None."""
    if layout.interleaved:
        return jnp.moveaxis(layout.view(a), -1, 0), None
    full = layout.count * layout.size
    lead = a.shape[:-1]
    stacked = jnp.moveaxis(a[..., :full].reshape(*lead, layout.count, layout.size), -2, 0)
    return stacked, (a[..., full:] if layout.tail else None)


def _chunk_product(head: TokenHead, layout, x0, tokens, saved, params, step):
    """One vocabulary chunk's ``sum_v G[:, v] u_v``, ``[outputs, n]``, with ``G`` the
    logit gradients of its columns (from ``w_j`` and ``bias_j``) and ``u = x0 a_j +
    c_j`` linear in ``(a_j, c_j)``: with ``(a, c) = (w, bias)`` and its JVP taken in
    them, the chunk's share of the tangent."""
    j, w_j, b_j, a_j, c_j = step
    acc = saved.dtype
    contract = (((0,), (1,)), ((), ()))
    z_t = jax.lax.dot_general(w_j, x0, contract, preferred_element_type=acc)
    z_t = z_t if b_j is None else z_t + b_j.astype(acc)[:, None]
    chunk = VocabChunk(layout, j, w_j.shape[1])
    g_t = head.vocab_chunk_grads(z_t, tokens, saved, params, chunk, engine._loop_fill(acc, j))
    u_t = jnp.zeros((), acc)
    if a_j is not None:
        u_t = jax.lax.dot_general(a_j, x0, contract, preferred_element_type=acc)
    if c_j is not None:
        u_t = u_t + c_j.astype(acc)[:, None]
    return jnp.sum(g_t * u_t, axis=1)


def vocab_tangent(
    head: TokenHead, config: engine.Config, x, w, bias, tokens, params, saved, dw, db
):
    """``sum_v G_n[:, v] (x_n dw + dbias)_v`` for every token, ``[n, outputs]``: a scan
    over the vocabulary chunks, each from all the tokens.

    It is the JVP of the scan of ``_chunk_product``, taken by JAX: a scan that JAX
    linearizes itself transposes to one chunk of ``dw`` per step (older JAX cannot
    transpose a scan written directly in a JVP rule).
    """
    layout = VocabChunks(w.shape[1], config.vocab_chunk_size, spread_over_devices(x))
    x0 = _counted_rows(head, x, tokens, params, jnp.zeros((), x.dtype))
    chunk_product = jax.checkpoint(functools.partial(_chunk_product, head, layout))
    # [n, outputs], laid out as the tokens are (a scan's carry keeps its sharding).
    init = saved[:, :1] * jnp.zeros((head.outputs,), saved.dtype)

    def products(a, c):
        columns = (w, bias, a, c)
        stacked = [None if col is None else _stacked(layout, col) for col in columns]
        steps = (jnp.arange(layout.count, dtype=jnp.int32), *[s and s[0] for s in stacked])

        def body(total, step):
            return total + chunk_product(x0, tokens, saved, params, step).T, None

        total, _ = jax.lax.scan(body, init, steps)
        if layout.tail:
            tail = (jnp.int32(layout.count), *[s and s[1] for s in stacked])
            total = total + chunk_product(x0, tokens, saved, params, tail).T
        return total

    # The JVP in (a, c) alone: G keeps its dependence on w and bias for higher
    # derivatives, and the primal products (unused) are dead code.
    if db is None:
        return jax.jvp(lambda a: products(a, None), (w,), (dw,))[1]
    if dw is None:
        return jax.jvp(lambda c: products(None, c), (bias,), (db,))[1]
    return jax.jvp(products, (w, bias), (dw, db))[1]


def _values(head, config, x, w, bias, tokens, params):
    w, _ = engine.whole_hidden(w, spread_over_devices(x))
    return token_pass(head, config, False, x, w, bias, tokens, params)


def _with_grads(head, config, x, w, bias, tokens, params):
    w, _ = engine.whole_hidden(w, spread_over_devices(x))
    return token_pass(head, config, True, x, w, bias, tokens, params)


@functools.partial(jax.custom_jvp, nondiff_argnums=(0, 1))
def per_token_values(head: TokenHead, config: engine.Config, x, w, bias, tokens, params):
    """``[n, head.outputs]`` values of ``x`` ``[n, H]``, ``w`` ``[H, V]`` and ``bias``;
    ``tokens`` and ``params`` are constants. Under ``vmap``, one example at a time."""
    values = engine.one_example_at_a_time(functools.partial(_values, head, config))
    return values(x, w, bias, tokens, params)


def _per_token_values_jvp(head: TokenHead, config: engine.Config, primals, tangents):
    x, w, bias, tokens, params = primals
    dx, dw, dbias = tangents[:3]
    passed = engine.one_example_at_a_time(functools.partial(_with_grads, head, config))
    out: TokenPass = passed(x, w, bias, tokens, params)
    acc = out.saved.dtype
    tangent = jnp.zeros(out.values.shape, acc)
    if not is_zero(dx):
        parts = [jnp.sum(a.astype(acc) * dx.astype(acc), axis=-1) for a in out.hidden]
        tangent = tangent + jnp.stack(parts, axis=-1)
    dw = None if is_zero(dw) else dw
    dbias = None if bias is None or is_zero(dbias) else dbias
    if dw is not None or dbias is not None:
        spread = spread_over_devices(x)
        w_whole, _ = engine.whole_hidden(w, spread)
        if dw is not None:
            dw, _ = engine.whole_hidden(dw, spread, tangent=True)
        tangent = tangent + vocab_tangent(
            head, config, x, w_whole, bias, tokens, params, out.saved, dw, dbias
        )
    return out.values, tangent.astype(out.values.dtype)


per_token_values.defjvp(_per_token_values_jvp, symbolic_zeros=True)
