"""``linear_cross_entropy``: cross-entropy of ``x @ w + b`` without the N x V logits.

Tokens are processed in chunks of ``chunk`` rows by a ``lax.scan``; one chunk's
logits (``chunk x V``, float32) are the largest temporary.

Two derivative strategies, both behind ``jax.custom_jvp`` (so forward mode works
as well as reverse mode):

* ``"mean"``/``"sum"`` give a scalar, whose gradient is the same for any
  upstream cotangent up to a scale. The JVP rule therefore computes the
  gradients ``dL/dx``, ``dL/dw``, ``dL/db`` inside the forward chunk loop, while
  each chunk's logits are at hand, and returns the tangent as their inner
  product with the input tangents. Reverse mode then needs no second pass over
  the vocabulary: three matmuls in all, as many as the unfused loss, and the
  only residuals are the gradients themselves.
* ``"none"`` gives one loss per token, so the gradient of ``w`` depends on a
  per-token cotangent that is unknown in the forward pass. Its chunk body is
  wrapped in ``jax.checkpoint``: reverse mode recomputes each chunk's logits
  (one matmul more) and never stores more than one chunk.
"""

from __future__ import annotations

import functools
import math
import numbers

import jax
import jax.numpy as jnp
from jax.typing import ArrayLike

from jaxloss import _checks
from jaxloss._reduce import compute_dtype, explicit_sharding, is_zero, safe_divide
from jaxloss._softmax import max_and_sum_exp
from jaxloss._xent import (
    IGNORED,
    Options,
    Scalars,
    contributing,
    index_coefficients,
    index_targets,
    logit_gradient,
    mean_denominator,
    resolve_targets,
    soft_cap,
    soft_cap_gradient,
    softmax_cross_entropy,
    target_weight,
    xent_terms,
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


def _chunk_loss_and_logit_grad(x_c, codes_c, w, bias, scalars: Scalars, options: Options):
    """Per-token losses of one chunk, d(their sum)/d(raw logits), and the chunk's hidden
    states with the rows of tokens that add nothing set to 0."""
    a, targets, counted = _chunk_coefficients(x_c, codes_c, w, scalars, options)
    # A token that adds nothing passes no gradient to x, w or bias, even if its hidden
    # state is nan: its row never enters the matmuls.
    x_c = jnp.where(counted[:, None], x_c, 0)
    logits, tanh = _chunk_logits(x_c, w, bias, scalars, options)
    m, s = max_and_sum_exp(logits, -1)
    loss, lse = xent_terms(logits, a, m, s)
    p = jnp.exp(logits - m) / s
    scale = jnp.sum(a, axis=-1, keepdims=True)
    if options.has_z_loss:
        loss = loss + z_loss_term(lse, scalars.z_loss, targets.keep)
        scale = scale + z_loss_logit_scale(lse, scalars.z_loss, targets.keep)[:, None]
    grad = logit_gradient(scale, p, a)
    if options.has_softcap:
        grad = soft_cap_gradient(grad, tanh)
    grad = jnp.where(counted[:, None], grad, 0.0)
    return loss, jnp.where(targets.bad[:, None], jnp.nan, grad), x_c


def _chunk_loss(x_c, codes_c, w, bias, scalars: Scalars, options: Options):
    a, targets, counted = _chunk_coefficients(x_c, codes_c, w, scalars, options)
    x_c = jnp.where(counted[:, None], x_c, 0)
    logits, _ = _chunk_logits(x_c, w, bias, scalars, options)
    loss, lse = softmax_cross_entropy(logits, a)
    if options.has_z_loss:
        loss = loss + z_loss_term(lse, scalars.z_loss, targets.keep)
    return loss


def _split(a, chunk):
    """``[n, ...]`` -> ``[n // chunk, chunk, ...]``.

    Chunks are contiguous rows, except for an array sharded in JAX's explicit mode:
    there chunk ``j`` holds rows ``j, j + n/chunk, ...``, so that each device's
    contiguous block of rows becomes a block of every chunk and no row moves
    between devices (a contiguous split would need an all-to-all, which explicit
    mode will not insert on its own).
    """
    count = a.shape[0] // chunk
    sharding = explicit_sharding(a)
    if sharding is None:
        return a.reshape(count, chunk, *a.shape[1:])
    spec = (*sharding.spec, *(None,) * (a.ndim - len(sharding.spec)))
    out = jax.sharding.NamedSharding(sharding.mesh, jax.P(spec[0], None, *spec[1:]))
    return jnp.moveaxis(jax.lax.reshape(a, (chunk, count, *a.shape[1:]), out_sharding=out), 1, 0)


def _merge(a, n):
    """Inverse of ``_split`` (dropping the padding): ``[count, chunk, ...]`` -> ``[n, ...]``."""
    sharding = explicit_sharding(a)
    if sharding is None:
        return a.reshape(-1, *a.shape[2:])[:n]
    merged = jnp.moveaxis(a, 0, 1)
    spec = (*sharding.spec, *(None,) * (a.ndim - len(sharding.spec)))
    out = jax.sharding.NamedSharding(sharding.mesh, jax.P(spec[1], *spec[2:]))
    shape = (merged.shape[0] * merged.shape[1], *merged.shape[2:])
    return jax.lax.reshape(merged, shape, out_sharding=out)[:n]


def _chunked(x, codes, options: Options):
    """Splits the tokens into chunks, padding the tail with ignored tokens."""
    n, chunk = x.shape[0], options.chunk_size
    padded = -(-n // chunk) * chunk
    if padded != n:
        x = jnp.pad(x, ((0, padded - n), (0, 0)))
        codes = jnp.pad(codes, (0, padded - n), constant_values=IGNORED)
    return _split(x, chunk), _split(codes, chunk)


@functools.partial(jax.custom_jvp, nondiff_argnums=(6,))
def _fused_sum(x, w, bias, codes, scalars, scale, options):
    """``scale * sum_n loss_n`` in one pass over the chunks, without gradients."""
    xs, ys = _chunked(x, codes, options)

    def body(total, chunk_in):
        return total + jnp.sum(_chunk_loss(*chunk_in, w, bias, scalars, options)), None

    total, _ = jax.lax.scan(body, jnp.zeros((), accumulation_dtype(x, w)), (xs, ys))
    return total * scale


def vocab_slice_size(vocab: int, hidden: int) -> int:
    """A divisor of ``vocab`` near ``CHUNK_BYTES / (4 hidden)``, else ``vocab`` (no slicing)."""
    target = max(1, CHUNK_BYTES // (4 * hidden))
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


def _fused_sum_and_grads(x, w, bias, codes, scalars, scale, options):
    """The scaled loss and its gradients for x, w and bias, in one pass over the chunks."""
    n, hidden = x.shape
    matmul_dtype = jnp.promote_types(x.dtype, w.dtype)
    acc = accumulation_dtype(x, w)
    xs, ys = _chunked(x, codes, options)

    def body(carry, chunk_in):
        total, dw, db = carry
        x_c, codes_c = chunk_in
        loss, g, x_c = _chunk_loss_and_logit_grad(x_c, codes_c, w, bias, scalars, options)
        g = g * scale
        g_mm = g.astype(matmul_dtype)
        # Both products contract a possibly sharded axis (V, or the tokens): under
        # explicit sharding they must name their output's sharding, that of x and w.
        # Contract w's vocabulary axis in place: ``g @ w.T`` would have XLA keep a
        # transposed copy of w (V x H) alive for the whole loop.
        dx_c = jax.lax.dot_general(
            g_mm,
            w,
            (((1,), (1,)), ((), ())),
            preferred_element_type=acc,
            out_sharding=explicit_sharding(x_c),
        )
        dw = _add_weight_grad(dw, x_c, g_mm, acc, options.vocab_slice)
        return (total + jnp.sum(loss), dw, db + jnp.sum(g, axis=0)), dx_c.astype(x.dtype)

    # zeros_like: the accumulators keep w's sharding under explicit sharding.
    init = (jnp.zeros((), acc), jnp.zeros_like(w, dtype=acc), jnp.zeros_like(w[0], dtype=acc))
    (total, dw, db), dxs = jax.lax.scan(body, init, (xs, ys))
    return total * scale, _merge(dxs, n), dw.astype(w.dtype), db


def _fused_sum_jvp(options, primals, tangents):
    # The gradients are formed in the forward chunk loop, while each chunk's logits
    # are at hand; the tangent is their inner product with the input tangents, which
    # JAX transposes for reverse mode without another pass over the vocabulary.
    x, w, bias, codes, scalars, scale = primals
    dx, dw, dbias = tangents[:3]
    loss, gx, gw, gb = _fused_sum_and_grads(x, w, bias, codes, scalars, scale, options)
    acc = accumulation_dtype(x, w)
    dloss = jnp.zeros((), acc)
    # Products in the inputs' dtype, sums in float32: transposed for reverse mode this is
    # one multiplication producing a gradient of the inputs' dtype, with no float32 copy.
    if not is_zero(dx):
        dloss = dloss + jnp.sum(gx * dx.astype(gx.dtype), dtype=acc)
    if not is_zero(dw):
        dloss = dloss + jnp.sum(gw * dw.astype(gw.dtype), dtype=acc)
    if bias is not None and not is_zero(dbias):
        dloss = dloss + jnp.sum(gb * dbias.astype(acc))
    return loss, dloss


_fused_sum.defjvp(_fused_sum_jvp, symbolic_zeros=True)


def _per_token_loss(x, w, bias, codes, scalars, options):
    """Per-token losses; each chunk is recomputed in the backward pass (``jax.checkpoint``)."""
    xs, ys = _chunked(x, codes, options)
    chunk_loss = jax.checkpoint(_chunk_loss, static_argnums=(5,))

    def body(_, chunk_in):
        return None, chunk_loss(*chunk_in, w, bias, scalars, options)

    _, losses = jax.lax.scan(body, None, (xs, ys))
    return _merge(losses, x.shape[0])


@functools.partial(jax.jit, static_argnums=(4,))
def _linear_cross_entropy(x, w, codes, bias, options: Options, scalars: Scalars):
    hidden = w.shape[0]
    acc = accumulation_dtype(x, w)
    # No gradient flows to the numeric options here (documented).
    scalars = jax.lax.stop_gradient(scalars.astype(acc))
    x2 = x.reshape(-1, hidden)
    flat = codes.reshape(-1)
    out_dtype = jnp.promote_types(x.dtype, w.dtype)
    if options.reduction == "none":
        out = _per_token_loss(x2, w, bias, flat, scalars, options).reshape(codes.shape)
        return out.astype(out_dtype)
    if options.reduction == "sum":
        scale = jnp.ones((), acc)
    else:
        targets = index_targets(flat)
        w_y = target_weight(scalars.class_weight, targets.class_index, acc)
        scale = safe_divide(jnp.ones((), acc), mean_denominator(targets, w_y))
    return _fused_sum(x2, w, bias, flat, scalars, scale, options).astype(out_dtype)


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
) -> jax.Array:
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

    For ``"mean"`` and ``"sum"`` these are formed in the forward chunk loop (three
    matmuls, like the unfused loss); for ``"none"`` each chunk's logits are
    recomputed in the backward pass. Both work in forward and reverse mode, under
    ``jit`` and ``vmap``. bfloat16 operands enter the matmuls with float32
    accumulation; softmax statistics and the weight gradient accumulate in float32.

    Args:
        x: floating hidden states ``[..., H]``.
        w: floating projection ``[H, V]`` (a Dense kernel; for tied embeddings
            ``[V, H]`` pass ``emb.T``, which is free under ``jit``).
        targets: integer token ids of shape ``x.shape[:-1]``.
        bias: optional ``[V]`` bias.
        weight: optional ``[V]`` class weights.
        ignore_index: targets equal to it are skipped (static, a Python int compared
            as an integer: a value the targets' dtype cannot hold matches nothing).
        reduction: ``"mean"``, ``"sum"`` or ``"none"`` (static).
        label_smoothing: $\varepsilon \in [0, 1]$.
        z_loss: coefficient of the $\operatorname{lse}^2$ penalty (PaLM), default 0.
        logit_softcap: optional $c > 0$ for $c\tanh(z/c)$ (Gemma 2).
        chunk_size: tokens per chunk (static); by default the largest power of two
            whose float32 logits fit in 16 MiB.

    Returns:
        A scalar, or per-token losses of shape ``x.shape[:-1]`` for
        ``reduction="none"``, in the promoted dtype of ``x`` and ``w``.

    A token that adds nothing (ignored, or of class weight 0) passes no gradient to
    ``x``, ``w`` or ``bias``, even if its hidden state is ``nan`` or its logits
    overflow: its row never enters the matmuls.

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
    if chunk_size is not None and (
        isinstance(chunk_size, bool)
        or not isinstance(chunk_size, numbers.Integral)
        or chunk_size < 1
    ):
        raise ValueError(f"chunk_size must be a positive int or None, got {chunk_size!r}")
    codes = resolve_targets(targets, vocab, _checks.ignore_index(ignore_index))
    options = Options(
        reduction=_checks.reduction(reduction),
        has_smoothing=has_smoothing,
        has_z_loss=has_z_loss,
        has_softcap=logit_softcap is not None,
        # Resolved here, outside jit, so that they key its cache.
        chunk_size=int(chunk_size or auto_chunk_size(math.prod(x.shape[:-1]), vocab)),
        vocab_slice=vocab_slice_size(vocab, x.shape[-1]),
    )
    scalars = Scalars(class_weight, label_smoothing, z_loss, logit_softcap)
    return _linear_cross_entropy(x, w, codes, bias, options, scalars)
