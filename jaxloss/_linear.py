"""``linear_cross_entropy``: cross-entropy of ``x @ w + b`` without the N x V logits.

The cross-entropy head of the fused engine (``jaxloss._fused``): from one chunk of
raw logits it forms the per-token losses, their logit gradient ``S p - a`` (times
``1 - tanh^2`` under soft-capping) and, for the engine's second pass, any
vocabulary chunk of that gradient from the row's log-sum-exp and ``S``. The engine walks the
tokens and the vocabulary and forms the gradients of ``x``, ``w`` and ``bias``.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Literal, overload

import jax
import jax.numpy as jnp
from jax.typing import ArrayLike

from jaxloss import _checks
from jaxloss._fused import driver, engine
from jaxloss._fused.chunking import VocabChunk
from jaxloss._reduce import safe_divide
from jaxloss._softmax import max_and_sum_exp
from jaxloss._xent import (
    Fill,
    IndexTargets,
    Options,
    Scalars,
    coefficient_columns,
    contributing,
    index_coefficients,
    logit_gradient,
    soft_cap,
    soft_cap_gradient,
    softmax_cross_entropy,
    target_weight,
    z_loss_logit_scale,
    z_loss_term,
)

STATISTICS = ("accuracy", "target_log_prob", "entropy")


def _token_statistics(logits, m, log_s, targets: IndexTargets):
    """Per token, the columns of ``STATISTICS``: 1.0 where the target's logit is the row's
    largest (a tie counts) else 0.0, the target's log-probability, and the entropy of
    the softmax."""
    onehot = targets.class_index[:, None] == jnp.arange(logits.shape[1], dtype=jnp.int32)
    target_logit = jnp.sum(jnp.where(onehot, logits, 0.0), axis=-1)
    top = (target_logit >= m[:, 0]).astype(logits.dtype)
    shifted = logits - m
    p = jnp.exp(shifted - log_s[:, None])
    # -sum_v p_v log p_v = log s - sum_v p_v (z_v - m); a class of probability 0 adds 0.
    entropy = log_s - jnp.sum(jnp.where(p > 0, p * shifted, 0.0), axis=-1)
    return jnp.stack([top, (target_logit - m[:, 0]) - log_s, entropy], axis=-1)


@dataclasses.dataclass(frozen=True)
class CrossEntropyHead:
    """The cross-entropy of ``softcap(z)`` (``engine.Head``). Tokens: the resolved target
    codes; params: the ``Scalars``. Saved per token for the second pass: the row
    maximum, the log of its sum of exponentials and the row scale ``S``. Statistics
    (with ``return_aux`` only): the log-sum-exp and ``STATISTICS``."""

    options: Options
    vocab: int  # the classes in use: w's columns past them are padding
    padded: int  # w's columns
    return_aux: bool  # also the statistics for logging

    @property
    def saved_width(self) -> int:
        return 3

    @property
    def stats_width(self) -> int:
        return (1 + len(STATISTICS)) if self.return_aux else 0

    def _targets(self, codes, scalars: Scalars):
        """The resolved targets, their class weights and which tokens count."""
        targets = IndexTargets.from_codes(codes)
        w_y = target_weight(scalars.class_weight, targets.class_index, scalars.compute_dtype)
        return targets, w_y, contributing(targets, w_y, scalars, self.options)

    def counted(self, codes, scalars: Scalars):
        return self._targets(codes, scalars)[2]

    def _capped(self, z, scalars: Scalars, ids):
        """The soft-capped logits of the columns ``ids`` (and the tanh), padding at -inf."""
        tanh = None
        if self.options.has_softcap:
            z, tanh = soft_cap(z, scalars.logit_softcap)
        if self.vocab < self.padded:
            z = engine.mask_padding(z, ids, self.vocab)
        return z, tanh

    def _stats(self, z, m, log_s, targets: IndexTargets):
        if not self.return_aux:
            return jnp.zeros((z.shape[0], 0), z.dtype)
        lse = m[:, 0] + log_s
        return jnp.concatenate([lse[:, None], _token_statistics(z, m, log_s, targets)], axis=-1)

    def loss(self, z, codes, scalars: Scalars):
        acc, columns = z.dtype, jnp.arange(self.padded, dtype=jnp.int32)
        targets = IndexTargets.from_codes(codes)
        share = None
        if self.options.has_smoothing:
            share = self._spread(columns, scalars, weighted=False)
        a, _ = index_coefficients(
            targets, self.padded, scalars.class_weight, acc, scalars.label_smoothing, share
        )
        z, _ = self._capped(z, scalars, columns)
        loss, lse = softmax_cross_entropy(z, a)
        if self.options.has_z_loss:
            loss = loss + z_loss_term(lse, scalars.z_loss, targets.keep)
        z = jax.lax.stop_gradient(z)
        m, s = max_and_sum_exp(z, -1)
        return loss, self._stats(z, m, jnp.log(s[:, 0]), targets)

    def loss_and_grad(
        self, z, codes, scalars: Scalars, fill: Fill, by_slices: bool = False
    ) -> engine.HeadTerms:
        """The loss ``sum_c a_c (lse - z_c) = S log s + sum_c a_c (m - z_c)`` is formed
        from the target's logit and, with smoothing, one weighted sum over the classes,
        and ``S`` in closed form: the coefficients ``a`` appear only inside the
        gradient's elementwise expression, so the chunk's only full-size arrays are its
        logits, their gradient and the by-products its row sums read (``by_slices``:
        computed after the sum of exponentials, so that one of them is alive at a time
        beside the logits)."""
        acc, columns = z.dtype, jnp.arange(self.padded, dtype=jnp.int32)
        eps = scalars.label_smoothing
        targets, w_y, counted = self._targets(codes, scalars)
        z, tanh = self._capped(z, scalars, columns)
        m, s = max_and_sum_exp(z, -1)
        if by_slices:
            # The sums before the other reductions over z: each reads a chunk-sized
            # temporary, and the order keeps only one of them alive next to z.
            z, m, s = jax.lax.optimization_barrier((z, m, s))
        log_s = jnp.log(s[:, 0])
        # Shifted logits below -(largest float) (a -inf bias) count as the largest float,
        # so that a class without mass adds 0; mass on one makes the loss inf, as in
        # xent_terms.
        biggest = jnp.finfo(acc).max
        onehot = targets.class_index[:, None] == columns
        target_shift = jnp.sum(jnp.where(onehot, jnp.maximum(z - m, -biggest), fill.zero), -1)
        element_weight = jnp.where(targets.keep, w_y, 0.0)
        scale = element_weight
        loss = element_weight * (log_s - target_shift)
        lost = (element_weight * (1.0 - eps) > 0) & (target_shift == -biggest)
        spread = self._spread(columns, scalars) if self.options.has_smoothing else None
        if spread is not None:
            shifted = jnp.sum(jnp.maximum(z - m, -biggest) * spread, axis=-1)
            loss = (1.0 - eps) * loss + jnp.where(
                targets.keep, jnp.sum(spread) * log_s - shifted, 0.0
            )
            scale = (1.0 - eps) * scale + jnp.where(targets.keep, jnp.sum(spread), 0.0)
            lost = lost | (targets.keep & jnp.any((z == -jnp.inf) & (spread > 0), axis=-1))
        loss = jnp.where(lost, jnp.where(s[:, 0] == 0, jnp.nan, jnp.inf), loss)
        loss = jnp.where(targets.bad, jnp.nan, jnp.where(counted, loss, 0.0))
        scale = jnp.where(targets.bad, jnp.nan, scale)
        lse = m[:, 0] + log_s
        if self.options.has_z_loss:
            loss = loss + z_loss_term(lse, scalars.z_loss, targets.keep)
            scale = scale + z_loss_logit_scale(lse, scalars.z_loss, targets.keep)
        a = coefficient_columns(targets, element_weight, columns, eps, spread, fill)
        grad = logit_gradient(scale[:, None], jnp.exp(z - m) / s, a, fill)
        grad = self._finish(grad, tanh, counted[:, None], targets.bad[:, None], fill)
        # The row maximum and log s apart, not their sum: z - m is exact where z - lse
        # would round at lse's magnitude.
        saved = jnp.stack([m[:, 0], log_s, scale], axis=-1)
        return engine.HeadTerms(loss, grad, saved, self._stats(z, m, log_s, targets))

    def grad_by_slices(self, scalars: Scalars) -> bool:
        return True

    def vocab_chunk_grad(self, z_t, codes, saved, scalars: Scalars, chunk: VocabChunk, fill: Fill):
        targets, w_y, counted = self._targets(codes, scalars)
        ids = chunk.ids()
        z_t, tanh = self._capped(z_t, scalars, ids[:, None])
        spread = self._spread(ids, scalars) if self.options.has_smoothing else None
        element_weight = jnp.where(targets.keep, w_y, 0.0)
        a = coefficient_columns(targets, element_weight, ids, scalars.label_smoothing, spread, fill)
        p = jnp.exp((z_t - saved[None, :, 0]) - saved[None, :, 1])
        grad = logit_gradient(saved[None, :, 2], p, a.T, fill)
        return self._finish(grad, tanh, counted[None, :], targets.bad[None, :], fill)

    def _spread(self, ids, scalars: Scalars, weighted: bool = True):
        """The smoothing part of the coefficients of the columns ``ids``: ``eps / V``
        (times their class weights), 0 on padding."""
        share = scalars.label_smoothing / self.vocab
        spread = jnp.where(ids < self.vocab, share, 0.0).astype(scalars.compute_dtype)
        if weighted and scalars.class_weight is not None:
            spread = spread * scalars.class_weight[ids]
        return spread

    def _finish(self, grad, tanh, counted, bad, fill: Fill):
        """Through the soft-cap; exactly 0 on tokens that add nothing, nan on bad ones
        (``counted`` and ``bad`` broadcast along the classes)."""
        if tanh is not None:
            grad = soft_cap_gradient(grad, tanh)
        grad = jnp.where(counted, grad, fill.zero)
        return jnp.where(bad, fill.nan, grad)


def _aux_statistics(stats, targets: IndexTargets, counted, scalars: Scalars, reduction: str):
    """The logged statistics: per token for ``"none"``, else means over the tokens that
    add to the loss; nan wherever a target is out of range. ``stats`` holds the
    log-sum-exp and then ``STATISTICS`` (``CrossEntropyHead.stats_width``)."""
    lse = stats[:, 0]
    per_token = {
        "z_loss": z_loss_term(lse, scalars.z_loss),
        "log_partition": lse,
        **{name: stats[:, 1 + i] for i, name in enumerate(STATISTICS)},
    }
    per_token = {
        name: jnp.where(targets.bad, jnp.nan, jnp.where(counted, value, 0.0))
        for name, value in per_token.items()
    }
    if reduction == "none":
        return per_token
    count = jnp.sum(counted).astype(lse.dtype)
    return {name: safe_divide(jnp.sum(value), count) for name, value in per_token.items()}


@functools.partial(jax.jit, static_argnums=(4, 5, 8))
def _linear_cross_entropy(
    x, w, codes, bias, options: Options, plan: driver.Plan, scalars, weighting, return_aux: bool
):
    acc = engine.accumulation_dtype(x, w)
    # No gradient flows to the numeric options here (documented).
    scalars = jax.lax.stop_gradient(scalars.astype(acc))
    head = CrossEntropyHead(options, plan.vocab_size, w.shape[1], return_aux)

    def head_tokens(x2, codes, _):
        targets = IndexTargets.from_codes(codes)
        w_y = target_weight(scalars.class_weight, targets.class_index, acc)
        return driver.HeadTokens(x2, codes, jnp.where(targets.keep, w_y, 0.0))

    out = driver.fused_loss(head, x, w, bias, codes, None, scalars, weighting, plan, head_tokens)
    if not return_aux:
        return out.loss
    targets = IndexTargets.from_codes(out.codes)
    w_y = target_weight(scalars.class_weight, targets.class_index, acc)
    counted = contributing(targets, w_y, scalars, options)
    stats = jax.lax.stop_gradient(out.stats)
    aux = _aux_statistics(stats, targets, counted, scalars, plan.reduction)
    return out.loss, jax.tree.map(lambda a: a.reshape(x.shape[:-1]) if a.ndim else a, aux)


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
    vocab_size: int | None = None,
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
    vocab_size: int | None = None,
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
    vocab_size: int | None = None,
    return_aux: bool = False,
) -> jax.Array | tuple[jax.Array, dict[str, jax.Array]]:
    r"""Cross-entropy of the logits ``x @ w + bias``, computed without materializing them.

    For language-model heads with large vocabularies: the result equals
    ``cross_entropy(x @ w + bias, targets, ...)`` to float32 rounding, but tokens
    are processed in chunks, so peak memory is a few chunk-sized buffers
    (``chunk_size x V`` floats: two or three by default, up to about six with
    smoothing, z-loss and soft-cap together) instead of ``N x V`` for the
    logits and again for their gradient.

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
      a pass over vocabulary chunks of ``vocab_chunk_size`` columns that recomputes
      each chunk's logits and writes that chunk of $\partial L/\partial W$ once. Four
      matmuls, and nothing of size ``H x V`` or ``N x V`` besides the gradient.

    By default two passes are taken when ``w`` is narrower than the accumulation dtype
    (bfloat16 or float16 ``w``, or float32 ``w`` with float64 ``x``: one pass would need
    an ``H x V`` buffer of the wider dtype) and wherever the tokens may be split over
    devices (explicit sharding, or more than one device outside a ``shard_map`` that is
    manual over every axis), so that the weight gradient is reduced once; otherwise one.
    For ``"none"``, whose cotangents are per token, each token's row of
    $\partial \ell_n / \partial z_n\, W^\top$ is kept from the forward pass and the
    weight gradient is formed in a scan over the vocabulary in chunks, the logits of
    each recomputed for all the tokens (as [`linear_log_probs`][jaxloss.linear_log_probs]
    does). All of
    these work in forward and reverse mode, under ``jit`` and ``vmap`` (which walks
    the examples one after another, in one chunk's memory; see docs/large-vocab.md). bfloat16
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
            whose float32 logits fit in 16 MiB (at least 8), but no more than the
            number of tokens rounded up to a power of two; where the tokens may be
            split over devices, rounded up to a multiple of their number (under
            explicit sharding, of the devices that split the tokens).
        passes: 1 or 2, how the gradients of ``"mean"`` and ``"sum"`` are formed
            (static; see above); ``None`` chooses two where the tokens may be spread
            over devices (explicit sharding, or more than one device outside a
            ``shard_map`` manual over every axis) or where ``w`` is narrower than the
            accumulation dtype (bfloat16), else one.
        vocab_chunk_size: vocabulary columns per step of the second pass (static); by
            default as many as fit a float32 chunk of the weight gradient in 16 MiB or
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
        vocab_size: the number of vocabulary entries in use (static), for a ``w``
            padded past them (50,257 stored as 50,304 to divide the devices): the
            columns ``vocab_size`` and up get probability 0, no smoothing mass and
            exactly zero gradient (in ``w``, ``bias`` and through ``x``), also with
            soft-capping and in the auxiliary statistics, and a target there is out
            of range. None (the default): every column.
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

    PyTorch: ``F.linear_cross_entropy`` (2.13) takes ``w`` as ``[V, H]`` and has the
    same class weights, ``ignore_index``, label smoothing and reductions (values equal),
    but no z-loss or soft-cap; Liger-Kernel's fused linear cross-entropy and Cut
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
    x, w = driver.check_head(x, w, " (for a (V, H) embedding matrix pass emb.T)")
    vocab = w.shape[1]
    if bias is not None:
        bias = _checks.floating_input("bias", bias)
        if bias.shape != (vocab,):
            raise ValueError(f"bias must have shape ({vocab},), got {bias.shape}")
    class_weight = _checks.class_weight(weight, vocab)
    label_smoothing, z_loss, logit_softcap, has_smoothing, has_z_loss = _checks.logit_options(
        label_smoothing, z_loss, logit_softcap
    )
    return_aux = _checks.flag("return_aux", return_aux)
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
    codes = driver.token_codes(targets, x, plan.vocab_size, _checks.ignore_index(ignore_index))
    options = Options(
        reduction=plan.reduction,
        has_smoothing=has_smoothing,
        has_z_loss=has_z_loss,
        has_softcap=logit_softcap is not None,
    )
    scalars = Scalars(class_weight, label_smoothing, z_loss, logit_softcap)
    return _linear_cross_entropy(x, w, codes, bias, options, plan, scalars, weighting, return_aux)
