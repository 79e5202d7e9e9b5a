"""``linear_cross_entropy``: cross-entropy of ``x @ w + b`` without the N x V logits.

Tokens are processed in chunks of ``chunk`` rows; one chunk's logits (``chunk x V``,
float32) are the largest temporary of the loss.

Derivatives, behind ``jax.custom_jvp`` (so forward mode works as well as reverse mode):

* ``"mean"``/``"sum"`` give a scalar, whose gradient is the same for any upstream
  cotangent up to a scale. The JVP rule therefore computes the gradients ``dL/dx``,
  ``dL/dw``, ``dL/db`` while the logits are at hand and returns the tangent as their
  inner product with the input tangents; reverse mode needs nothing more. Two ways:

  - one pass (``_one_pass_grads``) over the token chunks, three matmuls, the weight
    gradient summed over the chunks in an ``H x V`` buffer of the accumulation dtype;
  - two passes (``_two_pass_grads``): the token chunks for the loss, the log-sum-exps
    and ``dL/dx``, then the vocabulary in slices, each slice of ``dL/dw`` formed from
    all tokens and written once. Four matmuls, and no ``H x V`` or ``N x V`` buffer.

* ``"none"`` gives one loss per token, so the gradient of ``w`` depends on a per-token
  cotangent that is unknown in the forward pass. Its chunk body is wrapped in
  ``jax.checkpoint``: reverse mode recomputes each chunk's logits (one matmul more) and
  never stores more than one chunk.
"""

from __future__ import annotations

import functools
import math
from typing import Literal, NamedTuple, overload

import jax
import jax.numpy as jnp
from jax.typing import ArrayLike

from jaxloss import _checks
from jaxloss._reduce import (
    compute_dtype,
    dropped_elements,
    element_scales,
    explicit_sharding,
    is_zero,
    safe_divide,
    varying_zero,
)
from jaxloss._softmax import max_and_sum_exp
from jaxloss._xent import (
    CONSTANT_FILL,
    IGNORED,
    Fill,
    IndexTargets,
    Options,
    Scalars,
    coefficient_columns,
    contributing,
    index_coefficients,
    index_targets,
    logit_gradient,
    resolve_targets,
    soft_cap,
    soft_cap_gradient,
    softmax_cross_entropy,
    target_weight,
    z_loss_logit_scale,
    z_loss_term,
)

# One chunk's float32 logits take at most this many bytes unless chunk_size says otherwise:
# a few chunk-sized temporaries then stay small next to the weight gradient.
CHUNK_BYTES = 16 * 2**20


def auto_chunk_size(num_tokens: int, vocab_size: int) -> int:
    """The largest power of two of rows whose float32 logits fit ``CHUNK_BYTES`` (at least 8)."""
    rows = max(8, CHUNK_BYTES // (4 * vocab_size))
    rows = 2 ** int(math.log2(rows))
    return max(1, min(rows, 2 ** math.ceil(math.log2(max(num_tokens, 1)))))


def accumulation_dtype(x, w) -> jnp.dtype:
    """float32 for 16-bit operands (float64 for float64): logits, softmax statistics
    and the weight gradient accumulate in it."""
    return compute_dtype(jnp.promote_types(x.dtype, w.dtype))


def auto_passes(x, w) -> int:
    """2 when ``w`` is narrower than the accumulation dtype (bfloat16 or float16 weights)
    and its vocabulary axis is whole on every device; else 1.

    One pass accumulates the weight gradient over token chunks in an ``H x V`` buffer of
    the accumulation dtype: for float32 weights that buffer is the gradient itself, for
    16-bit weights it is twice its size. Two passes need no such buffer, for one matmul
    more (``_two_pass_grads``).
    """
    narrow = jnp.dtype(w.dtype).itemsize < jnp.dtype(accumulation_dtype(x, w)).itemsize
    return 2 if narrow and _vocab_axis_is_local(w) else 1


def auto_vocab_chunk_size(hidden: int, vocab: int, weight_itemsize: int) -> int:
    """Columns per step of the second pass: as many as fit a float32 ``dw`` slice
    (``width x H``) in ``CHUNK_BYTES`` or in 1/64 of the weight gradient's bytes,
    whichever is larger, in multiples of 128 (or the whole vocabulary)."""
    budget = max(CHUNK_BYTES, hidden * vocab * weight_itemsize // 64)
    columns = max(128, budget // (4 * hidden) // 128 * 128)
    return min(vocab, columns)


def _chunk_logits(x_c, w, bias, scalars: Scalars, options: Options):
    """One chunk's logits (bf16 operands, float32 sums) and, under soft-capping, the tanh."""
    acc = accumulation_dtype(x_c, w)
    raw = jnp.matmul(x_c, w, preferred_element_type=acc)
    if bias is not None:
        raw = raw + bias.astype(acc)
    if not options.has_softcap:
        return raw, None
    return soft_cap(raw, scalars.logit_softcap)


def _chunk_coefficients(x_c, codes_c, w, scalars: Scalars, options: Options):
    """The chunk's coefficients, its resolved targets, and which tokens count."""
    acc = accumulation_dtype(x_c, w)
    vocab = w.shape[1]
    targets = index_targets(codes_c)
    share = None
    if options.has_smoothing:
        share = jnp.full((vocab,), scalars.label_smoothing / vocab, acc)
    a, w_y = index_coefficients(
        targets, vocab, scalars.class_weight, acc, scalars.label_smoothing, share
    )
    return a, targets, contributing(targets, w_y, scalars, options)


STATISTICS = ("accuracy", "target_log_prob", "entropy")


def _token_statistics(logits, m, log_s, targets, options: Options):
    """Per token, the columns of ``STATISTICS``: 1.0 where the target's logit is the row's
    largest (a tie counts) else 0.0, the target's log-probability, and the entropy of
    the softmax; ``[chunk, 0]`` unless auxiliary statistics were asked for."""
    if not options.return_aux:
        return jnp.zeros((logits.shape[0], 0), logits.dtype)
    onehot = targets.class_index[:, None] == jnp.arange(logits.shape[1], dtype=jnp.int32)
    target_logit = jnp.sum(jnp.where(onehot, logits, 0.0), axis=-1)
    top = (target_logit >= m[:, 0]).astype(logits.dtype)
    shifted = logits - m
    p = jnp.exp(shifted - log_s[:, None])
    # -sum_v p_v log p_v = log s - sum_v p_v (z_v - m); a class of probability 0 adds 0.
    entropy = log_s - jnp.sum(jnp.where(p > 0, p * shifted, 0.0), axis=-1)
    return jnp.stack([top, (target_logit - m[:, 0]) - log_s, entropy], axis=-1)


class _ChunkTerms(NamedTuple):
    loss: jax.Array  # per token
    lse: jax.Array  # per token: log-sum-exp of the (capped) logits
    stats: jax.Array  # per token: the STATISTICS ([chunk, 0] without return_aux)
    grad: jax.Array | None = None  # d(sum of the losses)/d(raw logits), chunk x V
    row_scale: jax.Array | None = None  # per token: S in the gradient S p - a
    x: jax.Array | None = None  # the chunk's hidden states, rows that add nothing set to 0


def _chunk_loss_and_logit_grad(
    x_c, codes_c, w, bias, scalars: Scalars, options: Options, fill: Fill = CONSTANT_FILL
):
    """Per-token losses of one chunk, d(their sum)/d(raw logits), and the chunk's hidden
    states with the rows of tokens that add nothing set to 0.

    The loss ``sum_c a_c (lse - z_c) = S log s + sum_c a_c (m - z_c)`` is formed from
    the target's logit and, with smoothing, one weighted sum over the classes, and ``S``
    in closed form: the coefficients ``a`` appear only inside the gradient's
    elementwise expression, so the chunk's only full-size arrays are its logits and
    their gradient.
    """
    acc = accumulation_dtype(x_c, w)
    vocab = w.shape[1]
    eps = scalars.label_smoothing
    targets = index_targets(codes_c)
    w_y = target_weight(scalars.class_weight, targets.class_index, acc)
    counted = contributing(targets, w_y, scalars, options)
    # A token that adds nothing passes no gradient to x, w or bias, even if its hidden
    # state is nan: its row never enters the matmuls.
    x_c = jnp.where(counted[:, None], x_c, jnp.asarray(fill.zero).astype(x_c.dtype))
    logits, tanh = _chunk_logits(x_c, w, bias, scalars, options)
    m, s = max_and_sum_exp(logits, -1)
    log_s = jnp.log(s[:, 0])
    # Shifted logits below -(largest float) (a -inf bias) count as the largest float,
    # as in xent_terms.
    biggest = jnp.finfo(acc).max
    onehot = targets.class_index[:, None] == jnp.arange(vocab, dtype=jnp.int32)
    target_shift = jnp.sum(jnp.where(onehot, jnp.maximum(logits - m, -biggest), fill.zero), -1)
    element_weight = jnp.where(targets.keep, w_y, 0.0)
    scale = element_weight
    loss = element_weight * (log_s - target_shift)
    spread = None
    if options.has_smoothing:
        weights = jnp.ones((vocab,), acc) if scalars.class_weight is None else scalars.class_weight
        spread = jnp.full((vocab,), eps / vocab, acc) * weights
        shifted = jnp.sum(jnp.maximum(logits - m, -biggest) * spread, axis=-1)
        smooth = jnp.where(targets.keep, jnp.sum(spread) * log_s - shifted, 0.0)
        loss = (1.0 - eps) * loss + smooth
        scale = (1.0 - eps) * scale + jnp.where(targets.keep, jnp.sum(spread), 0.0)
    loss = jnp.where(counted, loss, 0.0)
    loss = jnp.where(targets.bad, jnp.nan, loss)
    scale = jnp.where(targets.bad, jnp.nan, scale)
    lse = m[:, 0] + log_s
    if options.has_z_loss:
        loss = loss + z_loss_term(lse, scalars.z_loss, targets.keep)
        scale = scale + z_loss_logit_scale(lse, scalars.z_loss, targets.keep)
    a = coefficient_columns(targets, element_weight, 0, vocab, eps, spread, fill)
    grad = logit_gradient(scale[:, None], jnp.exp(logits - m) / s, a, fill)
    if options.has_softcap:
        grad = soft_cap_gradient(grad, tanh)
    grad = jnp.where(counted[:, None], grad, fill.zero)
    grad = jnp.where(targets.bad[:, None], fill.nan, grad)
    stats = _token_statistics(logits, m, log_s, targets, options)
    return _ChunkTerms(loss, lse, stats, grad, scale, x_c)


def _chunk_loss(x_c, codes_c, w, bias, scalars: Scalars, options: Options):
    a, targets, counted = _chunk_coefficients(x_c, codes_c, w, scalars, options)
    x_c = jnp.where(counted[:, None], x_c, 0)
    logits, _ = _chunk_logits(x_c, w, bias, scalars, options)
    loss, lse = softmax_cross_entropy(logits, a)
    if options.has_z_loss:
        loss = loss + z_loss_term(lse, scalars.z_loss, targets.keep)
    logits = jax.lax.stop_gradient(logits)
    m, s = max_and_sum_exp(logits, -1)
    stats = _token_statistics(logits, m, jnp.log(s[:, 0]), targets, options)
    return _ChunkTerms(loss, jax.lax.stop_gradient(lse), stats)


def _interleaved(a) -> bool:
    """Whether chunks of ``a``'s rows are interleaved (see ``_split``): wherever the
    rows may be split over devices, so on more than one device.

    Contiguous chunks of rows sharded over devices would each live on one device: a
    loop over them would have the partitioner gather all the rows to every device (and
    every device compute every chunk). Interleaved chunks take a block of each device's
    rows, which stay where they are. On one device chunks are contiguous (no copy).
    """
    return explicit_sharding(a) is not None or jax.device_count() > 1


def _split(a, chunk):
    """``[n, ...]`` -> ``[n // chunk, chunk, ...]``.

    Chunks are contiguous rows on one device. On several (``_interleaved``), chunk ``j``
    holds rows ``j, j + n/chunk, ...``, so that each device's contiguous block of rows
    becomes a block of every chunk and no row moves between devices (a contiguous
    split would need an all-to-all, which explicit mode will not insert on its own and
    which the automatic partitioner replaces by an all-gather).
    """
    count = a.shape[0] // chunk
    if not _interleaved(a):
        return a.reshape(count, chunk, *a.shape[1:])
    sharding = explicit_sharding(a)
    if sharding is None:
        return jnp.moveaxis(a.reshape(chunk, count, *a.shape[1:]), 1, 0)
    spec = (*sharding.spec, *(None,) * (a.ndim - len(sharding.spec)))
    out = jax.sharding.NamedSharding(sharding.mesh, jax.P(spec[0], None, *spec[1:]))
    return jnp.moveaxis(jax.lax.reshape(a, (chunk, count, *a.shape[1:]), out_sharding=out), 1, 0)


def _merge(a, n):
    """Inverse of ``_split`` (dropping the padding): ``[count, chunk, ...]`` -> ``[n, ...]``."""
    shape = (a.shape[0] * a.shape[1], *a.shape[2:])
    if not _interleaved(a):
        return a.reshape(shape)[:n]
    merged = jnp.moveaxis(a, 0, 1)
    sharding = explicit_sharding(a)
    if sharding is None:
        return merged.reshape(shape)[:n]
    spec = (*sharding.spec, *(None,) * (a.ndim - len(sharding.spec)))
    out = jax.sharding.NamedSharding(sharding.mesh, jax.P(spec[1], *spec[2:]))
    return jax.lax.reshape(merged, shape, out_sharding=out)[:n]


def _pad_tokens(x, codes, token_scale, options: Options):
    """Pads the tokens to a multiple of the chunk size with ignored tokens of scale 0."""
    n, chunk = x.shape[0], options.chunk_size
    padded = -(-n // chunk) * chunk
    if padded != n:
        x = jnp.pad(x, ((0, padded - n), (0, 0)))
        codes = jnp.pad(codes, (0, padded - n), constant_values=IGNORED)
        token_scale = jnp.pad(token_scale, (0, padded - n))
    return x, codes, token_scale


def _chunked(x, codes, token_scale, options: Options):
    """Splits the tokens into chunks, padding the tail with ignored tokens."""
    padded = _pad_tokens(x, codes, token_scale, options)
    return tuple(_split(a, options.chunk_size) for a in padded)


@functools.partial(jax.custom_jvp, nondiff_argnums=(6,))
def _fused_sum(x, w, bias, codes, scalars, token_scale, options):
    """``sum_n token_scale_n loss_n`` in one pass over the chunks, without gradients, and
    each token's log-sum-exp and ``STATISTICS`` (for logging; they carry no tangent)."""
    n = x.shape[0]
    xs, ys, cs = _chunked(x, codes, token_scale, options)

    def body(total, chunk_in):
        x_c, codes_c, scale_c = chunk_in
        terms = _chunk_loss(x_c, codes_c, w, bias, scalars, options)
        return total + jnp.sum(terms.loss * scale_c), (terms.lse, terms.stats)

    init = varying_zero(accumulation_dtype(x, w), x, w, bias, codes, token_scale)
    total, (lse, stats) = jax.lax.scan(body, init, (xs, ys, cs))
    return total, _merge(lse, n), _merge(stats, n)


class _Grads(NamedTuple):
    loss: jax.Array  # the scaled sum
    x: jax.Array
    w: jax.Array
    bias: jax.Array | None
    lse: jax.Array  # per token
    stats: jax.Array  # per token


def vocab_slice_size(vocab: int, hidden: int) -> int:
    """A divisor of ``vocab`` near ``CHUNK_BYTES / (16 hidden)``, else ``vocab`` (no
    slicing): a float32 slice of the weight gradient a quarter of a chunk's logits."""
    target = max(1, CHUNK_BYTES // (16 * hidden))
    if target >= vocab:
        return vocab
    best = max(d for d in range(1, target + 1) if vocab % d == 0)
    return best if best * 8 >= target else vocab


def _vocab_axis_is_local(w) -> bool:
    """Whether every device holds all of ``w``'s vocabulary axis, as far as can be known.

    Under explicit sharding the spec says; otherwise only a single device is certain
    (with ``Auto`` sharding a vocabulary-sharded ``w`` is indistinguishable here, and
    slicing a sharded axis would make the partitioner gather it).
    """
    sharding = explicit_sharding(w)
    if sharding is not None:
        return len(sharding.spec) < 2 or sharding.spec[1] is None
    return jax.device_count() == 1


def _add_weight_grad(dw, x_c, g, acc_dtype, slice_size):
    """``dw + x_c.T @ g``, one vocabulary slice at a time inside a loop when possible.

    XLA keeps a matmul's result apart from the accumulator it is added to, so the
    whole product would be a second ``H x V`` buffer; a slice's product is only
    ``H x slice``, and the loop updates ``dw`` in place.
    """
    vocab = dw.shape[1]
    sharding = explicit_sharding(dw)
    if slice_size >= vocab or not _vocab_axis_is_local(dw):
        return dw + jnp.matmul(x_c.T, g, preferred_element_type=acc_dtype, out_sharding=sharding)

    def add_slice(i, dw):
        start = i * slice_size
        g_i = jax.lax.dynamic_slice_in_dim(g, start, slice_size, axis=1)
        part = jnp.matmul(x_c.T, g_i, preferred_element_type=acc_dtype, out_sharding=sharding)
        old = jax.lax.dynamic_slice_in_dim(dw, start, slice_size, axis=1)
        return jax.lax.dynamic_update_slice_in_dim(dw, old + part, start, axis=1)

    return jax.lax.fori_loop(0, vocab // slice_size, add_slice, dw)


def _one_pass_grads(x, w, bias, codes, scalars, token_scale, options) -> _Grads:
    """The scaled loss and its gradients for x, w and bias in one pass over the token
    chunks: the weight gradient is accumulated over the chunks, in the accumulation
    dtype (an ``H x V`` buffer, which is the gradient itself when ``w`` is float32)."""
    n = x.shape[0]
    matmul_dtype = jnp.promote_types(x.dtype, w.dtype)
    acc = accumulation_dtype(x, w)
    xs, ys, cs = _chunked(x, codes, token_scale, options)

    def body(carry, chunk_in):
        total, dw, db = carry
        x_c, codes_c, scale_c = chunk_in
        fill = _loop_variant(Fill(jnp.zeros((), acc), jnp.full((), jnp.nan, acc)), codes_c)
        terms = _chunk_loss_and_logit_grad(x_c, codes_c, w, bias, scalars, options, fill)
        g = terms.grad * scale_c[:, None]
        g_mm = g.astype(matmul_dtype)
        dx_c = _hidden_grad(g_mm, w, terms.x)
        dw = _add_weight_grad(dw, terms.x, g_mm, acc, options.vocab_slice)
        carry = (total + jnp.sum(terms.loss * scale_c), dw, db + jnp.sum(g, axis=0))
        return carry, (dx_c.astype(x.dtype), terms.lse, terms.stats)

    # zeros_like: the accumulators keep w's sharding under explicit sharding.
    zero = varying_zero(acc, x, w, bias, codes, token_scale)
    init = (zero, jnp.zeros_like(w, dtype=acc) + zero, jnp.zeros_like(w[0], dtype=acc) + zero)
    (total, dw, db), (dxs, lse, stats) = jax.lax.scan(body, init, (xs, ys, cs))
    return _Grads(total, _merge(dxs, n), dw.astype(w.dtype), db, _merge(lse, n), _merge(stats, n))


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


class _ChunkView(NamedTuple):
    """Token-indexed arrays viewed as ``num_chunks`` chunks of ``chunk`` rows, no copy.

    Chunks are contiguous rows (a ``[num_chunks, chunk, ...]`` view) on one device; on
    several (``_interleaved``) the view is ``[chunk, num_chunks, ...]``, so that chunk ``i``
    holds rows ``i, i + num_chunks, ...`` and each device keeps its rows (as ``_split``).
    """

    num_chunks: int
    chunk: int
    interleaved: bool

    @property
    def axis(self) -> int:
        return 1 if self.interleaved else 0

    def view(self, a):
        if not self.interleaved:
            return a.reshape(self.num_chunks, self.chunk, *a.shape[1:])
        if explicit_sharding(a) is None:
            return a.reshape(self.chunk, self.num_chunks, *a.shape[1:])
        spec = _padded_spec(a)
        out = jax.sharding.NamedSharding(explicit_sharding(a).mesh, jax.P(spec[0], None, *spec[1:]))
        return jax.lax.reshape(a, (self.chunk, self.num_chunks, *a.shape[1:]), out_sharding=out)

    def unview(self, a):
        shape = (self.num_chunks * self.chunk, *a.shape[2:])
        if not self.interleaved or explicit_sharding(a) is None:
            return a.reshape(shape)
        spec = _padded_spec(a)
        out = jax.sharding.NamedSharding(explicit_sharding(a).mesh, jax.P(spec[0], *spec[2:]))
        return jax.lax.reshape(a, shape, out_sharding=out)

    def take(self, a, i):
        """Chunk ``i`` of a viewed array, read in place (``_loop_variant``)."""
        return jax.lax.dynamic_index_in_dim(_loop_variant(a, i), i, self.axis, keepdims=False)

    def put(self, a, i, value):
        """``a`` with chunk ``i`` replaced by ``value`` (in place)."""
        value = value.astype(a.dtype)
        if self.interleaved and explicit_sharding(a) is not None:
            # The value takes the chunk's sharding, as its rows do.
            spec = _padded_spec(a)
            chunk_spec = jax.P(spec[0], *spec[2:])
            value = jax.sharding.reshard(
                value, jax.sharding.NamedSharding(explicit_sharding(a).mesh, chunk_spec)
            )
        return jax.lax.dynamic_update_index_in_dim(a, value, i, self.axis)


def _with_trailing_axis(sharding):
    """The sharding of a ``[n]`` array for a ``[n, k]`` one: the new axis whole."""
    spec = (*sharding.spec, *(None,) * (1 - len(sharding.spec)))
    return jax.sharding.NamedSharding(sharding.mesh, jax.P(*spec, None))


def _padded_spec(a):
    spec = explicit_sharding(a).spec
    return (*spec, *(None,) * (a.ndim - len(spec)))


def _loop_variant(a, i):
    """``a``, tied to the loop index ``i`` so that XLA does not hoist work on it out of
    the loop.

    XLA's CPU backend slices 16-bit floats in float32: without the tie it converts the
    whole loop-invariant array (``w``, or ``x``) once, before the loop, into a float32
    copy twice its size; with it the conversion is fused into the slice and touches only
    the slice. Other backends slice 16-bit floats natively; there the tie costs nothing.
    """
    return jax.lax.optimization_barrier((a, i))[0]


def _two_pass_grads(x, w, bias, codes, scalars, token_scale, options) -> _Grads:
    """The scaled loss and its gradients for x, w and bias with no ``H x V`` accumulator.

    Pass 1 walks the token chunks (each chunk's logits for the whole vocabulary): the
    loss, each token's log-sum-exp and row scale ``S``, and ``dx`` chunk by chunk.
    Pass 2 (``_weight_grad_by_vocabulary``) walks the vocabulary: each slice's logits are
    recomputed for all tokens, and that slice of ``dw`` is written once, in w's dtype,
    from float32 sums. Four matmuls in all, one more than one pass.
    """
    n = x.shape[0]
    matmul_dtype = jnp.promote_types(x.dtype, w.dtype)
    acc = accumulation_dtype(x, w)
    x, codes, token_scale = _pad_tokens(x, codes, token_scale, options)
    chunks = _ChunkView(x.shape[0] // options.chunk_size, options.chunk_size, _interleaved(x))
    xs, ys, cs = chunks.view(x), chunks.view(codes), chunks.view(token_scale.astype(acc))

    def body(i, carry):
        total, dxs, lse, stats, row_scale = carry
        x_c = chunks.take(xs, i)
        scale_c = chunks.take(cs, i)
        fill = _loop_variant(Fill(jnp.zeros((), acc), jnp.full((), jnp.nan, acc)), i)
        terms = _chunk_loss_and_logit_grad(x_c, chunks.take(ys, i), w, bias, scalars, options, fill)
        dx_c = _hidden_grad((terms.grad * scale_c[:, None]).astype(matmul_dtype), w, x_c)
        return (
            total + jnp.sum(terms.loss * scale_c),
            chunks.put(dxs, i, dx_c),
            chunks.put(lse, i, terms.lse),
            chunks.put(stats, i, terms.stats),
            chunks.put(row_scale, i, terms.row_scale),
        )

    per_token = chunks.view(jnp.zeros_like(codes, dtype=acc))
    stats = jnp.zeros((*codes.shape, len(STATISTICS) * options.return_aux), acc)
    if explicit_sharding(codes) is not None:
        stats = jax.sharding.reshard(stats, _with_trailing_axis(explicit_sharding(codes)))
    stats = chunks.view(stats)
    zero = varying_zero(acc, x, w, bias, codes, token_scale)
    init = (
        zero,
        jnp.zeros_like(xs) + zero.astype(xs.dtype),
        per_token + zero,
        stats + zero,
        per_token + zero,
    )
    total, dxs, lse, stats, row_scale = jax.lax.fori_loop(0, chunks.num_chunks, body, init)
    dw, db = _weight_grad_by_vocabulary(
        xs, ys, cs, chunks, w, bias, lse, row_scale, scalars, options
    )
    lse, stats = chunks.unview(lse)[:n], chunks.unview(stats)[:n]
    return _Grads(total, chunks.unview(dxs)[:n], dw, db, lse, stats)


def _weight_grad_by_vocabulary(xs, ys, cs, chunks, w, bias, lse, row_scale, scalars, options):
    """Pass 2 of ``_two_pass_grads``: ``dw`` (in w's dtype) and ``db``.

    The vocabulary is walked in slices of ``options.vocab_chunk_size`` columns (the last
    may be narrower); for each, the tokens in groups of pass 1's chunks: the slice's
    logits and logit gradient for the group, and the group's share of the slice's
    ``dw``, summed in float32 over the groups and written once. Products are arranged
    as ``w_slice.T @ x.T`` and ``g.T @ x`` (transposed slices), which every backend
    multiplies in bfloat16 with float32 sums.
    """
    acc = accumulation_dtype(xs, w)
    matmul_dtype = jnp.promote_types(xs.dtype, w.dtype)
    hidden, vocab = w.shape
    width = min(options.vocab_chunk_size, vocab)
    # Chunks per group: the largest divisor of their number whose logits fit CHUNK_BYTES.
    count = chunks.num_chunks
    per_group = min(count, max(1, CHUNK_BYTES // (4 * width * chunks.chunk)))
    per_group = max(d for d in range(1, per_group + 1) if count % d == 0)
    groups = _ChunkView(count // per_group, chunks.chunk * per_group, chunks.interleaved)
    regroup = lambda a: groups.view(chunks.unview(a))  # noqa: E731
    xg, yg, cg = regroup(xs), regroup(ys), regroup(cs)
    lse, row_scale = regroup(lse), regroup(row_scale)
    w_sharding = explicit_sharding(w)
    zero = varying_zero(acc, xs, w, bias, ys, cs)
    # Under explicit sharding the products over a sharded token axis name their output's
    # sharding: replicated, as w's vocabulary axis is whole here.
    slice_sharding = None
    if w_sharding is not None:
        slice_sharding = jax.sharding.NamedSharding(w_sharding.mesh, jax.P())

    def slice_grads(start, width):
        # Everything tied to the slice: XLA would otherwise precompute the parts of the
        # group loop that do not depend on the slice, for all groups at once.
        xg_, yg_, cg_, lse_, row_scale_ = _loop_variant((xg, yg, cg, lse, row_scale), start)
        w_slice = jax.lax.dynamic_slice_in_dim(_loop_variant(w, start), start, width, axis=1)
        # Transposed once per slice, not folded into the products below.
        w_slice_t = jax.lax.optimization_barrier(w_slice.T)
        bias_slice = None
        if bias is not None:
            bias_slice = jax.lax.dynamic_slice_in_dim(bias, start, width).astype(acc)
        spread = None
        if options.has_smoothing:
            spread = jnp.full((width,), scalars.label_smoothing / vocab, acc)
            if scalars.class_weight is not None:
                spread = spread * jax.lax.dynamic_slice_in_dim(scalars.class_weight, start, width)

        def group_body(k, carry):
            dw_t, db = carry
            fill = _loop_variant(Fill(jnp.zeros((), acc), jnp.full((), jnp.nan, acc)), (k, start))
            targets = index_targets(groups.take(yg_, k))
            w_y = target_weight(scalars.class_weight, targets.class_index, acc)
            counted = contributing(targets, w_y, scalars, options)
            x_g = groups.take(xg_, k)
            x_g = jnp.where(counted[:, None], x_g, fill.zero.astype(x_g.dtype))
            logits = jax.lax.dot_general(
                w_slice_t, x_g, (((1,), (1,)), ((), ())), preferred_element_type=acc
            )  # [width, tokens]
            if bias_slice is not None:
                logits = logits + bias_slice[:, None]
            tanh = None
            if options.has_softcap:
                logits, tanh = soft_cap(logits, scalars.logit_softcap)
            a = coefficient_columns(
                targets,
                jnp.where(targets.keep, w_y, 0.0),
                start,
                width,
                scalars.label_smoothing,
                spread,
                fill,
            ).T
            p = jnp.exp(logits - groups.take(lse_, k)[None, :])
            g = logit_gradient(groups.take(row_scale_, k)[None, :], p, a, fill)
            if tanh is not None:
                g = soft_cap_gradient(g, tanh)
            g = jnp.where(counted[None, :], g, fill.zero)
            g = jnp.where(targets.bad[None, :], fill.nan, g) * groups.take(cg_, k)[None, :]
            dw_t = dw_t + jax.lax.dot_general(
                g.astype(matmul_dtype),
                x_g,
                (((1,), (0,)), ((), ())),
                preferred_element_type=acc,
                out_sharding=slice_sharding,
            )
            if db is not None:
                db = db + jnp.sum(g, axis=1)
            return dw_t, db

        init = (
            jnp.zeros((width, hidden), acc) + zero,
            None if bias is None else jnp.zeros((width,), acc) + zero,
        )
        dw_t, db = jax.lax.fori_loop(0, groups.num_chunks, group_body, init)
        dw_slice = dw_t.T.astype(w.dtype)
        if w_sharding is not None:
            dw_slice = jax.sharding.reshard(dw_slice, w_sharding)
        return dw_slice, db

    def write(carry, start, width):
        dw, db = carry
        dw_slice, db_slice = slice_grads(start, width)
        dw = jax.lax.dynamic_update_slice_in_dim(dw, dw_slice, start, axis=1)
        if db is not None:
            db = jax.lax.dynamic_update_slice_in_dim(db, db_slice, start, axis=0)
        return dw, db

    count, tail = divmod(vocab, width)
    carry = (
        jnp.zeros_like(w) + zero.astype(w.dtype),
        None if bias is None else jnp.zeros((vocab,), acc) + zero,
    )
    carry = jax.lax.fori_loop(0, count, lambda j, c: write(c, j * width, width), carry)
    if tail:
        carry = write(carry, count * width, tail)
    return carry


def _fused_sum_jvp(options, primals, tangents):
    # The gradients are formed in the forward pass(es), while each chunk's logits are at
    # hand; the tangent is their inner product with the input tangents, which JAX
    # transposes for reverse mode without another pass over the vocabulary.
    x, w, bias, codes, scalars, token_scale = primals
    dx, dw, dbias = tangents[:3]
    grads_of = _two_pass_grads if options.passes == 2 else _one_pass_grads
    grads = grads_of(x, w, bias, codes, scalars, token_scale, options)
    acc = accumulation_dtype(x, w)
    dloss = jnp.zeros((), acc)
    # Products in the inputs' dtype, sums in float32: transposed for reverse mode this is
    # one multiplication producing a gradient of the inputs' dtype, with no float32 copy.
    if not is_zero(dx):
        dloss = dloss + jnp.sum(grads.x * dx.astype(grads.x.dtype), dtype=acc)
    if not is_zero(dw):
        dloss = dloss + jnp.sum(grads.w * dw.astype(grads.w.dtype), dtype=acc)
    if bias is not None and not is_zero(dbias):
        dloss = dloss + jnp.sum(grads.bias * dbias.astype(acc))
    primal_out = (grads.loss, grads.lse, grads.stats)
    return primal_out, (dloss, jnp.zeros_like(grads.lse), jnp.zeros_like(grads.stats))


_fused_sum.defjvp(_fused_sum_jvp, symbolic_zeros=True)


def _per_token_loss(x, w, bias, codes, scalars, options):
    """Per-token losses, log-sum-exps and ``STATISTICS``; each chunk is recomputed in the
    backward pass (``jax.checkpoint``)."""
    xs, ys, _ = _chunked(x, codes, jnp.zeros(codes.shape, x.dtype), options)
    chunk_loss = jax.checkpoint(_chunk_loss, static_argnums=(5,))

    def body(_, chunk_in):
        terms = chunk_loss(*chunk_in, w, bias, scalars, options)
        return None, (terms.loss, terms.lse, terms.stats)

    _, outputs = jax.lax.scan(body, None, (xs, ys))
    return tuple(_merge(out, x.shape[0]) for out in outputs)


def _aux_statistics(lse, stats, targets: IndexTargets, counted, scalars: Scalars, options):
    """The logged statistics: per token for ``"none"``, else means over the tokens that
    add to the loss; nan wherever a target is out of range."""
    per_token = {
        "z_loss": z_loss_term(lse, scalars.z_loss),
        "log_partition": lse,
        **{name: stats[:, i] for i, name in enumerate(STATISTICS)},
    }
    per_token = {
        name: jnp.where(targets.bad, jnp.nan, jnp.where(counted, value, 0.0))
        for name, value in per_token.items()
    }
    if options.reduction == "none":
        return per_token
    count = jnp.sum(counted).astype(lse.dtype)
    return {name: safe_divide(jnp.sum(value), count) for name, value in per_token.items()}


@functools.partial(jax.jit, static_argnums=(4,))
def _linear_cross_entropy(x, w, codes, bias, options: Options, scalars: Scalars, weighting):
    hidden = w.shape[0]
    acc = accumulation_dtype(x, w)
    # No gradient flows to the numeric options here (documented).
    scalars = jax.lax.stop_gradient(scalars.astype(acc))
    weighting = jax.lax.stop_gradient(weighting)
    dropped = dropped_elements(weighting.token_weight, weighting.segment_ids)
    if dropped is not None:
        codes = jnp.where(dropped, IGNORED, codes)
    x2 = x.reshape(-1, hidden)
    flat = codes.reshape(-1)
    out_dtype = jnp.promote_types(x.dtype, w.dtype)
    targets = index_targets(flat)
    w_y = target_weight(scalars.class_weight, targets.class_index, acc)
    if options.reduction == "none":
        loss, lse, stats = _per_token_loss(x2, w, bias, flat, scalars, options)
        loss = loss.reshape(codes.shape)
        if weighting.token_weight is not None:
            loss = loss * weighting.token_weight.astype(acc)
        loss = loss.astype(out_dtype)
    else:
        share = jnp.where(targets.keep, w_y, 0.0).reshape(codes.shape)
        token_scale = element_scales(options.reduction, share, *weighting)
        loss, lse, stats = _fused_sum(
            x2, w, bias, flat, scalars, token_scale.reshape(-1).astype(acc), options
        )
        loss = loss.astype(out_dtype)
    if not options.return_aux:
        return loss
    counted = contributing(targets, w_y, scalars, options)
    aux = _aux_statistics(
        jax.lax.stop_gradient(lse), jax.lax.stop_gradient(stats), targets, counted, scalars, options
    )
    return loss, jax.tree.map(lambda a: a.reshape(codes.shape) if a.ndim else a, aux)


@overload
def linear_cross_entropy(
    x: ArrayLike,
    w: ArrayLike,
    targets: ArrayLike,
    *,
    bias: ArrayLike | None = None,
    weight: ArrayLike | None = None,
    ignore_index: int = -100,
    reduction: str = "mean",
    label_smoothing: ArrayLike = 0.0,
    z_loss: ArrayLike = 0.0,
    logit_softcap: ArrayLike | None = None,
    chunk_size: int | None = None,
    passes: int | None = None,
    vocab_chunk_size: int | None = None,
    token_weight: ArrayLike | None = None,
    segment_ids: ArrayLike | None = None,
    normalizer: ArrayLike | None = None,
    return_aux: Literal[False] = False,
) -> jax.Array: ...


@overload
def linear_cross_entropy(
    x: ArrayLike,
    w: ArrayLike,
    targets: ArrayLike,
    *,
    bias: ArrayLike | None = None,
    weight: ArrayLike | None = None,
    ignore_index: int = -100,
    reduction: str = "mean",
    label_smoothing: ArrayLike = 0.0,
    z_loss: ArrayLike = 0.0,
    logit_softcap: ArrayLike | None = None,
    chunk_size: int | None = None,
    passes: int | None = None,
    vocab_chunk_size: int | None = None,
    token_weight: ArrayLike | None = None,
    segment_ids: ArrayLike | None = None,
    normalizer: ArrayLike | None = None,
    return_aux: Literal[True],
) -> tuple[jax.Array, dict[str, jax.Array]]: ...


def linear_cross_entropy(
    x: ArrayLike,
    w: ArrayLike,
    targets: ArrayLike,
    *,
    bias: ArrayLike | None = None,
    weight: ArrayLike | None = None,
    ignore_index: int = -100,
    reduction: str = "mean",
    label_smoothing: ArrayLike = 0.0,
    z_loss: ArrayLike = 0.0,
    logit_softcap: ArrayLike | None = None,
    chunk_size: int | None = None,
    passes: int | None = None,
    vocab_chunk_size: int | None = None,
    token_weight: ArrayLike | None = None,
    segment_ids: ArrayLike | None = None,
    normalizer: ArrayLike | None = None,
    return_aux: bool = False,
) -> jax.Array | tuple[jax.Array, dict[str, jax.Array]]:
    r"""Cross-entropy of the logits ``x @ w + bias``, computed without materializing them.

    For language-model heads with large vocabularies: the result equals
    ``cross_entropy(x @ w + bias, targets, ...)`` to float32 rounding, but tokens
    are processed in chunks, so peak memory is one chunk of logits
    (``chunk_size x V`` floats) instead of ``N x V`` for the logits and again for
    their gradient.

    $$
    \ell_n = \sum_v a_{n,v}\,\big(\operatorname{lse}(z_n) - z_{n,v}\big)
        + \zeta \operatorname{lse}(z_n)^2,
    \qquad z_n = \operatorname{softcap}(x_n W + b),
    $$

    with the coefficients $a$ of [`cross_entropy`][jaxloss.cross_entropy]
    (class weights, ``ignore_index``, label smoothing), $\zeta$ = ``z_loss`` on
    kept tokens, and $\operatorname{softcap}(u) = c\tanh(u/c)$ when
    ``logit_softcap`` is given.

    Gradient (computed chunk by chunk in the custom JVP rule): with
    $G_n = \partial\ell_n/\partial z_n = (S_n + 2\zeta\operatorname{lse}_n)\,p_n - a_n$,
    times $1 - \tanh^2$ under soft-capping, and the reduction's scale $s$
    ($1/\sum_n w_{y_n}$ for the mean),

    $$
    \frac{\partial L}{\partial x_n} = s\,G_n W^\top, \qquad
    \frac{\partial L}{\partial W} = s\sum_n x_n^\top G_n, \qquad
    \frac{\partial L}{\partial b} = s\sum_n G_n .
    $$

    For ``"mean"`` and ``"sum"`` these are formed while the logits are at hand, in one
    of two ways (``passes``):

    * 1: one pass over token chunks, three matmuls (as many as the unfused loss);
      $\partial L/\partial W$ is summed over the chunks in an ``H x V`` buffer of the
      accumulation dtype, which for float32 weights is the gradient itself.
    * 2: a pass over token chunks (loss, log-sum-exps, $\partial L/\partial x$), then
      a pass over vocabulary slices of ``vocab_chunk_size`` columns that recomputes
      each slice's logits and writes that slice of $\partial L/\partial W$ once. Four
      matmuls, and nothing of size ``H x V`` or ``N x V`` besides the gradient.

    By default two passes are taken when ``w`` is bfloat16 or float16 (one pass would
    need a float32 ``H x V`` buffer, twice the gradient) and, under sharding, when
    ``w``'s vocabulary axis is known to be whole on every device; otherwise one.
    For ``"none"`` each chunk's logits are recomputed in the backward pass. All of
    these work in forward and reverse mode, under ``jit`` and ``vmap``. bfloat16
    operands enter the matmuls with float32 accumulation; softmax statistics and the
    weight gradient accumulate in float32.

    Args:
        x: floating hidden states ``[..., H]``.
        w: floating projection ``[H, V]`` (a Dense kernel; for tied embeddings
            ``[V, H]`` pass ``emb.T``, which is free under ``jit``).
        targets: integer token ids of shape ``x.shape[:-1]``.
        bias: optional ``[V]`` bias.
        weight: optional ``[V]`` class weights.
        ignore_index: targets equal to it are skipped (static, a Python int compared
            as an integer: a value the targets' dtype cannot hold matches nothing).
        reduction: ``"mean"``, ``"sum"``, ``"none"`` or ``"sequence_mean"`` (static).
        label_smoothing: $\varepsilon \in [0, 1]$.
        z_loss: coefficient of the $\operatorname{lse}^2$ penalty (PaLM), default 0.
        logit_softcap: optional $c > 0$ for $c\tanh(z/c)$ (Gemma 2).
        chunk_size: tokens per chunk (static); by default the largest power of two
            whose float32 logits fit in 16 MiB.
        passes: 1 or 2, how the gradients of ``"mean"`` and ``"sum"`` are formed
            (static; see above); ``None`` chooses by ``w``'s dtype.
        vocab_chunk_size: vocabulary columns per step of the second pass (static); by
            default as many as fit a float32 slice of the weight gradient in 16 MiB or
            in 1/64 of the gradient's bytes, whichever is larger.
        token_weight: optional non-negative weights of the targets' shape (may be
            traced, no gradient); each element's loss is multiplied by its weight,
            and ``"mean"`` divides by $\sum_n t_n w_{y_n}$ over kept elements. An element
            of weight 0 adds nothing.
        segment_ids: optional integer ids of the targets' shape for packed sequences:
            the elements of a row (the targets' last axis) that share an id form one
            sequence; id 0 marks padding, ignored in every reduction.
        normalizer: optional positive scalar (may be traced, no gradient) that
            replaces the denominator of ``"mean"`` (the total weight) or of
            ``"sequence_mean"`` (the number of sequences), e.g. the whole step's count
            under gradient accumulation or data parallelism.
        return_aux: also return statistics for logging (static), computed in the
            same pass as the loss.

    Returns:
        A scalar, or per-token losses of shape ``x.shape[:-1]`` for
        ``reduction="none"``, in the promoted dtype of ``x`` and ``w``. With
        ``return_aux=True``, a pair ``(loss, aux)``: ``aux`` is a dict of
        ``"z_loss"`` (the term $\zeta\operatorname{lse}^2$), ``"log_partition"``
        ($\operatorname{lse}$ of the logits, capped if soft-capped) and
        ``"accuracy"`` (1 where the target's logit is the largest, a tie counting
        as correct), ``"target_log_prob"`` ($\log p_{y}$, without smoothing) and
        ``"entropy"`` ($-\sum_v p_v \log p_v$), each the mean over the tokens that
        add to the loss (those not ignored, less those of class weight 0 when
        neither smoothing nor the z-loss is on) or, for ``"none"``, per token with 0
        on the others;
        float32 (float64 for float64 inputs), nan wherever a target is out of range,
        and without gradient.

    A token that adds nothing (ignored, of class weight 0, of token weight 0 or in
    segment 0) passes no gradient to ``x``, ``w`` or ``bias``, even if its hidden
    state is ``nan`` or its logits overflow: its row never enters the matmuls.

    Gradients reach ``x``, ``w`` and ``bias``; ``weight``, ``label_smoothing``,
    ``z_loss`` and ``logit_softcap`` are treated as constants here (use
    ``cross_entropy`` to differentiate with respect to them).

    PyTorch: ``F.linear_cross_entropy`` (2.13) takes ``w`` as ``[V, H]`` and has no
    label smoothing or z-loss; Liger-Kernel's fused linear cross-entropy and Cut
    Cross-Entropy are the GPU counterparts.

    Examples:
        >>> import jax, jax.numpy as jnp
        >>> import jaxloss as jl
        >>> jnp.set_printoptions(precision=4)
        >>> x = jnp.array([[1.0, 0.5], [-0.5, 2.0], [0.3, 0.3]])
        >>> w = jnp.array([[1.0, -1.0, 0.5, 0.0], [0.5, 0.5, -1.0, 2.0]])
        >>> y = jnp.array([0, 3, -100])
        >>> jl.linear_cross_entropy(x, w, y)
        Array(0.4484, dtype=float32)
        >>> jl.cross_entropy(x @ w, y)
        Array(0.4484, dtype=float32)
        >>> jax.grad(jl.linear_cross_entropy)(x, w, y)
        Array([[-0.271 ,  0.1678],
               [-0.0229, -0.0782],
               [ 0.    ,  0.    ]], dtype=float32)
    """
    x = _checks.floating_input("x", x, min_ndim=1)
    w = _checks.floating_input("w", w)
    if w.ndim != 2 or w.shape[0] != x.shape[-1]:
        raise ValueError(
            f"w must have shape (H, V) with H = x.shape[-1] = {x.shape[-1]}, got {w.shape}"
            " (for a (V, H) embedding matrix pass emb.T)"
        )
    _checks.has_classes("w", w.shape, 1, "vocabulary entry")
    vocab = w.shape[1]
    targets = _checks.as_array("targets", targets)
    if not jnp.issubdtype(targets.dtype, jnp.integer):
        raise TypeError(f"targets must be integer token ids, got dtype {targets.dtype}")
    if targets.shape != x.shape[:-1]:
        raise ValueError(
            f"targets must have shape {x.shape[:-1]} (x's shape without the hidden axis), "
            f"got {targets.shape}"
        )
    if bias is not None:
        bias = _checks.floating_input("bias", bias)
        if bias.shape != (vocab,):
            raise ValueError(f"bias must have shape ({vocab},), got {bias.shape}")
    class_weight = _checks.class_weight(weight, vocab)
    label_smoothing, z_loss, logit_softcap, has_smoothing, has_z_loss = _checks.logit_options(
        label_smoothing, z_loss, logit_softcap
    )
    chunk_size = _checks.optional_positive_int("chunk_size", chunk_size)
    vocab_chunk_size = _checks.optional_positive_int("vocab_chunk_size", vocab_chunk_size)
    if passes not in (None, 1, 2) or isinstance(passes, bool):
        raise ValueError(f"passes must be 1, 2 or None (chosen by dtype), got {passes!r}")
    if not isinstance(return_aux, bool):
        raise TypeError(f"return_aux must be a bool, got {return_aux!r}")
    reduction = _checks.reduction(reduction, _checks.TOKEN_REDUCTIONS)
    weighting = _checks.token_weighting(
        token_weight, segment_ids, normalizer, reduction, targets.shape
    )
    codes = resolve_targets(targets, vocab, _checks.ignore_index(ignore_index))
    num_tokens = math.prod(x.shape[:-1])
    chunk = int(chunk_size or auto_chunk_size(num_tokens, vocab))
    options = Options(
        reduction=reduction,
        has_smoothing=has_smoothing,
        has_z_loss=has_z_loss,
        has_softcap=logit_softcap is not None,
        # Resolved here, outside jit, so that they key its cache.
        chunk_size=chunk,
        vocab_slice=vocab_slice_size(vocab, x.shape[-1]),
        passes=passes or auto_passes(x, w),
        vocab_chunk_size=int(
            vocab_chunk_size or auto_vocab_chunk_size(x.shape[-1], vocab, w.dtype.itemsize)
        ),
        return_aux=return_aux,
    )
    scalars = Scalars(class_weight, label_smoothing, z_loss, logit_softcap)
    return _linear_cross_entropy(x, w, codes, bias, options, scalars, weighting)
