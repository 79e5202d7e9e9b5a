"""``linear_kl_div``: distillation of a language-model head without the N x V logits.

The distillation head of the fused engine (``jaxloss._fused``): from one chunk of the
student's raw logits ``x @ w`` and the teacher's (``teacher_x @ teacher_w``, or its
top-k log-probabilities) it forms ``T^2 KL(q || p)`` per token and its logit gradient
``T (p - q)``; for the engine's second pass, any vocabulary chunk of that gradient
from the two log-partitions. The teacher is a constant.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.typing import ArrayLike

from jaxloss import _checks
from jaxloss._fused import driver, engine
from jaxloss._fused.chunking import VocabChunk, spread_over_devices
from jaxloss._reduce import explicit_sharding, poison
from jaxloss._softmax import max_and_sum_exp
from jaxloss._targets import IGNORED, OUT_OF_RANGE
from jaxloss._xent import Fill


class TeacherRows(NamedTuple):
    """The teacher's per-token arrays: hidden states ``[n, H_t]`` (with a projection
    ``teacher_w``), or top-k ``ids`` and ``log_probs`` ``[n, k]`` (without)."""

    x: jax.Array | None
    ids: jax.Array | None
    log_probs: jax.Array | None


class _TeacherChunk(NamedTuple):
    """One chunk's teacher distribution ``q`` (at the temperature): dense ``[c, V]``, or
    over ``ids`` ``[c, k]``; with ``sum_v q_v log q_v`` per token, its log-partition,
    and which tokens name an id outside the vocabulary."""

    q: jax.Array
    neg_entropy: jax.Array
    lse: jax.Array
    ids: jax.Array | None
    bad: jax.Array


def _plogq(q, log_q):
    return jnp.sum(jnp.where(q > 0, q * log_q, 0.0), axis=-1)


def _teacher_logits(rows: TeacherRows, teacher_w, keep, inv_t, acc):
    """The teacher's scaled logits ``u / T`` of the columns of ``teacher_w`` given, or
    (top-k) of its ids; with the ids clipped into the vocabulary."""
    if teacher_w is not None:
        assert rows.x is not None
        t_x = jnp.where(keep[:, None], rows.x, 0)
        return jnp.matmul(t_x, teacher_w, preferred_element_type=acc) * inv_t, None
    assert rows.ids is not None and rows.log_probs is not None
    return rows.log_probs.astype(acc) * inv_t, rows.ids


def _names_outside(ids, vocab: int):
    """Per token: whether a top-k teacher names an id outside ``[0, V)``."""
    return jnp.any((ids < 0) | (ids >= vocab), axis=-1)


def _teacher_chunk(rows: TeacherRows, teacher_w, keep, vocab: int, inv_t, acc) -> _TeacherChunk:
    """The teacher of one chunk; ``vocab`` is the number of classes in use (the columns
    of a dense teacher past them are padding)."""
    u, ids = _teacher_logits(rows, teacher_w, keep, inv_t, acc)
    if ids is None and vocab < u.shape[1]:
        u = engine.mask_padding(u, jnp.arange(u.shape[1], dtype=jnp.int32), vocab)
    bad = jnp.zeros(keep.shape, bool)
    if ids is not None:
        bad = _names_outside(ids, vocab)
        ids = jnp.clip(ids, 0, vocab - 1)
    m, s = max_and_sum_exp(u, -1)
    log_q = (u - m) - jnp.log(s)
    q = jnp.exp(log_q)
    return _TeacherChunk(q, _plogq(q, log_q), m[:, 0] + jnp.log(s[:, 0]), ids, bad & keep)


def _scatter_rows(like, index, values, mode=None) -> jax.Array:
    """``zeros_like(like)`` with ``values[n, k]`` added at ``[n, index[n, k]]`` (under
    explicit sharding, sharded as ``like``).

    Where the rows may be split over devices, as each column compared with the ``k``
    indices of its row: the partitioner would gather a scatter's indices and values to
    every device (in each vocabulary chunk of the second pass), and the comparison stays
    on each device's rows and columns. An index outside the columns adds nothing."""
    sharding = explicit_sharding(like)
    if spread_over_devices(like):
        hits = index[:, :, None] == jnp.arange(like.shape[1], dtype=index.dtype)
        dense = jnp.sum(jnp.where(hits, values[:, :, None], 0.0), axis=1).astype(like.dtype)
        return dense if sharding is None else jax.sharding.reshard(dense, sharding)
    rows = jnp.arange(like.shape[0], dtype=jnp.int32)[:, None]
    where = {} if sharding is None else {"out_sharding": sharding}
    return jnp.zeros_like(like).at[rows, index].add(values, mode=mode, **where)


def _dense_q(teacher: _TeacherChunk, z) -> jax.Array:
    """The teacher's distribution over the columns of the logits ``z``."""
    if teacher.ids is None:
        return teacher.q
    return _scatter_rows(z, teacher.ids, teacher.q)


def _pick_columns(z, ids, out_sharding):
    """``z[n, ids[n, k]]``. Along the rows' axis under automatic sharding, where the
    partitioner would gather the (row, id) pairs of an indexing to every device; under
    explicit sharding, which gives no take along an axis an output sharding, by pairs."""
    if out_sharding is None:
        return jnp.take_along_axis(z, ids, axis=1)
    rows = jnp.arange(z.shape[0], dtype=jnp.int32)[:, None]
    return z.at[rows, ids].get(out_sharding=out_sharding)


def _kl_terms(z, teacher: _TeacherChunk, keep, inv_t):
    """``T^2 KL(q || softmax(z / T))`` per token from the raw logits ``z``, and the pieces
    of its gradient: the shifted scaled logits and the log-partition ``m + log s``."""
    scaled = z * inv_t
    m, s = max_and_sum_exp(scaled, -1)
    log_s = jnp.log(s[:, 0])
    shifted = scaled - m
    if teacher.ids is None:
        cross = jnp.sum(jnp.where(teacher.q > 0, teacher.q * shifted, 0.0), axis=-1)
    else:
        picked = _pick_columns(shifted, teacher.ids, explicit_sharding(teacher.q))
        cross = jnp.sum(jnp.where(teacher.q > 0, teacher.q * picked, 0.0), axis=-1)
    # sum_v q_v (log q_v - log p_v), log p_v = (z_v / T - m) - log s, and sum_v q_v = 1.
    kl = (teacher.neg_entropy - cross + log_s) / jnp.square(inv_t)
    kl = jnp.where(keep, kl, 0.0)
    return jnp.where(teacher.bad, jnp.nan, kl), shifted - log_s[:, None], m[:, 0] + log_s


def _kl_logit_grad(p, q, teacher_bad, keep, inv_t):
    """``d(T^2 KL)/dz = T (p - q)``, 0 on tokens that are not kept, nan on bad ones
    (``keep`` and ``teacher_bad`` broadcast along the classes)."""
    g = jnp.where(keep, (p - q) / inv_t, 0.0)
    return jnp.where(teacher_bad, jnp.nan, g)


@jax.custom_jvp
def _kl_of_logits(z, teacher: _TeacherChunk, keep, inv_t):
    return _kl_terms(z, teacher, keep, inv_t)[0]


@_kl_of_logits.defjvp
def _kl_of_logits_jvp(primals, tangents):
    z, teacher, keep, inv_t = primals
    kl, log_p, _ = _kl_terms(z, teacher, keep, inv_t)
    g = _kl_logit_grad(
        jnp.exp(log_p), _dense_q(teacher, z), teacher.bad[:, None], keep[:, None], inv_t
    )
    dz = jnp.where(keep[:, None], tangents[0], 0.0)
    return kl, jnp.sum(g * dz, axis=-1)


class Teacher(NamedTuple):
    """The distillation head's constant inputs: the teacher's projection (or None for a
    top-k teacher) and ``1 / T``."""

    w: jax.Array | None
    inv_t: jax.Array


@dataclasses.dataclass(frozen=True)
class DistillationHead:
    """``T^2 KL(q || softmax(z / T))`` (``engine.Head``). Tokens: ``(keep, TeacherRows)``;
    params: a ``Teacher``. Saved per token for the second pass: the student's and the
    teacher's log-partitions (of the scaled logits)."""

    vocab: int  # the classes in use: w's columns past them are padding
    padded: int  # w's columns

    @property
    def saved_width(self) -> int:
        return 2

    @property
    def stats_width(self) -> int:
        return 0

    def counted(self, tokens, teacher: Teacher):
        return tokens[0]

    def _masked(self, z, ids):
        """Logits of the columns ``ids`` (student's or dense teacher's), padding at -inf."""
        if self.vocab < self.padded:
            return engine.mask_padding(z, ids, self.vocab)
        return z

    def _teacher(self, tokens, teacher: Teacher, acc) -> _TeacherChunk:
        keep, rows = tokens
        return _teacher_chunk(rows, teacher.w, keep, self.vocab, teacher.inv_t, acc)

    def loss(self, z, tokens, teacher: Teacher):
        chunk = jax.lax.stop_gradient(self._teacher(tokens, teacher, z.dtype))
        z = self._masked(z, jnp.arange(self.padded, dtype=jnp.int32))
        kl = _kl_of_logits(z, chunk, tokens[0], teacher.inv_t)
        return kl, jnp.zeros((z.shape[0], 0), z.dtype)

    def loss_and_grad(
        self, z, tokens, teacher: Teacher, fill: Fill, by_slices: bool = False
    ) -> engine.HeadTerms:
        keep = tokens[0]
        chunk = self._teacher(tokens, teacher, z.dtype)
        z = self._masked(z, jnp.arange(self.padded, dtype=jnp.int32))
        kl, log_p, lse = _kl_terms(z, chunk, keep, teacher.inv_t)
        q = _dense_q(chunk, z)
        grad = _kl_logit_grad(jnp.exp(log_p), q, chunk.bad[:, None], keep[:, None], teacher.inv_t)
        saved = jnp.stack([lse, chunk.lse], axis=-1)
        return engine.HeadTerms(kl, grad, saved, jnp.zeros((z.shape[0], 0), z.dtype))

    def grad_by_slices(self, teacher: Teacher) -> bool:
        return teacher.w is None  # a dense teacher's logits would be formed again

    def vocab_chunk_grad(self, z_t, tokens, saved, teacher: Teacher, chunk: VocabChunk, fill: Fill):
        keep, rows = tokens
        acc, inv_t = z_t.dtype, teacher.inv_t
        columns = chunk.ids()
        p = jnp.exp(self._masked(z_t, columns[:, None]) * inv_t - saved[None, :, 0])
        teacher_w = None if teacher.w is None else chunk.take(chunk.layout.view(teacher.w))
        u, ids = _teacher_logits(rows, teacher_w, keep, inv_t, acc)
        if ids is None:
            u = self._masked(u, columns[None, :])
        q = jnp.exp(u - saved[:, 1:])
        bad = jnp.zeros(keep.shape, bool)
        if ids is not None:
            bad = keep & _names_outside(ids, self.vocab)
            index, inside = chunk.position(ids)
            q = _scatter_rows(z_t.T, index, jnp.where(inside, q, 0.0), mode="drop")
        return _kl_logit_grad(p, q.T, bad[None, :], keep[None, :], inv_t)


def _checked_teacher(
    teacher_x, teacher_w, teacher_topk, token_shape: tuple[int, ...], vocab: int
) -> tuple[TeacherRows, jax.Array | None]:
    """The teacher's per-token rows and its projection (None for a top-k teacher),
    checked against the student's tokens and vocabulary."""
    dense = teacher_x is not None or teacher_w is not None
    if dense == (teacher_topk is not None):
        raise ValueError(
            "give the teacher either as teacher_x and teacher_w or as teacher_topk=(ids, "
            "log_probs), not both or neither"
        )
    projection = None
    if dense:
        if teacher_x is None or teacher_w is None:
            raise ValueError("teacher_x and teacher_w must be given together")
        teacher_x = _checks.floating_input("teacher_x", teacher_x, min_ndim=1)
        projection = _checks.floating_input("teacher_w", teacher_w)
        if teacher_x.shape[:-1] != token_shape:
            raise ValueError(
                f"teacher_x must have shape {token_shape} + (H_teacher,) (x's tokens), "
                f"got {teacher_x.shape}"
            )
        if projection.shape != (teacher_x.shape[-1], vocab):
            raise ValueError(
                f"teacher_w must have shape ({teacher_x.shape[-1]}, {vocab}) "
                f"(teacher_x's hidden size, w's vocabulary), got {projection.shape}"
            )
        rows = TeacherRows(teacher_x, None, None)
    else:
        if not isinstance(teacher_topk, (tuple, list)) or len(teacher_topk) != 2:
            raise TypeError(f"teacher_topk must be a pair (ids, log_probs), got {teacher_topk!r}")
        ids = _checks.as_array("teacher_topk ids", teacher_topk[0])
        log_probs = _checks.floating_input("teacher_topk log_probs", teacher_topk[1], min_ndim=1)
        if not jnp.issubdtype(ids.dtype, jnp.integer):
            raise TypeError(f"teacher_topk ids must be integers, got dtype {ids.dtype}")
        if ids.shape != log_probs.shape or ids.shape[:-1] != token_shape or ids.shape[-1] < 1:
            raise ValueError(
                f"teacher_topk ids and log_probs must both have shape {token_shape} + (k,) "
                f"with k >= 1, got {ids.shape} and {log_probs.shape}"
            )
        rows = TeacherRows(None, ids, log_probs)
    return rows, projection


@functools.partial(jax.jit, static_argnums=(5,))
def _linear_kl_div(
    x, w, rows: TeacherRows, teacher_w, codes, plan: driver.Plan, temperature, weighting
):
    acc = engine.accumulation_dtype(x, w)
    inv_t = jax.lax.stop_gradient(1.0 / jnp.asarray(temperature, acc))
    rows, teacher_w = jax.lax.stop_gradient((rows, teacher_w))
    head = DistillationHead(plan.vocab_size, w.shape[1])

    def head_tokens(x2, codes, rows):
        keep = codes != IGNORED
        x2 = poison(x2, codes == OUT_OF_RANGE)  # nan value and gradient
        return driver.HeadTokens(x2, (keep, rows), keep.astype(acc))

    if teacher_w is not None:  # gathered once, as the student's w is
        teacher_w, _ = engine.whole_hidden(teacher_w, spread_over_devices(x))
    teacher = Teacher(teacher_w, inv_t)
    return driver.fused_loss(
        head, x, w, None, codes, rows, teacher, weighting, plan, head_tokens
    ).loss


def linear_kl_div(
    x: ArrayLike,
    w: ArrayLike,
    teacher_x: ArrayLike | None = None,
    teacher_w: ArrayLike | None = None,
    *,
    teacher_topk: tuple[ArrayLike, ArrayLike] | None = None,
    temperature: ArrayLike = 1.0,
    targets: ArrayLike | None = None,
    ignore_index: int = -100,
    reduction: str = "mean",
    token_weight: ArrayLike | None = None,
    segment_ids: ArrayLike | None = None,
    normalizer: ArrayLike | None = None,
    chunk_size: int | None = None,
    passes: int | None = None,
    vocab_chunk_size: int | None = None,
    vocab_size: int | None = None,
) -> jax.Array:
    r"""Distillation loss of a language-model head, fused: the KL divergence from the
    teacher's next-token distribution to the student's, without either head's logits.

    With the student's logits $z_n = x_n W$, the teacher's $u_n = x^t_n W^t$ and the
    temperature $T$, each kept token's loss is

    $$
    \ell_n = T^2\,\mathrm{KL}\big(q_n \,\|\, p_n\big)
           = T^2 \sum_v q_{n,v}\,(\log q_{n,v} - \log p_{n,v}),
    \qquad p_n = \operatorname{softmax}(z_n / T),\quad q_n = \operatorname{softmax}(u_n / T),
    $$

    (Hinton et al.'s $T^2$ keeps the gradient's size independent of $T$). With
    ``teacher_topk=(ids, log_probs)`` the teacher is given by its top-$k$ entries
    instead: $q_n$ is $\operatorname{softmax}(\text{log\_probs}_n / T)$ over those
    $k$ ids (the teacher truncated to its top $k$ and renormalized) and 0 elsewhere,
    while $p_n$ stays the student's distribution over the whole vocabulary, so the
    loss is the exact KL divergence of that truncated teacher from the student and is
    0 only when the student puts all its mass on the $k$ ids in the teacher's
    proportions.

    Gradient (the custom JVP rule; the teacher is a constant):

    $$
    \frac{\partial \ell_n}{\partial z_n} = T\,(p_n - q_n), \qquad
    \frac{\partial L}{\partial x_n} = c_n\,T\,(p_n - q_n) W^\top, \qquad
    \frac{\partial L}{\partial W} = \sum_n c_n\, x_n^\top\, T\,(p_n - q_n),
    $$

    with $c_n$ the reduction's factor of token $n$ (as in
    [`linear_cross_entropy`][jaxloss.linear_cross_entropy]). For ``"mean"``, ``"sum"``
    and ``"sequence_mean"`` these are formed chunk by chunk while the logits are at
    hand. With one pass over the tokens that is four matmuls per chunk (three with
    ``teacher_topk``): the student's logits, the teacher's, and two for the
    gradients, the weight gradient summed over the chunks in an ``H x V`` buffer of
    the accumulation dtype. With two passes (the default where
    ``linear_cross_entropy`` takes them) the second pass walks the vocabulary in
    chunks and computes both heads' logits of each chunk again: six matmuls (four
    with ``teacher_topk``), and no ``H x V`` buffer. Neither head's ``N x V``
    logits exist; a chunk holds ``chunk_size x V`` of each. For ``"none"`` the
    weight gradient is formed in a scan over the vocabulary, as in
    ``linear_cross_entropy``.

    Args:
        x: the student's floating hidden states ``[..., H]``.
        w: the student's projection ``[H, V]``.
        teacher_x: the teacher's hidden states ``[..., H_t]`` (same leading shape as
            ``x``), with ``teacher_w``; or None with ``teacher_topk``.
        teacher_w: the teacher's projection ``[H_t, V]``.
        teacher_topk: ``(ids, log_probs)``, integer vocabulary ids and floating
            log-probabilities of shape ``x.shape[:-1] + (k,)``, in place of
            ``teacher_x`` and ``teacher_w``. Ids must be distinct within a token;
            a ``-inf`` log-probability gives its id no mass; a token with an id outside
            ``[0, V)`` has a nan loss (and gradient).
        temperature: $T > 0$ (may be traced; no gradient).
        targets: optional integer token ids of shape ``x.shape[:-1]``, used only to
            mark ignored tokens (those equal to ``ignore_index``); a token id outside
            ``[0, vocab_size)`` makes its token's loss and gradient nan, as in
            ``linear_cross_entropy``.
        ignore_index: see ``targets`` (static).
        reduction: ``"mean"`` (over kept tokens), ``"sum"``, ``"sequence_mean"`` or
            ``"none"`` (static).
        token_weight: optional non-negative weights of shape ``x.shape[:-1]`` (as in
            [`linear_cross_entropy`][jaxloss.linear_cross_entropy]).
        segment_ids: optional packed-sequence ids of shape ``x.shape[:-1]``, 0 for
            padding (as in ``linear_cross_entropy``).
        normalizer: optional denominator of ``"mean"``/``"sequence_mean"`` (as in
            ``linear_cross_entropy``).
        chunk_size: tokens per chunk (static); by default the largest power of two
            whose float32 logits fit in 16 MiB (at least 8), but no more than the
            number of tokens rounded up to a power of two; where the tokens may be
            split over devices, rounded up to a multiple of their number (under
            explicit sharding, of the devices that split the tokens).
        passes: 1 or 2 (static), as in ``linear_cross_entropy``: two passes keep no
            ``H x V`` buffer and, on several devices, reduce the weight gradient once
            per step; ``None`` chooses as ``linear_cross_entropy`` does.
        vocab_chunk_size: vocabulary columns per step of the second pass (static).
        vocab_size: the number of vocabulary entries in use (static), for ``w`` and
            ``teacher_w`` padded past them: those columns get probability 0 in both
            heads and zero gradient, and a top-k id there is outside the vocabulary.
            None (the default): every column.

    Returns:
        A scalar, or per-token losses of shape ``x.shape[:-1]`` for ``"none"`` (0 on
        tokens that are not kept), in the promoted dtype of ``x`` and ``w``. 16-bit
        inputs are accumulated in float32.

    Examples:
        >>> import jax, jax.numpy as jnp
        >>> import jaxloss as jl
        >>> jnp.set_printoptions(precision=4)
        >>> x = jnp.array([[1.0, 0.5], [-0.5, 2.0]])
        >>> w = jnp.array([[1.0, -1.0, 0.5], [0.5, 0.5, -1.0]])
        >>> teacher_x = jnp.array([[0.5, 1.0, 0.0], [1.0, 0.0, 1.0]])
        >>> teacher_w = jnp.eye(3)
        >>> jl.linear_kl_div(x, w, teacher_x, teacher_w, temperature=2.0)
        Array(1.0912, dtype=float32)
        >>> p = jl.log_softmax(x @ w / 2.0)
        >>> q = jl.softmax(teacher_x @ teacher_w / 2.0)
        >>> 2.0**2 * jl.kl_div(p, q, reduction="batchmean")  # the same, unfused
        Array(1.0912, dtype=float32)
        >>> jax.grad(jl.linear_kl_div)(x, w, teacher_x, teacher_w)  # mean of (p - q) w.T
        Array([[ 0.4075, -0.0114],
               [-0.462 ,  0.3041]], dtype=float32)
    """
    x, w = driver.check_head(x, w)
    vocab = w.shape[1]
    weighting, plan = driver.check_token_options(
        x,
        w,
        reduction=reduction,
        token_weight=token_weight,
        segment_ids=segment_ids,
        normalizer=normalizer,
        chunk_size=chunk_size,
        passes=passes,
        vocab_chunk_size=vocab_chunk_size,
        vocab_size=vocab_size,
    )
    token_shape = x.shape[:-1]
    rows, projection = _checked_teacher(teacher_x, teacher_w, teacher_topk, token_shape, vocab)
    temperature = _checks.real_scalar("temperature", temperature, minimum=0.0, strict=True)
    ignore_index = _checks.ignore_index(ignore_index)
    if targets is None:
        codes = jnp.zeros(token_shape, jnp.int32)
    else:
        codes = driver.token_codes(targets, x, plan.vocab_size, ignore_index)
    return _linear_kl_div(x, w, rows, projection, codes, plan, temperature, weighting)


# --- linear_jsd ------------------------------------------------------------------------


def _log_softmax_and_lse(s):
    m, total = max_and_sum_exp(s, -1)
    lse = m + jnp.log(total)
    return s - lse, lse[:, 0]


def _where_mass(p, value):
    """``p * value``, and 0 where ``p`` is 0 (``0 log 0 = 0``, and no nan gradient); a nan
    ``p`` stays nan."""
    return jnp.where(p == 0, 0.0, p * jnp.where(p == 0, 0.0, value))


def _log_mixture(log_p, log_q, beta: float):
    """``log(beta p + (1 - beta) q)``, -inf where both are 0, with a gradient that is
    finite there (``logaddexp(-inf, -inf)``'s is not)."""
    empty = (log_p == -jnp.inf) & (log_q == -jnp.inf)
    a = jnp.where(empty, 0.0, math.log(beta) + log_p)
    b = jnp.where(empty, 0.0, math.log1p(-beta) + log_q)
    return jnp.where(empty, -jnp.inf, jnp.logaddexp(a, b))


def _jsd_rows(log_q, log_p, beta: float):
    """Per token (rows of log-probabilities, classes last): the generalized JSD of the
    student ``q`` and the teacher ``p``, and ``r``, what its gradient subtracts
    (``KL(q || m)``, or ``KL(q || p)`` for ``beta = 1``)."""
    q, p = jnp.exp(log_q), jnp.exp(log_p)
    if beta == 0.0:  # KL(p || q)
        loss = jnp.sum(_where_mass(p, log_p - log_q), axis=-1)
        return loss, jnp.zeros_like(loss)
    if beta == 1.0:  # KL(q || p)
        loss = jnp.sum(_where_mass(q, log_q - log_p), axis=-1)
        return loss, loss
    log_m = _log_mixture(log_p, log_q, beta)
    kl_pm = jnp.sum(_where_mass(p, log_p - log_m), axis=-1)
    kl_qm = jnp.sum(_where_mass(q, log_q - log_m), axis=-1)
    return beta * kl_pm + (1.0 - beta) * kl_qm, kl_qm


def _jsd_grad(log_q, log_p, r, beta: float):
    """The gradient of the per-token JSD in the scaled student logits ``s`` (``q =
    softmax(s)``), from the log-probabilities of any columns and the row's ``r``."""
    q = jnp.exp(log_q)
    if beta == 0.0:
        return q - jnp.exp(log_p)
    if beta == 1.0:
        return _where_mass(q, log_q - log_p - r)
    log_m = _log_mixture(log_p, log_q, beta)
    return (1.0 - beta) * _where_mass(q, log_q - log_m - r)


@functools.partial(jax.custom_jvp, nondiff_argnums=(0,))
def _jsd_of_logits(beta: float, z, log_p, keep, inv_t):
    log_q, _ = _log_softmax_and_lse(z * jax.lax.stop_gradient(inv_t))
    return jnp.where(keep, _jsd_rows(log_q, log_p, beta)[0], 0.0)


@_jsd_of_logits.defjvp
def _jsd_of_logits_jvp(beta, primals, tangents):
    z, log_p, keep, inv_t = primals
    log_q, _ = _log_softmax_and_lse(z * jax.lax.stop_gradient(inv_t))
    loss, r = _jsd_rows(log_q, log_p, beta)
    g = jnp.where(keep[:, None], _jsd_grad(log_q, log_p, r[:, None], beta) * inv_t, 0.0)
    dz = jnp.where(keep[:, None], tangents[0], 0.0)
    return jnp.where(keep, loss, 0.0), jnp.sum(g * dz, axis=-1)


@dataclasses.dataclass(frozen=True)
class JSDHead:
    """The generalized JSD of ``softmax(z / T)`` and the teacher's ``softmax(u / T)``
    (``engine.Head``). Tokens: ``(keep, TeacherRows)`` (a dense teacher); params: a
    ``Teacher``. Saved per token: both log-partitions (of the scaled logits) and ``r``."""

    vocab: int
    padded: int
    beta: float

    @property
    def saved_width(self) -> int:
        return 3

    @property
    def stats_width(self) -> int:
        return 0

    def counted(self, tokens, teacher: Teacher):
        return tokens[0]

    def _scaled(self, z, ids, inv_t):
        if self.vocab < self.padded:
            z = engine.mask_padding(z, ids, self.vocab)
        # 1 / T's tangent is a symbolic zero here, not a zero that times -inf is nan.
        return z * jax.lax.stop_gradient(inv_t)

    def _teacher(self, tokens, teacher: Teacher, acc):
        keep, rows = tokens
        u, _ = _teacher_logits(rows, teacher.w, keep, teacher.inv_t, acc)
        ids = jnp.arange(self.padded, dtype=jnp.int32)
        return _log_softmax_and_lse(self._scaled(u, ids, 1.0))

    def loss(self, z, tokens, teacher: Teacher):
        log_p = jax.lax.stop_gradient(self._teacher(tokens, teacher, z.dtype)[0])
        z = self._scaled(z, jnp.arange(self.padded, dtype=jnp.int32), 1.0)
        loss = _jsd_of_logits(self.beta, z, log_p, tokens[0], teacher.inv_t)
        return loss, jnp.zeros((z.shape[0], 0), z.dtype)

    def loss_and_grad(
        self, z, tokens, teacher: Teacher, fill: Fill, by_slices: bool = False
    ) -> engine.HeadTerms:
        keep = tokens[0][:, None]
        log_p, teacher_lse = self._teacher(tokens, teacher, z.dtype)
        s = self._scaled(z, jnp.arange(self.padded, dtype=jnp.int32), teacher.inv_t)
        log_q, lse = _log_softmax_and_lse(s)
        loss, r = _jsd_rows(log_q, log_p, self.beta)
        grad = jnp.where(keep, _jsd_grad(log_q, log_p, r[:, None], self.beta) * teacher.inv_t, 0.0)
        saved = jnp.stack([lse, teacher_lse, r], axis=-1)
        loss = jnp.where(keep[:, 0], loss, 0.0)
        return engine.HeadTerms(loss, grad, saved, jnp.zeros((z.shape[0], 0), z.dtype))

    def grad_by_slices(self, teacher: Teacher) -> bool:
        return False  # the teacher's logits would be formed again

    def vocab_chunk_grad(self, z_t, tokens, saved, teacher: Teacher, chunk: VocabChunk, fill: Fill):
        keep, rows = tokens
        columns = chunk.ids()[:, None]
        log_q = self._scaled(z_t, columns, teacher.inv_t) - saved[None, :, 0]
        teacher_w = chunk.take(chunk.layout.view(teacher.w))
        u, _ = _teacher_logits(rows, teacher_w, keep, teacher.inv_t, z_t.dtype)
        log_p = self._scaled(u.T, columns, 1.0) - saved[None, :, 1]
        grad = _jsd_grad(log_q, log_p, saved[None, :, 2], self.beta) * teacher.inv_t
        return jnp.where(keep[None, :], grad, 0.0)


@functools.partial(jax.jit, static_argnums=(5, 6))
def _linear_jsd(x, w, teacher_x, teacher_w, codes, plan: driver.Plan, beta, temperature, weighting):
    acc = engine.accumulation_dtype(x, w)
    inv_t = jax.lax.stop_gradient(1.0 / jnp.asarray(temperature, acc))
    rows, teacher_w = jax.lax.stop_gradient((TeacherRows(teacher_x, None, None), teacher_w))
    head = JSDHead(plan.vocab_size, w.shape[1], beta)

    def head_tokens(x2, codes, rows):
        keep = codes != IGNORED
        x2 = poison(x2, codes == OUT_OF_RANGE)  # nan value and gradient
        return driver.HeadTokens(x2, (keep, rows), keep.astype(acc))

    teacher_w, _ = engine.whole_hidden(teacher_w, spread_over_devices(x))
    teacher = Teacher(teacher_w, inv_t)
    return driver.fused_loss(
        head, x, w, None, codes, rows, teacher, weighting, plan, head_tokens
    ).loss


def _static_beta(beta) -> float:
    """``beta`` as a Python float in ``[0, 1]`` (it selects the formula, so it is static)."""
    if isinstance(beta, jax.core.Tracer):
        raise TypeError("beta must be a concrete number in [0, 1] (static), not a traced value")
    if isinstance(beta, (bool, np.bool_)) or not isinstance(beta, (int, float, np.number)):
        if not (isinstance(beta, (np.ndarray, jax.Array)) and np.ndim(beta) == 0):
            raise TypeError(f"beta must be a real number in [0, 1], got {beta!r}")
    value = float(beta)
    if not 0.0 <= value <= 1.0:
        raise ValueError(f"beta must be in [0, 1], got {value}")
    return value


def linear_jsd(
    x: ArrayLike,
    w: ArrayLike,
    teacher_x: ArrayLike,
    teacher_w: ArrayLike,
    *,
    beta: float = 0.5,
    temperature: ArrayLike = 1.0,
    targets: ArrayLike | None = None,
    ignore_index: int = -100,
    reduction: str = "mean",
    token_weight: ArrayLike | None = None,
    segment_ids: ArrayLike | None = None,
    normalizer: ArrayLike | None = None,
    chunk_size: int | None = None,
    passes: int | None = None,
    vocab_chunk_size: int | None = None,
    vocab_size: int | None = None,
) -> jax.Array:
    r"""Distillation by the generalized Jensen-Shannon divergence of a language-model
    head, fused: between the teacher's and the student's next-token distributions,
    without either head's logits.

    With the teacher's $P_n = \operatorname{softmax}(x^t_n W^t / T)$ and the student's
    $Q_n = \operatorname{softmax}(x_n W / T)$, each kept token's loss is

    $$
    \ell_n = \begin{cases}
    \mathrm{KL}(P_n \,\|\, Q_n) & \beta = 0 \text{ (forward)},\\
    \mathrm{KL}(Q_n \,\|\, P_n) & \beta = 1 \text{ (reverse)},\\
    \beta\,\mathrm{KL}(P_n \,\|\, M_n) + (1 - \beta)\,\mathrm{KL}(Q_n \,\|\, M_n),
    \quad M_n = \beta P_n + (1 - \beta) Q_n & \text{otherwise},
    \end{cases}
    $$

    Liger-Kernel's convention (its ``LigerFusedLinearJSD``): the endpoints are special
    cases, not limits (the middle formula tends to 0 as $\beta \to 0$ or $1$), and
    $\beta = 0.5$ is the symmetric Jensen-Shannon divergence. Unlike
    [`linear_kl_div`][jaxloss.linear_kl_div], whose loss is $T^2\,\mathrm{KL}$, the
    loss is not multiplied by $T^2$: ``linear_jsd(beta=0, temperature=T)`` is
    ``linear_kl_div(temperature=T) / T**2``.

    Gradient (the custom JVP rule; the teacher is a constant): in the scaled logits
    $s_n = x_n W / T$, with $r_n$ the row's $\mathrm{KL}(Q_n \| M_n)$
    ($\mathrm{KL}(Q_n \| P_n)$ for $\beta = 1$),

    $$
    \frac{\partial \ell_n}{\partial s_n} = \begin{cases}
    Q_n - P_n & \beta = 0,\\
    Q_n \odot (\log Q_n - \log P_n - r_n) & \beta = 1,\\
    (1 - \beta)\, Q_n \odot (\log Q_n - \log M_n - r_n) & \text{otherwise},
    \end{cases}
    $$

    divided by $T$ for the logits, then $\partial L / \partial x_n$ and
    $\partial L / \partial W$ as in ``linear_kl_div``, formed chunk by chunk in one or
    two passes (four or six matmuls per chunk: the teacher's logits are recomputed
    with the student's). ``"none"`` forms the weight gradient in a scan over the vocabulary.

    Args:
        x: the student's floating hidden states ``[..., H]``.
        w: the student's projection ``[H, V]`` (Liger-Kernel's and PyTorch's
            ``[V, H]`` weight transposed).
        teacher_x: the teacher's hidden states ``[..., H_t]`` (``x``'s tokens).
        teacher_w: the teacher's projection ``[H_t, V]``.
        beta: $\beta \in [0, 1]$, a Python number (static: it selects the formula).
        temperature: $T > 0$ (may be traced; no gradient).
        targets: optional integer token ids of shape ``x.shape[:-1]``, used only to
            mark ignored tokens (as in ``linear_kl_div``).
        ignore_index: see ``targets`` (static).
        reduction: ``"mean"`` (over kept tokens), ``"sum"``, ``"sequence_mean"`` or
            ``"none"`` (static).
        token_weight: optional non-negative weights of shape ``x.shape[:-1]``.
        segment_ids: optional packed-sequence ids of shape ``x.shape[:-1]``, 0 for
            padding.
        normalizer: optional denominator of ``"mean"``/``"sequence_mean"``.
        chunk_size: tokens per chunk (static), as in ``linear_kl_div``.
        passes: 1 or 2 (static), as in ``linear_kl_div``.
        vocab_chunk_size: vocabulary columns per step of the second pass (static).
        vocab_size: the number of vocabulary entries in use (static): the columns of
            ``w`` and ``teacher_w`` past them get probability 0 in both heads.

    Returns:
        A scalar, or per-token losses of shape ``x.shape[:-1]`` for ``"none"`` (0 on
        tokens that are not kept), in the promoted dtype of ``x`` and ``w``; 16-bit
        inputs are accumulated in float32.

    Examples:
        >>> import jax, jax.numpy as jnp
        >>> import jaxloss as jl
        >>> jnp.set_printoptions(precision=4)
        >>> x = jnp.array([[1.0, 0.5], [-0.5, 2.0]])
        >>> w = jnp.array([[1.0, -1.0, 0.5], [0.5, 0.5, -1.0]])
        >>> teacher_x = jnp.array([[0.5, 1.0, 0.0], [1.0, 0.0, 1.0]])
        >>> teacher_w = jnp.eye(3)
        >>> jl.linear_jsd(x, w, teacher_x, teacher_w, beta=0.5)
        Array(0.1706, dtype=float32)
        >>> p = jl.softmax(teacher_x @ teacher_w)
        >>> q = jl.softmax(x @ w)
        >>> m = (p + q) / 2
        >>> (jl.kl_div(jnp.log(m), p, reduction="batchmean")  # the same, unfused
        ...  + jl.kl_div(jnp.log(m), q, reduction="batchmean")) / 2
        Array(0.1706, dtype=float32)
        >>> jl.linear_jsd(x, w, teacher_x, teacher_w, beta=0.0)  # forward KL
        Array(0.9483, dtype=float32)
        >>> jl.linear_kl_div(x, w, teacher_x, teacher_w)  # the same at T = 1
        Array(0.9483, dtype=float32)
        >>> jax.grad(jl.linear_jsd)(x, w, teacher_x, teacher_w)
        Array([[ 0.0633,  0.007 ],
               [-0.0848,  0.0178]], dtype=float32)
    """
    x, w = driver.check_head(x, w)
    weighting, plan = driver.check_token_options(
        x,
        w,
        reduction=reduction,
        token_weight=token_weight,
        segment_ids=segment_ids,
        normalizer=normalizer,
        chunk_size=chunk_size,
        passes=passes,
        vocab_chunk_size=vocab_chunk_size,
        vocab_size=vocab_size,
    )
    if teacher_x is None or teacher_w is None:
        raise ValueError("linear_jsd needs the teacher's teacher_x and teacher_w")
    rows, projection = _checked_teacher(teacher_x, teacher_w, None, x.shape[:-1], w.shape[1])
    beta = _static_beta(beta)
    temperature = _checks.real_scalar("temperature", temperature, minimum=0.0, strict=True)
    ignore_index = _checks.ignore_index(ignore_index)
    if targets is None:
        codes = jnp.zeros(x.shape[:-1], jnp.int32)
    else:
        codes = driver.token_codes(targets, x, plan.vocab_size, ignore_index)
    return _linear_jsd(x, w, rows.x, projection, codes, plan, beta, temperature, weighting)
