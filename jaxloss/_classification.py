"""Multi-class losses: ``cross_entropy`` and ``nll_loss``.

Thin callers of the kernel in ``_xent``: each validates its arguments, resolves
class-index targets once (``resolve_targets``), builds the call's ``Options`` and
``Scalars``, and runs one jitted function that moves the class axis last and calls
the kernel's custom-JVP cores.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax.typing import ArrayLike

from jaxloss import _checks
from jaxloss._reduce import compute_dtype, dropped_elements, reduce_tokens
from jaxloss._targets import IGNORED, resolve_targets
from jaxloss._xent import (
    IndexTargets,
    Options,
    Scalars,
    contributing,
    index_cross_entropy,
    index_nll,
    smoothing_share,
    soft_cap,
    softmax_cross_entropy,
    target_weight,
    z_loss_term,
)


@functools.partial(jax.jit, static_argnums=(4,))
def _cross_entropy(logits, targets, scalars: Scalars, where, options: Options, weighting):
    dtype = compute_dtype(logits.dtype)
    # Upcast where an operation needs it: softmax_cross_entropy upcasts inside, so that a
    # low-precision input is not written out in float32 first.
    x = jnp.moveaxis(logits, options.axis, -1)
    scalars = scalars.astype(dtype)
    weighting = jax.lax.stop_gradient(weighting)
    dropped = dropped_elements(weighting.token_weight, weighting.segment_ids)
    if dropped is not None:
        if options.targets_are_indices:
            targets = jnp.where(dropped, IGNORED, targets)
        else:
            # A dropped element's row becomes zeros with zero targets: loss 0 and no
            # gradient, even where its logits are not finite.
            x = jnp.where(dropped[..., None], 0.0, x)
            targets = jnp.where(jnp.expand_dims(dropped, options.axis), 0.0, targets)
    if options.targets_are_indices:
        resolved = IndexTargets.from_codes(targets)
        w_y = target_weight(scalars.class_weight, resolved.class_index, dtype)
        counted = contributing(resolved, w_y, scalars, options)
        if options.has_softcap:
            # The core passes no gradient to rows that add nothing, but tanh's derivative
            # at a nan logit is nan (and 0 * nan = nan): such rows are kept out of it.
            x = jnp.where(counted[..., None], x, 0.0)
        x = x.astype(dtype)
    if where is not None:
        where = jnp.moveaxis(where, options.axis, -1)
        if options.has_softcap:
            # tanh's derivative at a masked nan logit is nan (and 0 * nan = nan).
            x = jnp.where(where, x, 0.0)
    if options.has_softcap:
        x, _ = soft_cap(x.astype(dtype), scalars.logit_softcap)
    if where is not None:
        x = jnp.where(where, x, -jnp.inf)
    if options.targets_are_indices:
        loss, lse = index_cross_entropy(x, resolved, counted, scalars, options)
        share = jnp.where(resolved.keep, w_y, 0.0)
    else:
        share = jnp.ones(x.shape[:-1], dtype)
        if dropped is not None:
            share = jnp.where(dropped, 0.0, share)
        a = jnp.moveaxis(targets, options.axis, -1)
        if options.has_smoothing:
            share_c = smoothing_share(x.astype(dtype), scalars.label_smoothing)
            a = (1.0 - scalars.label_smoothing) * a.astype(dtype) + share_c
        if scalars.class_weight is not None:
            a = a.astype(dtype) * scalars.class_weight
        loss, lse = softmax_cross_entropy(x, a)
    if options.has_z_loss:
        # lse is 0 on index elements that add nothing (ignored): no z-loss there.
        loss = loss + z_loss_term(lse, scalars.z_loss)
    return reduce_tokens(loss, share, options.reduction, weighting).astype(logits.dtype)


def cross_entropy(
    logits: ArrayLike,
    targets: ArrayLike,
    *,
    weight: ArrayLike | None = None,
    ignore_index: int = -100,
    reduction: str = "mean",
    label_smoothing: ArrayLike = 0.0,
    axis: int = -1,
    where: ArrayLike | None = None,
    z_loss: ArrayLike = 0.0,
    logit_softcap: ArrayLike | None = None,
    token_weight: ArrayLike | None = None,
    segment_ids: ArrayLike | None = None,
    normalizer: ArrayLike | None = None,
    vocab_size: int | None = None,
) -> jax.Array:
    r"""Softmax cross-entropy with class-index or class-probability targets.

    The loss to train a classifier from unnormalized logits. The target kind is
    decided by dtype: integer ``targets`` are class indices, floating ``targets``
    are class probabilities (and are differentiable, e.g. for distillation).

    With $\log p = \operatorname{log\_softmax}(x)$ over the $K$
    available classes (finite logit, kept by ``where``; $K = C$ normally),
    class weights $w$ and smoothing $\varepsilon$, each element's loss is

    $$
    \ell_n = \sum_c a_{n,c}\,(-\log p_{n,c}), \qquad
    a_{n,c} = \begin{cases}
      (1-\varepsilon)\, w_{y_n} [c = y_n] + \tfrac{\varepsilon}{K} w_c
        & \text{index targets } y_n \ne \text{ignore\_index}, \\
      w_c \big((1-\varepsilon)\, t_{n,c} + \tfrac{\varepsilon}{K}\big)
        & \text{probability targets } t_n,
    \end{cases}
    $$

    and $a_n = 0$ where $y_n$ is ``ignore_index``. ``"mean"`` divides
    the sum by $\sum_n w_{y_n}$ over kept elements (index targets) or by the
    number of elements (probability targets). ``z_loss`` adds
    $z \cdot (\log\sum_c e^{x_{n,c}})^2$ to every kept element, and
    ``logit_softcap`` replaces the logits by $c \tanh(x / c)$ first.

    Gradient (the custom JVP rule), with $S_n = \sum_c a_{n,c}$:

    $$
    \frac{\partial \ell_n}{\partial x_{n,c}} = S_n\, p_{n,c} - a_{n,c},
    \qquad
    \frac{\partial \ell_n}{\partial a_{n,c}} = -\log p_{n,c},
    $$

    i.e. $p - \tilde t$ without weights; gradients for the probability
    targets, ``weight`` and ``label_smoothing`` follow through the linear map
    that builds $a$. The Hessian in the logits is
    $S_n(\operatorname{diag} p_n - p_n p_n^\top)$.

    Args:
        logits: floating ``[..., num_classes, ...]`` with the classes on ``axis``;
            ``[num_classes]`` for a single example.
        targets: integer class indices of the logits' shape without ``axis``, or
            floating probabilities of the logits' shape.
        weight: optional ``[num_classes]`` class weights (may be traced).
        ignore_index: index targets equal to it contribute 0 loss, 0 gradient and
            0 weight to the mean (static, a Python int; a value the targets' dtype
            cannot hold matches nothing). Only for index targets.
        reduction: ``"mean"``, ``"sum"``, ``"none"`` or ``"sequence_mean"`` (the mean over
            sequences of each sequence's mean; see ``segment_ids``) (static).
        label_smoothing: $\varepsilon \in [0, 1]$ (may be traced).
        axis: the class axis (static); ``axis=1`` is PyTorch's ``(N, C, d1, ...)``.
        where: optional boolean mask broadcastable to ``logits``; ``False``
            classes get probability 0 and no smoothing mass.
        z_loss: coefficient of the log-partition penalty (PaLM), default 0.
        logit_softcap: optional ``c > 0`` for $c\tanh(x/c)$ (Gemma 2).
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
        vocab_size: the number of classes in use (static), for a class axis padded
            past them (a vocabulary of 50,257 stored as 50,304 to divide the devices):
            classes ``vocab_size`` and up get probability 0, no smoothing mass and no
            gradient, whatever their logits hold, and a target there is out of
            range. None (the default): every class.

    Returns:
        A scalar, or the per-element losses (the logits' shape without ``axis``)
        for ``reduction="none"``, in the logits' dtype. 16-bit logits are
        accumulated in float32.

    Edge cases: class indices may have any integer dtype, with the same results
    as ``int32``, and ``ignore_index`` is compared as a mathematical integer (a
    value the dtype cannot hold matches nothing). An element that adds nothing
    (ignored, or a class weight of 0 without smoothing or z-loss) contributes
    exactly 0 to the loss and to the logits' gradient, even if its logits are
    ``nan`` or infinite. A ``nan`` or ``+inf`` logit in a counted element makes
    it ``nan``. A row's loss does not change when a constant is added to its
    logits, up to the rounding of the logits themselves. A probability target
    that puts mass on a class of probability 0 (a ``-inf`` logit) gives an
    infinite loss, the true value; its gradient with respect to that target entry
    is taken as 0.

    PyTorch: ``F.cross_entropy(logits, targets, weight=..., ignore_index=...,
    reduction=..., label_smoothing=...)`` with ``axis=1``. Deviations (each
    checked against PyTorch in the test suite): a mean over zero total weight
    (every target ignored, or no elements) is 0 with zero gradient (PyTorch:
    nan); a class with logit ``-inf`` or masked by ``where`` gets probability 0
    and no smoothing mass, so the loss stays finite (PyTorch: inf with
    smoothing); an index outside ``[0, C)`` that is not ``ignore_index`` makes
    that element (and its gradient) nan (PyTorch raises); ignored elements and
    elements of class weight 0 get a zero gradient even from ``nan`` logits
    (PyTorch: nan).

    Examples:
        >>> import jax, jax.numpy as jnp
        >>> import jaxloss as jl
        >>> jnp.set_printoptions(precision=4)
        >>> logits = jnp.array([[1.0, 2.0, 3.0], [1.0, 2.0, 3.0]])
        >>> targets = jnp.array([2, 0])
        >>> jl.cross_entropy(logits, targets)
        Array(1.4076, dtype=float32)
        >>> jax.grad(jl.cross_entropy)(logits, targets)  # (softmax - onehot) / N
        Array([[ 0.045 ,  0.1224, -0.1674],
               [-0.455 ,  0.1224,  0.3326]], dtype=float32)
        >>> jl.cross_entropy(logits, targets, label_smoothing=0.1, reduction="none")
        Array([0.5076, 2.3076], dtype=float32)

    See also: [`nll_loss`][jaxloss.nll_loss] for log-probabilities, and
    [`linear_cross_entropy`][jaxloss.linear_cross_entropy] to fuse the final
    projection for large vocabularies.
    """
    logits, axis, targets, is_index, ignore_index = _checks.softmax_logits_and_targets(
        logits, targets, axis, ignore_index
    )
    reduction = _checks.reduction(reduction, _checks.TOKEN_REDUCTIONS)
    index_shape = logits.shape[:axis] + logits.shape[axis + 1 :]
    weighting = _checks.token_weighting(
        token_weight, segment_ids, normalizer, reduction, index_shape
    )
    class_weight = _checks.class_weight(weight, logits.shape[axis])
    label_smoothing, z_loss, logit_softcap, has_smoothing, has_z_loss = _checks.logit_options(
        label_smoothing, z_loss, logit_softcap
    )
    where = _checks.where_mask(where, logits.shape)
    num_classes = logits.shape[axis]
    vocab_size = _checks.vocab_size(vocab_size, num_classes)
    if vocab_size < num_classes:
        in_use = jnp.arange(num_classes) < vocab_size
        trailing = (1,) * (logits.ndim - axis % logits.ndim - 1)
        in_use = jnp.broadcast_to(in_use.reshape(num_classes, *trailing), logits.shape)
        where = in_use if where is None else where & in_use
    if is_index:
        targets = resolve_targets(targets, vocab_size, ignore_index)
    options = Options(
        reduction=reduction,
        axis=axis,
        targets_are_indices=is_index,
        has_smoothing=has_smoothing,
        has_z_loss=has_z_loss,
        has_softcap=logit_softcap is not None,
    )
    scalars = Scalars(class_weight, label_smoothing, z_loss, logit_softcap)
    return _cross_entropy(logits, targets, scalars, where, options, weighting)


@functools.partial(jax.jit, static_argnums=(3,))
def _nll_loss(log_probs, codes, class_weight, options: Options, weighting):
    dtype = compute_dtype(log_probs.dtype)
    lp = jnp.moveaxis(log_probs, options.axis, -1).astype(dtype)
    weighting = jax.lax.stop_gradient(weighting)
    dropped = dropped_elements(weighting.token_weight, weighting.segment_ids)
    if dropped is not None:
        codes = jnp.where(dropped, IGNORED, codes)
    targets = IndexTargets.from_codes(codes)
    w_y = target_weight(class_weight, targets.class_index, dtype)
    loss = index_nll(lp, targets, jnp.where(targets.keep, w_y, 0.0))
    share = jnp.where(targets.keep, w_y, 0.0)
    return reduce_tokens(loss, share, options.reduction, weighting).astype(log_probs.dtype)


def nll_loss(
    log_probs: ArrayLike,
    targets: ArrayLike,
    *,
    weight: ArrayLike | None = None,
    ignore_index: int = -100,
    reduction: str = "mean",
    axis: int = -1,
    token_weight: ArrayLike | None = None,
    segment_ids: ArrayLike | None = None,
    normalizer: ArrayLike | None = None,
) -> jax.Array:
    r"""Negative log-likelihood of class-index targets, given log-probabilities.

    Use it on the output of [`log_softmax`][jaxloss.log_softmax] (or any log-probabilities);
    [`cross_entropy`][jaxloss.cross_entropy] fuses the two and is the faster choice for logits.

    $$
    \ell_n = -w_{y_n} \log p_{n, y_n}, \qquad
    \text{mean} = \frac{\sum_n \ell_n}{\sum_{n:\, y_n \ne \text{ignore}} w_{y_n}},
    $$

    with $\ell_n = 0$ where $y_n$ is ``ignore_index``.

    Gradient (the custom JVP rule):
    $\partial \ell_n / \partial \log p_{n,c} = -w_{y_n} [c = y_n]$ and
    $\partial \ell_n / \partial w_{y_n} = -\log p_{n,y_n}$.

    Args:
        log_probs: floating ``[..., num_classes, ...]`` with the classes on ``axis``.
        targets: integer class indices, the log-probabilities' shape without ``axis``.
        weight: optional ``[num_classes]`` class weights.
        ignore_index: targets equal to it are skipped (static).
        reduction: ``"mean"``, ``"sum"``, ``"none"`` or ``"sequence_mean"`` (static).
        axis: the class axis (static).
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

    Returns:
        A scalar, or per-element losses for ``reduction="none"``, in the input dtype.

    Targets of any integer dtype give the same results; ``ignore_index`` is
    compared as a mathematical integer.

    PyTorch: ``F.nll_loss(log_probs, targets, ...)`` with ``axis=1``. Deviations:
    a mean over zero total weight is 0 (PyTorch: nan); an out-of-range target
    gives nan for that element (PyTorch raises).

    Examples:
        >>> import jax, jax.numpy as jnp
        >>> import jaxloss as jl
        >>> jnp.set_printoptions(precision=4)
        >>> log_probs = jl.log_softmax(jnp.array([[1.0, 2.0, 3.0], [1.0, 2.0, 3.0]]))
        >>> jl.nll_loss(log_probs, jnp.array([2, -100]))  # the second is ignored
        Array(0.4076, dtype=float32)
        >>> jax.grad(jl.nll_loss)(log_probs, jnp.array([2, 0]))
        Array([[ 0. ,  0. , -0.5],
               [-0.5,  0. ,  0. ]], dtype=float32)
    """
    log_probs = _checks.floating_input("log_probs", log_probs, min_ndim=1)
    axis = _checks.class_axis(axis, log_probs.ndim)
    _checks.has_classes("log_probs", log_probs.shape, axis)
    targets = _checks.as_array("targets", targets)
    if not jnp.issubdtype(targets.dtype, jnp.integer):
        raise TypeError(
            f"nll_loss takes integer class-index targets, got dtype {targets.dtype}; "
            "for probability targets use cross_entropy"
        )
    targets, _ = _checks.index_or_probability_targets(targets, log_probs.shape, axis)
    class_weight = _checks.class_weight(weight, log_probs.shape[axis])
    ignore_index = _checks.ignore_index(ignore_index)
    reduction = _checks.reduction(reduction, _checks.TOKEN_REDUCTIONS)
    weighting = _checks.token_weighting(
        token_weight, segment_ids, normalizer, reduction, targets.shape
    )
    options = Options(reduction=reduction, axis=axis)
    codes = resolve_targets(targets, log_probs.shape[axis], ignore_index)
    return _nll_loss(log_probs, codes, class_weight, options, weighting)
