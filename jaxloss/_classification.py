"""Multi-class losses: ``nll_loss`` and ``cross_entropy``.

Both are written in terms of a *coefficient* array ``a`` of the logits' shape:
every variant (index or probability targets, class weights, label smoothing,
ignored elements) is the per-element loss

    l = sum_c a_c * (-log p_c),

with ``a`` built linearly from the targets and options. For probability targets
``a`` is built as an array and one custom-JVP core carries the closed-form
derivative; the derivatives with respect to the targets, weights and smoothing
follow from ``a``. For class-index targets ``a`` is a one-hot row plus a
smoothing term, so their core (``index_cross_entropy``) never builds it: it
gathers the target logit and writes the same formulas in closed form, which
keeps the forward pass to two reductions over the logits.
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax.typing import ArrayLike

from jaxloss import _checks
from jaxloss._reduce import (
    class_weight_of,
    compute_dtype,
    explicit_sharding,
    is_zero,
    reduce_loss,
)
from jaxloss._softmax import max_and_sum_exp


def xent_terms(x, a, m, s):
    """Cross-entropy and log-sum-exp along the last axis from the shift ``m`` and sum ``s``.

    ``sum_c a_c (lse - x_c)`` is evaluated as ``S log s + (S m - <a, x>)`` with
    ``S = sum_c a_c``: the inner product is a dot, which reads ``a`` and ``x``
    once without an N x C temporary (a masked product would be one), and the
    large ``m`` and ``<a, x>`` cancel only to float rounding of their size.
    A row where ``x_c = -inf`` meets ``a_c = 0`` (a masked class) makes the dot
    nan; such rows are recomputed with the mask, so that they contribute 0.
    """
    total = jnp.sum(a, axis=-1)
    log_s = jnp.log(s)[..., 0]
    m = m[..., 0]
    dot = jnp.einsum(
        "...c,...c->...",
        a,
        x,
        preferred_element_type=x.dtype,
        out_sharding=explicit_sharding(total),  # a contraction of a possibly sharded axis
    )
    cross = jax.lax.cond(
        jnp.all(jnp.isfinite(dot)),
        lambda: total * m - dot,
        lambda: jnp.sum(jnp.where(a != 0, a * (m[..., None] - x), 0.0), axis=-1),
    )
    loss = jnp.where(total != 0, total * log_s, 0.0) + cross
    return loss, m + log_s


@jax.custom_jvp
def softmax_cross_entropy(x: jax.Array, a: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Returns ``(sum_c a_c * -log_softmax(x)_c, logsumexp(x))`` along the last axis."""
    m, s = max_and_sum_exp(x, -1)
    return xent_terms(x, a, m, s)


def _softmax_cross_entropy_jvp(primals, tangents):
    # d loss = <S p - a, dx> + <-log p, da>,   d lse = <p, dx>.
    # Classes with logit -inf (masked) have p = 0 and a = 0: their dx is dropped,
    # and by the convention 0 * log 0 = 0 their -log p is taken as 0 for da.
    x, a = primals
    dx, da = tangents
    m, s = max_and_sum_exp(x, -1)
    loss, lse = xent_terms(x, a, m, s)
    dloss = jnp.zeros_like(loss)
    dlse = jnp.zeros_like(lse)
    if not is_zero(dx):
        # exp((x - m) - log s) rather than exp(x - m) / s: a distinct expression, so XLA
        # does not merge it with the forward's exp(x - m) and keep that N x C array
        # between the passes; each pass then reads only the logits.
        p = jnp.where(s == 0, 0.0, jnp.exp((x - m) - jnp.log(s)))
        dx = jnp.where(x == -jnp.inf, 0.0, dx)
        grad = jnp.sum(a, axis=-1, keepdims=True) * p - a
        dloss = dloss + jnp.sum(grad * dx, axis=-1)
        dlse = jnp.sum(p * dx, axis=-1)
    if not is_zero(da):
        neg_log_p = jnp.where(x == -jnp.inf, 0.0, lse[..., None] - x)
        dloss = dloss + jnp.sum(da * neg_log_p, axis=-1)
    return (loss, lse), (dloss, dlse)


softmax_cross_entropy.defjvp(_softmax_cross_entropy_jvp, symbolic_zeros=True)


@jax.custom_jvp
def _weighted_nll(log_probs: jax.Array, a: jax.Array) -> jax.Array:
    return -jnp.sum(jnp.where(a != 0, a * log_probs, 0.0), axis=-1)


def _weighted_nll_jvp(primals, tangents):
    # d loss = -<a, d log_probs> - <log_probs, da>, with 0 * log 0 = 0 for da.
    log_probs, a = primals
    dlog_probs, da = tangents
    loss = _weighted_nll(log_probs, a)
    dloss = jnp.zeros_like(loss)
    if not is_zero(dlog_probs):
        dloss = dloss - jnp.sum(jnp.where(a != 0, a * dlog_probs, 0.0), axis=-1)
    if not is_zero(da):
        finite = jnp.where(log_probs == -jnp.inf, 0.0, log_probs)
        dloss = dloss - jnp.sum(da * finite, axis=-1)
    return loss, dloss


_weighted_nll.defjvp(_weighted_nll_jvp, symbolic_zeros=True)


class IndexTargets(NamedTuple):
    """Class-index targets resolved once: which count, which are valid, their weights."""

    keep: jax.Array  # not ignore_index
    bad: jax.Array  # kept, but outside [0, C): the element becomes nan
    safe: jax.Array  # the index, clipped into range for gathers
    w_y: jax.Array  # the weight of each element's class (1 without weights)
    element_weight: jax.Array  # w_y on kept elements, 0 on ignored: the mean's denominator


def index_targets(targets, num_classes, weight, ignore_index, dtype) -> IndexTargets:
    keep = targets != ignore_index
    in_range = (targets >= 0) & (targets < num_classes)
    safe = jnp.where(in_range, targets, 0)
    if weight is None:
        w_y = jnp.ones(targets.shape, dtype)
    else:
        w_y = class_weight_of(weight.astype(dtype), safe)
    return IndexTargets(keep, keep & ~in_range, safe, w_y, jnp.where(keep, w_y, 0.0))


class _IndexTerms(NamedTuple):
    loss: jax.Array  # per element
    lse: jax.Array
    nll: jax.Array  # lse - x_y
    smooth: jax.Array | None  # sum_c w_c (lse - x_c) / K over live classes
    keep: jax.Array
    bad: jax.Array  # kept, but the index is outside [0, C)
    safe: jax.Array  # the index clipped into range
    w_y: jax.Array
    live: jax.Array | None  # classes that can carry probability
    count: jax.Array | None  # K
    total_w: jax.Array | None  # sum of the live classes' weights
    shift: jax.Array  # the row maximum m (keepdims)
    log_s: jax.Array  # log sum exp(x - m) (keepdims)


def _target_logit(x, index):
    """``x[..., index]``: a gather, so the only full passes over ``x`` are the max and
    the sum of exponentials. A class axis sharded in JAX's explicit sharding mode
    cannot be gathered from without collectives, so there it is a masked sum, which
    partitions into a per-device sum and one all-reduce of N floats."""
    sharding = explicit_sharding(x)
    if sharding is not None and sharding.spec[-1:] not in ((), (None,)):
        onehot = index[..., None] == jnp.arange(x.shape[-1], dtype=index.dtype)
        return jnp.sum(jnp.where(onehot, x, 0.0), axis=-1)
    return jnp.take_along_axis(x, index[..., None], axis=-1)[..., 0]


def _index_terms(x, targets, weight, eps, ignore_index, smoothing) -> _IndexTerms:
    keep, bad, safe, w_y, _ = index_targets(targets, x.shape[-1], weight, ignore_index, x.dtype)
    m, s = max_and_sum_exp(x, -1)
    lse = m[..., 0] + jnp.log(s[..., 0])
    nll = lse - _target_logit(x, safe)
    loss = w_y * nll
    smooth = live = count = total_w = None
    if smoothing:
        live = x > -jnp.inf
        count = jnp.maximum(jnp.sum(live, axis=-1), 1).astype(x.dtype)
        w = 1.0 if weight is None else weight
        # sum_c w_c (lse - x_c) = sum_c w_c (m - x_c) + W log s: no large terms cancel.
        shifted = jnp.sum(jnp.where(live, w * (m - x), 0.0), axis=-1)
        total_w = count if weight is None else jnp.sum(jnp.where(live, weight, 0.0), axis=-1)
        smooth = (shifted + total_w * jnp.log(s[..., 0])) / count
        loss = (1.0 - eps) * loss + eps * smooth
    loss = jnp.where(bad, jnp.nan, jnp.where(keep, loss, 0.0))
    return _IndexTerms(
        loss, lse, nll, smooth, keep, bad, safe, w_y, live, count, total_w, m, jnp.log(s)
    )


@functools.partial(jax.custom_jvp, nondiff_argnums=(4, 5))
def index_cross_entropy(x, targets, weight, eps, ignore_index, smoothing):
    """Per-element ``(loss, lse)`` of class-index targets along the last axis.

    The loss is ``sum_c a_c (-log p_c)`` with ``a`` as in ``index_coefficients``,
    computed without building ``a``; ``weight`` may be None.
    """
    terms = _index_terms(x, targets, weight, eps, ignore_index, smoothing)
    return terms.loss, terms.lse


def _index_cross_entropy_jvp(ignore_index, smoothing, primals, tangents):
    # d loss = <S p - a, dx> + d(w) and d(eps) terms;  d lse = <p, dx>.
    x, targets, weight, eps = primals
    dx, _, dweight, deps = tangents
    terms = _index_terms(x, targets, weight, eps, ignore_index, smoothing)
    keep = terms.keep
    dloss = jnp.zeros_like(terms.loss)
    dlse = jnp.zeros_like(terms.lse)
    if not is_zero(dx):
        # exp((x - m) - log s) rather than the forward's exp(x - m) / s: a distinct
        # expression, so XLA does not keep that N x C array alive between the passes.
        p = jnp.exp((x - terms.shift) - terms.log_s)
        onehot = terms.safe[..., None] == jnp.arange(x.shape[-1], dtype=terms.safe.dtype)
        if smoothing:
            w = 1.0 if weight is None else weight
            scale = (1.0 - eps) * terms.w_y + eps * terms.total_w / terms.count
            a = (1.0 - eps) * jnp.where(onehot, terms.w_y[..., None], 0.0) + jnp.where(
                terms.live, (eps / terms.count)[..., None] * w, 0.0
            )
        else:
            scale = terms.w_y
            a = jnp.where(onehot, terms.w_y[..., None], 0.0)
        grad = jnp.where(keep[..., None], scale[..., None] * p - a, 0.0)
        grad = jnp.where(terms.bad[..., None], jnp.nan, grad)
        dx = jnp.where(x == -jnp.inf, 0.0, dx)
        dloss = dloss + jnp.sum(grad * dx, axis=-1)
        dlse = jnp.sum(p * dx, axis=-1)
    if weight is not None and not is_zero(dweight):
        d_w = class_weight_of(dweight, terms.safe) * terms.nll
        if smoothing:
            neg_log_p = jnp.where(terms.live, terms.lse[..., None] - x, 0.0)
            d_smooth = jnp.sum(dweight * neg_log_p, axis=-1) / terms.count
            d_w = (1.0 - eps) * d_w + eps * d_smooth
        dloss = dloss + jnp.where(keep, d_w, 0.0)
    if smoothing and not is_zero(deps):
        dloss = dloss + jnp.where(keep, (terms.smooth - terms.w_y * terms.nll) * deps, 0.0)
    return (terms.loss, terms.lse), (dloss, dlse)


index_cross_entropy.defjvp(_index_cross_entropy_jvp, symbolic_zeros=True)


def index_coefficients(
    targets, num_classes, weight, ignore_index, dtype, label_smoothing=None, share=None
):
    """Coefficients for class-index targets.

    Returns ``(a, element_weight, keep)``: ``a`` is ``w[y] * onehot(y)`` (shape
    ``targets.shape + (C,)``), or with smoothing ``(1 - eps) w[y] onehot(y) + share * w``
    where ``share`` is ``eps / K`` on the live classes; ``a`` is zero on ignored
    elements and NaN on elements whose target is outside ``[0, C)``.
    ``element_weight`` is ``w[y]`` on kept elements and 0 on ignored ones (the
    mean's denominator terms).
    """
    keep, bad, safe, _, element_weight = index_targets(
        targets, num_classes, weight, ignore_index, dtype
    )
    onehot = safe[..., None] == jnp.arange(num_classes, dtype=safe.dtype)
    a = jnp.where(onehot, element_weight[..., None], 0.0)
    if share is not None:
        spread = share if weight is None else share * weight
        a = (1.0 - label_smoothing) * a + jnp.where(keep[..., None], spread, 0.0)
    a = jnp.where(bad[..., None], jnp.nan, a)
    return a, element_weight, keep


def smoothing_share(x, label_smoothing):
    """``eps / K`` on the classes that can carry probability (finite logit, kept by
    ``where``), 0 elsewhere; ``K`` counts those classes in each row."""
    valid = x > -jnp.inf
    count = jnp.maximum(jnp.sum(valid, axis=-1, keepdims=True), 1).astype(x.dtype)
    return jnp.where(valid, label_smoothing / count, 0.0)


@functools.partial(
    jax.jit,
    static_argnames=("reduction", "axis", "ignore_index", "is_index", "smoothing", "use_z_loss"),
)
def _cross_entropy(
    logits,
    targets,
    weight,
    label_smoothing,
    where,
    z_loss,
    logit_softcap,
    *,
    reduction,
    axis,
    ignore_index,
    is_index,
    smoothing,
    use_z_loss,
):
    dtype = compute_dtype(logits.dtype)
    x = jnp.moveaxis(logits, axis, -1).astype(dtype)
    if logit_softcap is not None:
        x = logit_softcap * jnp.tanh(x / logit_softcap)
    if where is not None:
        x = jnp.where(jnp.moveaxis(where, axis, -1), x, -jnp.inf)
    num_classes = x.shape[-1]
    eps = jnp.asarray(label_smoothing, dtype)
    if weight is not None:
        weight = weight.astype(dtype)
    if is_index:
        loss, lse = index_cross_entropy(x, targets, weight, eps, ignore_index, smoothing)
        resolved = index_targets(targets, num_classes, weight, ignore_index, dtype)
        keep, denominator = resolved.keep, jnp.sum(resolved.element_weight)
    else:
        t = jnp.moveaxis(targets, axis, -1).astype(dtype)
        if smoothing:
            t = (1.0 - eps) * t + smoothing_share(x, eps)
        a = t if weight is None else t * weight
        keep, denominator = None, None
        loss, lse = softmax_cross_entropy(x, a)
    if use_z_loss:
        z = jnp.asarray(z_loss, dtype) * jnp.square(lse)
        loss = loss + (z if keep is None else jnp.where(keep, z, 0.0))
    return reduce_loss(loss, reduction, denominator).astype(logits.dtype)


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
            0 weight to the mean (static). Only for index targets.
        reduction: ``"mean"``, ``"sum"`` or ``"none"`` (static).
        label_smoothing: $\varepsilon \in [0, 1]$ (may be traced).
        axis: the class axis (static); ``axis=1`` is PyTorch's ``(N, C, d1, ...)``.
        where: optional boolean mask broadcastable to ``logits``; ``False``
            classes get probability 0 and no smoothing mass.
        z_loss: coefficient of the log-partition penalty (PaLM), default 0.
        logit_softcap: optional ``c > 0`` for $c\tanh(x/c)$ (Gemma 2).

    Returns:
        A scalar, or the per-element losses (the logits' shape without ``axis``)
        for ``reduction="none"``, in the logits' dtype. 16-bit logits are
        accumulated in float32.

    PyTorch: ``F.cross_entropy(logits, targets, weight=..., ignore_index=...,
    reduction=..., label_smoothing=...)`` with ``axis=1``. Deviations: a mean
    over zero total weight (every target ignored) is 0 with zero gradient
    (PyTorch: nan); a class with logit ``-inf`` or masked by ``where`` gets
    probability 0 and no smoothing mass, so the loss stays finite (PyTorch: inf
    with smoothing); an index outside ``[0, C)`` that is not ``ignore_index``
    makes that element (and its gradient) nan (PyTorch raises). A probability
    target that puts mass on a class of probability 0 gives ``inf``, the true
    value; its gradient with respect to that target entry is taken as 0.

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
    logits = _checks.floating_input("logits", logits, min_ndim=1)
    axis = _checks.class_axis(axis, logits.ndim)
    targets, is_index = _checks.index_or_probability_targets(targets, logits.shape, axis)
    ignore_index = _checks.ignore_index(ignore_index)
    if not is_index and ignore_index != -100:
        raise ValueError(
            "ignore_index only applies to class-index targets; got probability targets "
            f"(dtype {targets.dtype}) with ignore_index={ignore_index}"
        )
    reduction = _checks.reduction(reduction)
    weight = _checks.class_weight(weight, logits.shape[axis])
    label_smoothing, z_loss, logit_softcap, smoothing, use_z_loss = _checks.logit_options(
        label_smoothing, z_loss, logit_softcap
    )
    where = _checks.where_mask(where, logits.shape)
    return _cross_entropy(
        logits,
        targets,
        weight,
        label_smoothing,
        where,
        z_loss,
        logit_softcap,
        reduction=reduction,
        axis=axis,
        ignore_index=ignore_index,
        is_index=is_index,
        smoothing=smoothing,
        use_z_loss=use_z_loss,
    )


@functools.partial(jax.jit, static_argnames=("reduction", "axis", "ignore_index"))
def _nll_loss(log_probs, targets, weight, *, reduction, axis, ignore_index):
    dtype = compute_dtype(log_probs.dtype)
    lp = jnp.moveaxis(log_probs, axis, -1).astype(dtype)
    a, element_weight, _ = index_coefficients(targets, lp.shape[-1], weight, ignore_index, dtype)
    loss = _weighted_nll(lp, a)
    return reduce_loss(loss, reduction, jnp.sum(element_weight)).astype(log_probs.dtype)


def nll_loss(
    log_probs: ArrayLike,
    targets: ArrayLike,
    *,
    weight: ArrayLike | None = None,
    ignore_index: int = -100,
    reduction: str = "mean",
    axis: int = -1,
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
        reduction: ``"mean"``, ``"sum"`` or ``"none"`` (static).
        axis: the class axis (static).

    Returns:
        A scalar, or per-element losses for ``reduction="none"``, in the input dtype.

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
    targets = _checks.as_array("targets", targets)
    if not jnp.issubdtype(targets.dtype, jnp.integer):
        raise TypeError(
            f"nll_loss takes integer class-index targets, got dtype {targets.dtype}; "
            "for probability targets use cross_entropy"
        )
    targets, _ = _checks.index_or_probability_targets(targets, log_probs.shape, axis)
    weight = _checks.class_weight(weight, log_probs.shape[axis])
    return _nll_loss(
        log_probs,
        targets,
        weight,
        reduction=_checks.reduction(reduction),
        axis=axis,
        ignore_index=_checks.ignore_index(ignore_index),
    )
