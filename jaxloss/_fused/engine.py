"""The loops of the fused losses, written once against a ``Head``.

For ``"mean"``, ``"sum"`` and ``"sequence_mean"`` the loss is ``L = sum_n c_n l_n``
with fixed token factors ``c``, whose gradient is the same for any upstream cotangent
up to a scale. ``fused_sum``'s JVP rule therefore forms ``dL/dx``, ``dL/dw`` and
``dL/dbias`` while the logits are at hand and returns the tangent as their inner
product with the input tangents; reverse mode needs nothing more. The passes:

* ``forward_pass``: the loss alone, one loop over the token chunks;
* ``one_pass_grads``: one loop over the token chunks, three matmuls, ``dL/dw`` summed
  over the chunks in an ``H x V`` buffer of the accumulation dtype (added
  ``dw_update_size`` columns at a time, in place, the logit gradient formed for those
  columns only where the head allows: ``Head.grad_by_slices``);
* ``two_pass_grads``: a loop over the token chunks for the loss, the per-token values
  the gradient needs (``Head.saved_width`` of them) and ``dL/dx``; then
  ``weight_pass``, the vocabulary in chunks of ``vocab_chunk_size`` columns, each
  chunk of ``dL/dw`` formed from all the tokens and written once. One matmul more
  (per head matmul), and no ``H x V`` or ``N x V`` buffer. With the tokens spread
  over devices each vocabulary chunk is formed from all of a device's tokens in one
  product, so that the partitioner reduces each block of ``dL/dw`` over the devices
  once: the weight gradient crosses the network once per step, whatever the layout.

``"none"`` is served by ``per_token`` (per-token outputs for any cotangent), whose
heads are these through ``per_token.OneOutput``.

Under ``jax.vmap`` the loops would hold a chunk for every example at once:
``one_example_at_a_time`` gives the forward pass and the gradients a batching rule that
walks the examples instead.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import Any, NamedTuple, Protocol

import jax
import jax.numpy as jnp

from jaxloss._fused.chunking import (
    Chunks,
    VocabChunk,
    VocabChunks,
    loop_variant,
    spread_over_devices,
)
from jaxloss._fused.hidden_whole import hidden_whole
from jaxloss._reduce import compute_dtype, explicit_sharding, is_zero, varying_zero
from jaxloss._xent import Fill

# One chunk's float32 logits take at most this many bytes unless chunk_size says otherwise:
# a few chunk-sized temporaries then stay small next to the weight gradient.
CHUNK_BYTES = 16 * 2**20


def accumulation_dtype(x, w) -> jnp.dtype:
    """float32 for 16-bit operands (float64 for float64): logits, softmax statistics
    and the weight gradient accumulate in it."""
    return compute_dtype(jnp.promote_types(x.dtype, w.dtype))


def auto_chunk_size(num_tokens: int, vocab_size: int) -> int:
    """The largest power of two of rows whose float32 logits fit ``CHUNK_BYTES`` (at least 8)."""
    rows = max(8, CHUNK_BYTES // (4 * vocab_size))
    rows = 2 ** int(math.log2(rows))
    return max(1, min(rows, 2 ** math.ceil(math.log2(max(num_tokens, 1)))))


def auto_vocab_chunk_size(hidden: int, vocab: int, weight_itemsize: int) -> int:
    """VocabChunks per step of the second pass on one device: as many as fit a float32
    ``dw`` slice (``width x H``) in ``CHUNK_BYTES`` or in 1/64 of the weight gradient's
    bytes, whichever is larger, in multiples of 128 (or the whole vocabulary)."""
    budget = max(CHUNK_BYTES, hidden * vocab * weight_itemsize // 64)
    columns = max(128, budget // (4 * hidden) // 128 * 128)
    return min(vocab, columns)


def spread_vocab_chunk_size(rows: int, vocab: int, requested: int | None = None) -> int:
    """VocabChunks per step of the second pass with the tokens spread over devices, where
    each step multiplies all the tokens by the slice.

    At most ``requested``, or else as many as keep a device's share of the step's float32
    logits (all rows over the devices) within ``CHUNK_BYTES``; a multiple of
    ``g = gcd(V, devices)`` that divides ``V``, so that interleaved slices of a ``w``
    whose vocabulary is split over any number of its devices keep each shard's columns
    on their device (at least ``g``).
    """
    devices = jax.device_count()
    unit = math.gcd(vocab, devices)
    if requested is None:
        requested = max(128, CHUNK_BYTES * devices // (4 * max(rows, 1)))
    multiples = vocab // unit
    best = max(d for d in _divisors(multiples) if d * unit <= max(requested, unit))
    return best * unit


def _divisors(m: int) -> list[int]:
    small = [d for d in range(1, math.isqrt(m) + 1) if m % d == 0]
    return small + [m // d for d in small]


def auto_dw_update_size(vocab: int, hidden: int) -> int:
    """One pass, the columns of ``dw`` per in-place update: a divisor of ``vocab`` near
    ``CHUNK_BYTES / (16 hidden)``, else ``vocab`` (no slicing), so that a float32 slice
    of the weight gradient is a quarter of a chunk's logits."""
    target = max(1, CHUNK_BYTES // (16 * hidden))
    if target >= vocab:
        return vocab
    best = max(d for d in range(1, target + 1) if vocab % d == 0)
    return best if best * 8 >= target else vocab


@dataclasses.dataclass(frozen=True)
class Config:
    """The tuning knobs of a fused loss, resolved before tracing (they key ``jit``'s cache).

    ``chunk_size``: tokens per chunk. ``passes``: 1 or 2 (see the module).
    ``vocab_chunk_size``: vocabulary columns per step of the second pass.
    ``dw_update_size``: one pass, columns of the weight gradient added per inner step.
    """

    chunk_size: int
    passes: int
    vocab_chunk_size: int
    dw_update_size: int

    @classmethod
    def resolve(cls, x, w, *, chunk_size=None, passes=None, vocab_chunk_size=None) -> Config:
        """Fills in the defaults for hidden states ``x`` ``[..., H]`` and ``w`` ``[H, V]``.

        Two passes by default where the tokens may be spread over devices (so that the
        weight gradient is reduced once) or where ``w`` is narrower than the
        accumulation dtype (one pass would need an ``H x V`` float32 buffer, twice the
        gradient); otherwise one.
        """
        hidden, vocab = w.shape
        num_tokens = math.prod(x.shape[:-1])
        chunk = int(chunk_size or auto_chunk_size(num_tokens, vocab))
        spread = spread_over_devices(x)
        # Each chunk holds a block of every device's rows (see chunking): a whole one.
        shards = _token_shards(x, spread)
        chunk = -(-chunk // shards) * shards
        if passes is None:
            narrow = jnp.dtype(w.dtype).itemsize < jnp.dtype(accumulation_dtype(x, w)).itemsize
            passes = 2 if spread or narrow else 1
        if spread:
            rows = -(-max(num_tokens, 1) // chunk) * chunk
            width = spread_vocab_chunk_size(rows, vocab, vocab_chunk_size)
        else:
            width = vocab_chunk_size or auto_vocab_chunk_size(hidden, vocab, w.dtype.itemsize)
        return cls(chunk, passes, int(min(width, vocab)), auto_dw_update_size(vocab, hidden))


def _token_shards(x, spread: bool) -> int:
    """How many devices may split ``x``'s tokens: under explicit sharding those of its
    spec; under automatic sharding all of them (a multiple of any split of the tokens)
    where they may be ``spread``, else 1."""
    sharding = explicit_sharding(x)
    if sharding is None:
        return jax.device_count() if spread else 1
    return _devices_splitting(sharding, x.ndim - 1)


def _devices_splitting(sharding, leading: int) -> int:
    """How many devices split the first ``leading`` axes of an array with ``sharding``."""
    axes = jax.tree.leaves(list(sharding.spec[:leading]))
    return math.prod(sharding.mesh.shape[a] for a in axes)


class HeadTerms(NamedTuple):
    """What a head computes from one chunk's raw logits for the gradients."""

    loss: jax.Array  # [c]
    grad: jax.Array  # [c, V]: d(loss_n)/d(z_n), 0 on tokens that are not counted
    saved: jax.Array  # [c, saved_width]: what vocab_chunk_grad needs from the whole row
    stats: jax.Array  # [c, stats_width]: per-token statistics for logging


class Head(Protocol):
    """A fused loss, per chunk of tokens, from the raw logits ``z = x @ w + bias``
    (accumulation dtype). ``tokens`` are the head's per-token arrays (a pytree of
    ``[c, ...]`` arrays, zero-padded), ``params`` its other (constant) inputs."""

    @property
    def saved_width(self) -> int: ...

    @property
    def stats_width(self) -> int: ...

    def counted(self, tokens, params) -> jax.Array:
        """``[c]`` bool: the tokens whose loss can be nonzero (the others' rows of
        ``x`` are zeroed before any product, so they pass no gradient)."""
        ...

    def loss(self, z, tokens, params) -> tuple[jax.Array, jax.Array]:
        """Per-token losses (differentiable in ``z``) and statistics."""
        ...

    def loss_and_grad(self, z, tokens, params, fill: Fill, by_slices: bool = False) -> HeadTerms:
        """The chunk's terms. ``by_slices``: ``grad`` will not be used, the gradient
        coming from ``vocab_chunk_grad`` while ``z`` stays alive (the head may order its
        reductions so that fewer chunk-sized temporaries are alive beside it)."""
        ...

    def grad_by_slices(self, params) -> bool:
        """Whether one pass may form the logit gradient a vocabulary slice at a time
        with ``vocab_chunk_grad``: not where that repeats work for each slice (a dense
        teacher's logits, formed whole for the loss)."""
        ...

    def vocab_chunk_grad(
        self, z_t, tokens, saved, params, chunk: VocabChunk, fill: Fill
    ) -> jax.Array:
        """``grad`` of ``loss_and_grad`` for the columns ``chunk``, transposed
        (``[width, c]``), from their logits ``z_t`` ``[width, c]`` and the rows' ``saved``
        values (the second pass multiplies in that layout)."""
        ...


def check_layout(x, w) -> None:
    """Under explicit sharding, tokens and vocabulary on one mesh axis cannot be
    multiplied (nor can they in ``x @ w``): say which reshard makes it work."""
    xs, ws = explicit_sharding(x), explicit_sharding(w)
    if xs is None or ws is None:
        return
    token_axes = set(jax.tree.leaves([s for s in xs.spec[: x.ndim - 1]]))
    vocab_axes = set(jax.tree.leaves(ws.spec[1:2]))
    shared = token_axes & vocab_axes
    if shared:
        raise ValueError(
            f"x's tokens and w's vocabulary are both sharded over mesh axis {sorted(shared)}: "
            "reshard one of them (e.g. jax.sharding.reshard(w, P(None, None)), or put the "
            "tokens on another axis), as x @ w would need too"
        )


def whole_hidden(w, spread: bool, tangent: bool = False):
    """``w`` with its hidden axis whole on every device, and a function that returns a
    gradient to ``w``'s sharding.

    An FSDP-sharded ``w`` (hidden axis split) is gathered once here, before the loops:
    left to the partitioner, the gather would happen in every chunk. Under explicit
    sharding the spec says which axes to gather. Under automatic sharding the layout
    cannot be seen while tracing: with a mesh set (``jax.set_mesh``) a constraint asks
    for the hidden axis whole and leaves the vocabulary axis to the partitioner (a
    no-op for any other layout). With none set there is no mesh to state it over (one
    made up here would not be the mesh of the arrays): ``hidden_whole`` asks for the
    same when the program is partitioned, where the layout is known. A ``tangent`` (a
    linear input, transposed in reverse mode) is left as it is there.
    """
    sharding = explicit_sharding(w)
    if sharding is None:
        mesh = jax.sharding.get_abstract_mesh()
        if not spread:
            return w, lambda g: g
        if mesh.empty:
            return (w if tangent else hidden_whole(w)), lambda g: g
        if not any(t == jax.sharding.AxisType.Auto for t in mesh.axis_types):
            # Under an explicit mesh, a w that is not on it (a NumPy array, or one
            # placed before the mesh was set) is put on it replicated, as it is.
            replicated = jax.sharding.NamedSharding(mesh, jax.P(None, None))
            return jax.sharding.reshard(w, replicated), lambda g: g
        whole = jax.sharding.NamedSharding(mesh, jax.P(None, jax.P.UNCONSTRAINED))
        return jax.lax.with_sharding_constraint(w, whole), lambda g: g
    if len(sharding.spec) == 0 or sharding.spec[0] is None:
        return w, lambda g: g
    vocab_spec = sharding.spec[1] if len(sharding.spec) > 1 else None
    whole = jax.sharding.NamedSharding(sharding.mesh, jax.P(None, vocab_spec))
    return jax.sharding.reshard(w, whole), lambda g: jax.sharding.reshard(g, sharding)


def mask_padding(z, ids, vocab_size: int):
    """``z`` with ``-inf`` in the columns of a padded vocabulary (``ids >= vocab_size``,
    ``ids`` broadcasting against ``z``): they get probability 0 and no gradient."""
    return jnp.where(ids < vocab_size, z, -jnp.inf)


def _logits(x_c, w, bias, acc):
    z = jnp.matmul(x_c, w, preferred_element_type=acc)
    return z if bias is None else z + bias.astype(acc)


def _loop_fill(acc, i) -> Fill:
    # Tied to the loop index: XLA's CPU backend would move the broadcast of a constant
    # to a chunk's shape out of the loop, where it stays alive as a chunk-sized buffer.
    return loop_variant(Fill(jnp.zeros((), acc), jnp.full((), jnp.nan, acc)), i)


def _hidden_grad(g, w, x_c):
    """``g @ w.T`` with float32 sums, contracting w's vocabulary axis in place: ``g @ w.T``
    written out would have XLA keep a transposed copy of w (V x H) alive for the loop.
    Under explicit sharding the product names its output's sharding, that of x."""
    return jax.lax.dot_general(
        g,
        w,
        (((1,), (1,)), ((), ())),
        preferred_element_type=accumulation_dtype(x_c, w),
        out_sharding=explicit_sharding(x_c),
    )


def _slices_weight_grad(dw, slice_size: int) -> bool:
    """Whether one pass adds to ``dw`` ``slice_size`` columns at a time: not where a
    slice is the whole vocabulary, nor where the vocabulary may be split over devices
    (a slice would move between them)."""
    sharding = explicit_sharding(dw)
    vocab_sharded = sharding is not None and len(sharding.spec) > 1 and sharding.spec[1]
    multi_device_auto = sharding is None and jax.device_count() > 1
    return not (slice_size >= dw.shape[1] or vocab_sharded or multi_device_auto)


def _add_weight_grad(dw, x_c, g, acc_dtype, slice_size):
    """``dw + x_c.T @ g``, ``slice_size`` (``dw_update_size``) columns at a time inside a
    loop when possible.

    XLA keeps a matmul's result apart from the accumulator it is added to, so the
    whole product would be a second ``H x V`` buffer; a slice's product is only
    ``H x slice_size``, and the loop updates ``dw`` in place.
    """
    sharding = explicit_sharding(dw)
    if not _slices_weight_grad(dw, slice_size):
        return dw + jnp.matmul(x_c.T, g, preferred_element_type=acc_dtype, out_sharding=sharding)

    def add_slice(i, dw):
        start = i * slice_size
        g_i = jax.lax.dynamic_slice_in_dim(g, start, slice_size, axis=1)
        part = jnp.matmul(x_c.T, g_i, preferred_element_type=acc_dtype, out_sharding=sharding)
        old = jax.lax.dynamic_slice_in_dim(dw, start, slice_size, axis=1)
        return jax.lax.dynamic_update_slice_in_dim(dw, old + part, start, axis=1)

    return jax.lax.fori_loop(0, dw.shape[1] // slice_size, add_slice, dw)


class _TokenWalk(NamedTuple):
    """The token chunks a pass walks: ``x``, the token factors and the head's per-token
    arrays viewed as chunks (``Chunks.view``), and a zero varying like the inputs."""

    chunks: Chunks
    xs: jax.Array
    scales: jax.Array
    tokens: Any
    zero: jax.Array

    @classmethod
    def of(cls, x, w, bias, tokens, params, token_scale, config: Config) -> _TokenWalk:
        acc = accumulation_dtype(x, w)
        chunks = Chunks.of(x.shape[0], config.chunk_size, spread_over_devices(x))
        view = lambda a: chunks.view(chunks.pad(a))  # noqa: E731
        zero = varying_zero(acc, x, w, bias, tokens, params, token_scale)
        return cls(chunks, view(x), view(token_scale.astype(acc)), jax.tree.map(view, tokens), zero)

    def chunk(self, i):
        """Chunk ``i``: its rows of ``x``, token factors and per-token arrays, and the
        ``Fill`` of its loop step."""
        take = functools.partial(self.chunks.take, i=i)
        fill = _loop_fill(self.zero.dtype, i)
        return take(self.xs), take(self.scales), jax.tree.map(take, self.tokens), fill

    def rows(self, width: int) -> jax.Array:
        """A viewed ``[rows, width]`` buffer of zeros (per-token values), sharded as the
        rows are."""
        return self.chunks.buffer(self.chunks.unview(self.scales), self.zero.dtype, width)

    def loop(self, body, init):
        return jax.lax.fori_loop(0, self.chunks.count, body, init)


def forward_pass(head: Head, x, w, bias, tokens, params, token_scale, config: Config):
    """The loss alone: ``sum_n c_n l_n`` and the per-token statistics, one loop over the
    token chunks."""
    walk = _TokenWalk.of(x, w, bias, tokens, params, token_scale, config)

    def body(i, carry):
        total, stats = carry
        x_c, scale_c, tokens_c, fill = walk.chunk(i)
        loss, stats_c = _chunk_loss(head, x_c, tokens_c, w, bias, params, fill.zero)
        return total + _scaled_sum(loss, scale_c), walk.chunks.put(stats, i, stats_c)

    total, stats = walk.loop(body, (walk.zero, walk.rows(head.stats_width) + walk.zero))
    return total, walk.chunks.unview(stats, x.shape[0])


class _ChunkGrads(NamedTuple):
    x: jax.Array  # the chunk's rows of x, those of tokens that add nothing zeroed
    terms: HeadTerms
    g: jax.Array  # the scaled logit gradient, accumulation dtype
    dx: jax.Array  # the chunk's rows of dL/dx


def _counted_chunk(head: Head, walk: _TokenWalk, i, params):
    """``walk.chunk(i)`` with the rows of tokens that add nothing zeroed in ``x``."""
    x_c, scale_c, tokens_c, fill = walk.chunk(i)
    x_c = jnp.where(head.counted(tokens_c, params)[:, None], x_c, fill.zero.astype(x_c.dtype))
    return x_c, scale_c, tokens_c, fill


def _chunk_grads(head: Head, walk: _TokenWalk, i, w, bias, params) -> _ChunkGrads:
    """One token chunk's logits, the head's terms, and the chunk's ``dL/dx``."""
    x_c, scale_c, tokens_c, fill = _counted_chunk(head, walk, i, params)
    terms = head.loss_and_grad(_logits(x_c, w, bias, walk.zero.dtype), tokens_c, params, fill)
    terms = terms._replace(loss=_scaled_sum(terms.loss, scale_c))
    g = terms.grad * scale_c[:, None]
    return _ChunkGrads(x_c, terms, g, _hidden_grad(g.astype(_matmul_dtype(x_c, w)), w, x_c))


def _matmul_dtype(x, w):
    return jnp.promote_types(x.dtype, w.dtype)


def _dx_buffer(walk: _TokenWalk):
    """The viewed ``dL/dx`` a pass fills chunk by chunk: ``x`` itself, every chunk of
    which is overwritten. Zeros would do as well, but from ``x`` the partitioner lays
    the gradient out as ``x`` is; left to choose, it may split it along the hidden
    axis like an FSDP-sharded ``w``, and gather each chunk's logit gradient to do so."""
    return walk.xs + walk.zero.astype(walk.xs.dtype)


class Gradients(NamedTuple):
    total: jax.Array  # the scaled sum
    stats: jax.Array  # per token
    x: jax.Array
    w: jax.Array
    bias: jax.Array | None


def _sliced_step(head: Head, walk: _TokenWalk, i, w, bias, params, carry: Gradients, width: int):
    """``one_pass_grads``'s step for chunk ``i`` with ``dL/dw`` added ``width`` columns at a
    time inside a loop, in place: XLA keeps a matmul's result apart from the
    accumulator it is added to, so ``x_c.T @ g`` whole would be a second ``H x V``
    buffer, where a slice's product is ``H x width``. The logit gradient is formed a
    slice at a time too (``Head.vocab_chunk_grad``, from the rows' saved values),
    where the slice's two products read it: it is never written out whole."""
    x_c, scale_c, tokens_c, fill = _counted_chunk(head, walk, i, params)
    acc, mm = walk.zero.dtype, _matmul_dtype(x_c, w)
    z = _logits(x_c, w, bias, acc)
    terms = head.loss_and_grad(z, tokens_c, params, fill, by_slices=True)
    layout = VocabChunks(w.shape[1], width, False)
    sharding = explicit_sharding(carry.w)

    def add_slice(j, grads):
        dw, db, dx = grads
        chunk = VocabChunk(layout, j, width)
        g_t = head.vocab_chunk_grad(chunk.take(z).T, tokens_c, terms.saved, params, chunk, fill)
        g = (g_t * scale_c[None, :]).T
        g_mm = g.astype(mm)
        part = jnp.matmul(x_c.T, g_mm, preferred_element_type=acc, out_sharding=sharding)
        dw = chunk.put(dw, chunk.take(dw) + part)
        db = None if db is None else chunk.put(db, chunk.take(db) + jnp.sum(g, axis=0))
        return dw, db, dx + _hidden_grad(g_mm, chunk.take(w), x_c)

    dx = jnp.zeros_like(x_c, dtype=acc) + fill.zero
    dw, db, dx = jax.lax.fori_loop(0, layout.count, add_slice, (carry.w, carry.bias, dx))
    return Gradients(
        carry.total + _scaled_sum(terms.loss, scale_c),
        walk.chunks.put(carry.stats, i, terms.stats),
        walk.chunks.put(carry.x, i, dx),
        dw,
        db,
    )


def one_pass_grads(head: Head, x, w, bias, tokens, params, token_scale, config: Config):
    """One loop over the token chunks, three matmuls each: the loss, the statistics and
    the gradients, ``dL/dw`` (and ``dL/dbias``) summed over the chunks in the
    accumulation dtype."""
    walk = _TokenWalk.of(x, w, bias, tokens, params, token_scale, config)
    acc, zero = walk.zero.dtype, walk.zero
    db = None if bias is None else jnp.zeros_like(bias, dtype=acc) + zero
    dw = jnp.zeros_like(w, dtype=acc) + zero
    init = Gradients(zero, walk.rows(head.stats_width) + zero, _dx_buffer(walk), dw, db)

    def body(i, carry: Gradients) -> Gradients:
        if head.grad_by_slices(params) and _slices_weight_grad(dw, config.dw_update_size):
            return _sliced_step(head, walk, i, w, bias, params, carry, config.dw_update_size)
        out = _chunk_grads(head, walk, i, w, bias, params)
        g_mm = out.g.astype(_matmul_dtype(x, w))
        return Gradients(
            carry.total + out.terms.loss,
            walk.chunks.put(carry.stats, i, out.terms.stats),
            walk.chunks.put(carry.x, i, out.dx),
            _add_weight_grad(carry.w, out.x, g_mm, acc, config.dw_update_size),
            None if carry.bias is None else carry.bias + jnp.sum(out.g, axis=0),
        )

    out = walk.loop(body, init)
    n = x.shape[0]
    return out._replace(stats=walk.chunks.unview(out.stats, n), x=walk.chunks.unview(out.x, n))


def two_pass_grads(head: Head, x, w, bias, tokens, params, token_scale, config: Config):
    """A loop over the token chunks for the loss, the statistics, ``dL/dx`` and the
    values each token's row gives the second pass (``Head.saved_width``); then
    ``weight_pass`` for ``dL/dw`` and ``dL/dbias``."""
    n = x.shape[0]
    # Padded once here, for both passes.
    chunks = Chunks.of(n, config.chunk_size, spread_over_devices(x))
    x, tokens, token_scale = jax.tree.map(chunks.pad, (x, tokens, token_scale))
    walk = _TokenWalk.of(x, w, bias, tokens, params, token_scale, config)
    zero = walk.zero
    rows = (walk.rows(head.stats_width), walk.rows(head.saved_width))
    init = (zero, rows[0] + zero, _dx_buffer(walk), rows[1] + zero)

    def body(i, carry):
        total, stats, dx, saved = carry
        out = _chunk_grads(head, walk, i, w, bias, params)
        put = functools.partial(walk.chunks.put, i=i)
        return (
            total + out.terms.loss,
            put(stats, value=out.terms.stats),
            put(dx, value=out.dx),
            put(saved, value=out.terms.saved),
        )

    total, stats, dx, saved = walk.loop(body, init)
    unview = walk.chunks.unview
    dw, db = weight_pass(head, x, w, bias, tokens, params, token_scale, unview(saved), config)
    return Gradients(total, unview(stats, n), unview(dx, n), dw, db)


def _scaled_sum(loss, scale):
    """``sum_n scale_n loss_n`` over the tokens with a nonzero factor: a padding row's
    loss may be infinite (its target a class of probability 0), and adds nothing."""
    return jnp.sum(jnp.where(scale != 0, loss * scale, 0.0))


def _token_groups(rows: int, vocab_chunk_size: int, config: Config, spread: bool) -> Chunks:
    """How the second pass takes the tokens for each vocabulary chunk: all at once when
    spread over devices (so that a chunk's product over the tokens is reduced over the
    devices once), else groups of pass 1's chunks, as many as fit ``CHUNK_BYTES``."""
    group = rows
    if not spread:
        per_group = max(1, CHUNK_BYTES // (4 * vocab_chunk_size * config.chunk_size))
        count = rows // config.chunk_size
        group = config.chunk_size * max(
            d for d in range(1, min(count, per_group) + 1) if count % d == 0
        )
    return Chunks(rows // group, group, False)


class _WeightPass(NamedTuple):
    """What ``weight_pass`` walks: the tokens' arrays viewed as groups, ``w`` and ``bias``
    viewed as vocabulary chunks, and a zero varying like the inputs."""

    groups: Chunks
    token_views: tuple  # x, tokens, token factors and saved values, viewed as groups
    w_view: jax.Array
    bias_view: jax.Array | None
    zero: jax.Array


def _vocab_chunk_grads(head: Head, walked: _WeightPass, params, chunk: VocabChunk):
    """One vocabulary chunk's ``dL/dw`` and ``dL/dbias`` in the accumulation dtype,
    summed over the token groups."""
    acc = walked.zero.dtype
    groups = walked.groups
    # Everything tied to the chunk: XLA would otherwise precompute the parts of the
    # group loop that do not depend on the chunk, for all groups at once.
    views = loop_variant(walked.token_views, chunk.j)
    # Products arranged as w_chunk.T @ x.T and g.T @ x, with the chunk's logits and
    # their gradient columns first ([size, tokens]): the forms every backend
    # multiplies in bfloat16 with float32 sums (for x.T @ g XLA's CPU backend would
    # convert x to float32 first). The chunk of w is transposed once.
    w_t = jax.lax.optimization_barrier(chunk.take(loop_variant(walked.w_view, chunk.j)).T)
    b_j = None if walked.bias_view is None else chunk.take(walked.bias_view)
    matmul_dtype = _matmul_dtype(views[0], w_t)

    def group_body(k, carry):
        dw_t, db_j = carry
        x_g, tokens_g, scale_g, saved_g = jax.tree.map(lambda a: groups.take(a, k), views)
        fill = _loop_fill(acc, (k, chunk.j))
        keep = head.counted(tokens_g, params)[:, None]
        x_g = jnp.where(keep, x_g, fill.zero.astype(x_g.dtype))
        z_t = jax.lax.dot_general(w_t, x_g, (((1,), (1,)), ((), ())), preferred_element_type=acc)
        z_t = z_t if b_j is None else z_t + b_j[:, None]
        g_t = head.vocab_chunk_grad(z_t, tokens_g, saved_g, params, chunk, fill) * scale_g[None, :]
        dw_t = dw_t + jax.lax.dot_general(
            g_t.astype(matmul_dtype),
            x_g,
            (((1,), (0,)), ((), ())),
            preferred_element_type=acc,
            out_sharding=explicit_sharding(w_t),
        )
        return dw_t, None if db_j is None else db_j + jnp.sum(g_t, axis=1)

    zero = walked.zero
    init = (
        jnp.zeros_like(w_t, dtype=acc) + zero,
        None if b_j is None else jnp.zeros_like(b_j) + zero,
    )
    dw_t, db_j = jax.lax.fori_loop(0, groups.count, group_body, init)
    return dw_t.T, db_j


def weight_pass(head: Head, x, w, bias, tokens, params, token_scale, saved, config: Config):
    """The second of two passes: ``dL/dw`` (in w's dtype) and ``dL/dbias`` from the padded
    rows of the first, walking the vocabulary in chunks of ``vocab_chunk_size``; each
    chunk's share of ``dw`` is summed over the tokens in float32 and written once."""
    acc = accumulation_dtype(x, w)
    spread = spread_over_devices(x)
    layout = VocabChunks(w.shape[1], min(config.vocab_chunk_size, w.shape[1]), spread)
    groups = _token_groups(x.shape[0], layout.size, config, spread)
    walked = _WeightPass(
        groups,
        jax.tree.map(groups.view, (x, tokens, token_scale.astype(acc), saved)),
        layout.view(w),
        None if bias is None else layout.view(bias.astype(acc)),
        varying_zero(acc, x, w, bias, tokens, params, token_scale),
    )

    def write(carry, chunk: VocabChunk):
        dw_j, db_j = _vocab_chunk_grads(head, walked, params, chunk)
        dw = chunk.put(carry[0], dw_j.astype(w.dtype))
        return dw, None if db_j is None else chunk.put(carry[1], db_j)

    zero = walked.zero
    carry = (
        jnp.zeros_like(walked.w_view) + zero.astype(w.dtype),
        None if walked.bias_view is None else jnp.zeros_like(walked.bias_view) + zero,
    )
    carry = jax.lax.fori_loop(
        0, layout.count, lambda j, c: write(c, VocabChunk(layout, j, layout.size)), carry
    )
    if layout.tail:
        carry = write(carry, VocabChunk(layout, jnp.int32(layout.count), layout.tail))
    dw, db = carry
    return layout.unview(dw), None if db is None else layout.unview(db)


def gradients(head: Head, x, w, bias, tokens, params, token_scale, config: Config) -> Gradients:
    """``sum_n c_n l_n``, its gradients for x, w and bias, and the statistics, in
    ``config.passes`` passes."""
    w_whole, to_w_sharding = whole_hidden(w, spread_over_devices(x))
    take_passes = one_pass_grads if config.passes == 1 else two_pass_grads
    out = take_passes(head, x, w_whole, bias, tokens, params, token_scale, config)
    return out._replace(w=to_w_sharding(out.w.astype(w.dtype)))


def one_example_at_a_time(fn):
    """``fn`` (arrays in, arrays out) that ``jax.vmap`` runs one example after another
    (``lax.map`` over the batched arguments) instead of batching its loops, which would
    hold a chunk of logits for every example at once: under ``vmap`` the memory stays
    one chunk's, and each example's values are those of the unbatched call.

    With the examples split over ``g`` devices (or, under automatic sharding, possibly
    split: ``g = gcd(B, devices)``) they are taken as ``g`` groups side by side, one
    example of each group at a time, so that each device walks its own examples."""

    def call(*args):
        leaves, tree = jax.tree.flatten(args)
        out_tree = []

        # Flat lists of arrays in and out: forward mode over a custom batching rule
        # mishandles None in the arguments (bias=None).
        def flat(*leaves):
            out = fn(*jax.tree.unflatten(tree, leaves))
            out_leaves, structure = jax.tree.flatten(out)
            out_tree[:] = [structure]
            return out_leaves

        mapped = jax.custom_batching.custom_vmap(flat)

        @mapped.def_vmap
        def rule(axis_size, in_batched, *leaves):
            if not any(in_batched):  # forward mode batches only the tangents
                return flat(*leaves), [False] * out_tree[0].num_leaves
            batched = [a for a, b in zip(leaves, in_batched, strict=True) if b]
            groups = _example_groups(axis_size, batched)

            def one(inner, slices):
                slices = iter(slices)
                return inner(
                    *[next(slices) if b else a for a, b in zip(leaves, in_batched, strict=True)]
                )

            if groups == 1:
                out = jax.lax.map(functools.partial(one, mapped), batched)
            else:
                split = [_split_examples(a, groups) for a in batched]
                walk = functools.partial(jax.lax.map, functools.partial(one, flat))
                out = [_merge_examples(o) for o in jax.vmap(walk)(split)]
            return out, [True] * len(out)

        # Differentiated as the plain function: JAX cannot linearize through a custom
        # batching rule (second-order reverse mode would fail), only batch it.
        differentiable = jax.custom_jvp(lambda *leaves: mapped(*leaves))
        differentiable.defjvp(lambda primals, tangents: jax.jvp(flat, primals, tangents))
        out = differentiable(*leaves)
        return jax.tree.unflatten(out_tree[0], out)

    return call


def _example_groups(count: int, batched) -> int:
    """Into how many groups ``vmap``'s ``count`` examples are split over devices."""
    shardings = [s for s in map(explicit_sharding, batched) if s is not None]
    if shardings:
        return max(_devices_splitting(s, 1) for s in shardings)
    if not spread_over_devices(batched[0]):
        return 1
    return math.gcd(count, jax.device_count())


def _split_examples(a, groups: int):
    shape = (groups, a.shape[0] // groups, *a.shape[1:])
    sharding = explicit_sharding(a)
    if sharding is None:
        return a.reshape(shape)
    spec = jax.P(*sharding.spec[:1], None, *sharding.spec[1:])
    return jnp.reshape(a, shape, out_sharding=jax.NamedSharding(sharding.mesh, spec))


def _merge_examples(a):
    shape = (a.shape[0] * a.shape[1], *a.shape[2:])
    sharding = explicit_sharding(a)
    if sharding is None:
        return a.reshape(shape)
    spec = jax.P(sharding.spec[0], *sharding.spec[2:])
    return jnp.reshape(a, shape, out_sharding=jax.NamedSharding(sharding.mesh, spec))


def _forward(head: Head, config: Config, x, w, bias, tokens, params, token_scale):
    w, _ = whole_hidden(w, spread_over_devices(x))
    return forward_pass(head, x, w, bias, tokens, params, token_scale, config)


@functools.partial(jax.custom_jvp, nondiff_argnums=(0, 7))
def fused_sum(head: Head, x, w, bias, tokens, params, token_scale, config: Config):
    """``sum_n token_scale_n l_n`` over ``x`` ``[n, H]`` and the per-token statistics
    (for logging; they carry no tangent)."""
    forward = one_example_at_a_time(functools.partial(_forward, head, config))
    return forward(x, w, bias, tokens, params, token_scale)


@fused_sum.defjvp
def _fused_sum_jvp(head, config, primals, tangents):
    # The gradients are formed in the forward pass(es), while each chunk's logits are at
    # hand; the tangent is their inner product with the input tangents, which JAX
    # transposes for reverse mode without another pass over the vocabulary. Only the
    # tangent-free part runs one example at a time under vmap.
    x, w, bias, tokens, params, token_scale = primals
    dx, dw, dbias = tangents[:3]
    grads = one_example_at_a_time(functools.partial(_gradients, head, config))(*primals)
    dloss = jnp.zeros((), grads.total.dtype)
    # Products in the inputs' dtype, sums in float32: transposed for reverse mode this is
    # one multiplication producing a gradient of the inputs' dtype, with no float32 copy.
    if not is_zero(dx):
        dloss = dloss + jnp.sum(grads.x * dx.astype(grads.x.dtype), dtype=dloss.dtype)
    if not is_zero(dw):
        dloss = dloss + jnp.sum(grads.w * dw.astype(grads.w.dtype), dtype=dloss.dtype)
    if bias is not None and not is_zero(dbias):
        dloss = dloss + jnp.sum(grads.bias * dbias.astype(grads.bias.dtype))
    return (grads.total, grads.stats), (dloss, jnp.zeros_like(grads.stats))


def _gradients(head, config, *primals):
    return gradients(head, *primals, config)


def _chunk_loss(head: Head, x_c, tokens_c, w, bias, params, zero=0.0):
    """One chunk's per-token losses (differentiable) and statistics (not); the rows of
    tokens that add nothing are set to ``zero`` before the product."""
    acc = accumulation_dtype(x_c, w)
    x_c = jnp.where(head.counted(tokens_c, params)[:, None], x_c, jnp.asarray(zero, x_c.dtype))
    loss, stats = head.loss(_logits(x_c, w, bias, acc), tokens_c, params)
    return loss, jax.lax.stop_gradient(stats)
