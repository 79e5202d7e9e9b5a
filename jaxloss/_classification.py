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

IGNORED = -1  # the code of an element whose target is ignore_index
OUT_OF_RANGE = -2  # the code of a kept element whose target is outside [0, C)


def target_codes(targets: jax.Array, num_classes: int, ignore_index: int) -> jax.Array:
    """Class-index targets of any integer dtype as int32 codes: the class in ``[0, C)``,
    ``IGNORED`` or ``OUT_OF_RANGE``.

    Every comparison is made in the targets' own dtype, and only where its operand
    fits that dtype: ``ignore_index`` and ``C`` are mathematical integers, so a value
    the dtype cannot hold (-100 for ``uint8`` targets, 300 classes for ``int8``)
    never matches a target by wrapping around. Once resolved, every dtype gives the
    same int32 array, so the same losses and gradients, bit for bit.
    """
    info = jnp.iinfo(targets.dtype)
    if info.min <= ignore_index <= info.max:
        keep = targets != ignore_index
    else:
        keep = jnp.ones(targets.shape, bool)
    in_range = targets >= 0 if info.min < 0 else jnp.ones(targets.shape, bool)
    if num_classes <= info.max:
        in_range = in_range & (targets < num_classes)
    index = jnp.where(in_range, targets, 0).astype(jnp.int32)
    codes = jnp.where(keep, jnp.where(in_range, index, OUT_OF_RANGE), IGNORED)
    # The barrier keeps XLA from fusing the dtype-specific comparisons into the loss,
    # so that the program after it, and so its rounding, is the same for every dtype.
    return jax.lax.optimization_barrier(codes)


# Called by the public functions before their core: the core is then one program for
# every target dtype and ignore_index, compiled once and rounding alike.
resolve_targets = jax.jit(target_codes, static_argnums=(1, 2))


class IndexTargets(NamedTuple):
    """Resolved class-index targets (from ``target_codes``), used by field name."""

    class_index: jax.Array  # int32 class, 0 where ignored or out of range (safe to gather)
    keep: jax.Array  # the target is not ignore_index
    bad: jax.Array  # kept, but outside [0, C): the element's loss and gradient are nan


def index_targets(codes: jax.Array) -> IndexTargets:
    return IndexTargets(jnp.maximum(codes, 0), codes != IGNORED, codes == OUT_OF_RANGE)


def target_weight(weight: jax.Array | None, index: jax.Array, dtype) -> jax.Array:
    """``weight[index]``, or ones without class weights."""
    if weight is None:
        return jnp.ones(index.shape, dtype)
    return class_weight_of(weight.astype(dtype), index)


def smoothing_is_on(smoothing: bool, eps: jax.Array, weight: jax.Array | None):
    """Whether the smoothing term can be nonzero: a static flag refined at run time
    (a traced ``eps`` of 0, or class weights that are all 0, turn it off)."""
    if not smoothing:
        return jnp.zeros((), bool)
    on = eps != 0
    return on if weight is None else on & jnp.any(weight != 0)


def contributing(
    targets: IndexTargets, w_y: jax.Array, eps, smoothing: bool, weight, use_z_loss: bool
) -> jax.Array:
    """The elements whose loss can be nonzero: kept, with a nonzero coefficient (target
    weight, smoothing or z-loss), or out of range (their loss is nan). The others add
    exactly 0 to the loss and to every gradient of the logits, whatever their logits hold."""
    coefficient = w_y if not smoothing else (1.0 - eps) * w_y
    live = (coefficient != 0) | smoothing_is_on(smoothing, eps, weight)
    if use_z_loss:
        live = jnp.ones_like(live)
    return targets.keep & (live | targets.bad)


def xent_terms(x, a, m, s):
    """Cross-entropy and log-sum-exp along the last axis from the shift ``m`` and sum ``s``.

    ``sum_c a_c (lse - x_c)`` is evaluated as ``S log s + sum_c a_c (m - x_c)`` with
    ``S = sum_c a_c``: no two large numbers are subtracted, so adding a constant to a
    row of logits changes the loss only by the rounding of the logits themselves.

    A class with logit ``-inf`` (masked) has ``m - x_c = inf``, which is clamped to the
    largest float: a class with ``a_c = 0`` then contributes exactly 0 rather than
    ``0 * inf = nan``, and one with ``a_c > 0`` contributes ``a_c`` times the largest
    float, standing in for the true ``inf``. (A select or a second reduction here would
    make XLA's CPU backend materialize an N x C temporary.) A row that is all ``-inf``
    has ``s = 0``; its ``S log s`` term is 0 when ``S = 0``.
    """
    biggest = jnp.finfo(x.dtype).max
    total = jnp.sum(a, axis=-1)
    cross = -jnp.sum(a * jnp.maximum(x - m, -biggest), axis=-1)
    loss = total * jnp.log(jnp.maximum(s[..., 0], 1.0)) + cross
    return loss, m[..., 0] + jnp.log(s[..., 0])


def logit_gradient(scale, p, a):
    """``scale * p - a``: the gradient of ``sum_c a_c (-log p_c)`` (times ``scale = S``)
    in the logits, exactly 0 for a class whose coefficient and row scale are both 0, so
    that a row that adds nothing passes no gradient, even from non-finite logits."""
    return jnp.where((scale != 0) | (a != 0), scale * p - a, 0.0)


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
        grad = logit_gradient(jnp.sum(a, axis=-1, keepdims=True), p, a)
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


class _IndexTerms(NamedTuple):
    loss: jax.Array  # per element
    lse: jax.Array  # log-sum-exp of contributing elements, 0 elsewhere
    nll: jax.Array  # lse - x_y
    smooth: jax.Array | None  # sum_c w_c (lse - x_c) / K over live classes
    w_y: jax.Array
    live: jax.Array | None  # classes that can carry probability
    live_count: jax.Array | None  # K, the classes that can carry probability
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


def _index_terms(x, targets, counted, weight, eps, smoothing) -> _IndexTerms:
    w_y = target_weight(weight, targets.class_index, x.dtype)
    m, s = max_and_sum_exp(x, -1)
    log_s = jnp.log(s[..., 0])
    # (m - x_y) + log s, not lse - x_y: the difference of the two large logits is
    # exact, so a common offset of the row does not change the loss.
    nll = (m[..., 0] - _target_logit(x, targets.class_index)) + log_s
    target_coefficient = w_y
    smooth = live = count = total_w = None
    if smoothing:
        target_coefficient = (1.0 - eps) * w_y
        live = x != -jnp.inf
        count = jnp.maximum(jnp.sum(live, axis=-1), 1).astype(x.dtype)
        w = 1.0 if weight is None else weight
        # sum_c w_c (lse - x_c) = sum_c w_c (m - x_c) + W log s, W = sum_c w_c over the
        # live classes: no large terms cancel.
        shifted = jnp.sum(jnp.where(live, w * (m - x), 0.0), axis=-1)
        total_w = count if weight is None else jnp.sum(jnp.where(live, weight, 0.0), axis=-1)
        smooth = (shifted + total_w * log_s) / count
    loss = jnp.where(target_coefficient != 0, target_coefficient * nll, 0.0)
    if smoothing:
        loss = loss + jnp.where(smoothing_is_on(True, eps, weight), eps * smooth, 0.0)
    loss = jnp.where(targets.bad, jnp.nan, jnp.where(counted, loss, 0.0))
    lse = jnp.where(counted, m[..., 0] + log_s, 0.0)
    return _IndexTerms(loss, lse, nll, smooth, w_y, live, count, total_w, m, log_s[..., None])


@functools.partial(jax.custom_jvp, nondiff_argnums=(5,))
def index_cross_entropy(x, targets: IndexTargets, counted, weight, eps, smoothing):
    """Per-element ``(loss, lse)`` of class-index targets along the last axis.

    The loss is ``sum_c a_c (-log p_c)`` with ``a`` as in ``index_coefficients``,
    computed without building ``a``; ``weight`` may be None. Elements outside
    ``counted`` (see ``contributing``) have loss 0, lse 0 and no gradient.
    """
    terms = _index_terms(x, targets, counted, weight, eps, smoothing)
    return terms.loss, terms.lse


def _index_cross_entropy_jvp(smoothing, primals, tangents):
    # d loss = <S p - a, dx> + d(w) and d(eps) terms;  d lse = <p, dx>.
    x, targets, counted, weight, eps = primals
    dx, _, _, dweight, deps = tangents
    terms = _index_terms(x, targets, counted, weight, eps, smoothing)
    keep = targets.keep
    dloss = jnp.zeros_like(terms.loss)
    dlse = jnp.zeros_like(terms.lse)
    if not is_zero(dx):
        # exp((x - m) - log s) rather than the forward's exp(x - m) / s: a distinct
        # expression, so XLA does not keep that N x C array alive between the passes.
        p = jnp.exp((x - terms.shift) - terms.log_s)
        onehot = targets.class_index[..., None] == jnp.arange(
            x.shape[-1], dtype=targets.class_index.dtype
        )
        if smoothing:
            w = 1.0 if weight is None else weight
            scale = (1.0 - eps) * terms.w_y + eps * terms.total_w / terms.live_count
            a = (1.0 - eps) * jnp.where(onehot, terms.w_y[..., None], 0.0) + jnp.where(
                terms.live, (eps / terms.live_count)[..., None] * w, 0.0
            )
        else:
            scale = terms.w_y
            a = jnp.where(onehot, terms.w_y[..., None], 0.0)
        grad = jnp.where(counted[..., None], scale[..., None] * p - a, 0.0)
        grad = jnp.where(targets.bad[..., None], jnp.nan, grad)
        dx = jnp.where(x == -jnp.inf, 0.0, dx)
        dloss = dloss + jnp.sum(grad * dx, axis=-1)
        # Masked before the product: transposed, 0 * p would be nan for a row of nan logits.
        dlse = jnp.sum(jnp.where(counted[..., None], p, 0.0) * dx, axis=-1)
    if weight is not None and not is_zero(dweight):
        d_w = class_weight_of(dweight, targets.class_index) * terms.nll
        if smoothing:
            neg_log_p = jnp.where(terms.live, terms.lse[..., None] - x, 0.0)
            d_smooth = jnp.sum(dweight * neg_log_p, axis=-1) / terms.live_count
            d_w = (1.0 - eps) * d_w + eps * d_smooth
        dloss = dloss + jnp.where(keep & ~targets.bad, d_w, 0.0)
    if smoothing and not is_zero(deps):
        d_eps = terms.smooth - terms.w_y * terms.nll
        dloss = dloss + jnp.where(keep & ~targets.bad, d_eps * deps, 0.0)
    return (terms.loss, terms.lse), (dloss, dlse)


index_cross_entropy.defjvp(_index_cross_entropy_jvp, symbolic_zeros=True)


def index_coefficients(targets: IndexTargets, num_classes, weight, dtype, eps=None, share=None):
    """Coefficients for class-index targets.

    Returns ``(a, element_weight)``: ``a`` is ``w[y] * onehot(y)`` (shape
    ``targets.class_index.shape + (C,)``), or with smoothing
    ``(1 - eps) w[y] onehot(y) + share * w`` where ``share`` is ``eps / K`` on the
    live classes; ``a`` is zero on ignored elements and NaN on elements whose target
    is outside ``[0, C)``.
    ``element_weight`` is ``w[y]`` on kept elements and 0 on ignored ones (the
    mean's denominator terms).
    """
    w_y = target_weight(weight, targets.class_index, dtype)
    element_weight = jnp.where(targets.keep, w_y, 0.0)
    onehot = targets.class_index[..., None] == jnp.arange(
        num_classes, dtype=targets.class_index.dtype
    )
    a = jnp.where(onehot, element_weight[..., None], 0.0)
    if share is not None:
        spread = share if weight is None else share * weight
        a = (1.0 - eps) * a + jnp.where(targets.keep[..., None], spread, 0.0)
    a = jnp.where(targets.bad[..., None], jnp.nan, a)
    return a, element_weight


def smoothing_share(x, label_smoothing):
    """``eps / K`` on the classes that can carry probability (finite logit, kept by
    ``where``), 0 elsewhere; ``K`` counts those classes in each row."""
    valid = x != -jnp.inf
    count = jnp.maximum(jnp.sum(valid, axis=-1, keepdims=True), 1).astype(x.dtype)
    return jnp.where(valid, label_smoothing / count, 0.0)


@functools.partial(
    jax.jit,
    static_argnames=("reduction", "axis", "is_index", "smoothing", "use_z_loss"),
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
    is_index,
    smoothing,
    use_z_loss,
):
    dtype = compute_dtype(logits.dtype)
    x = jnp.moveaxis(logits, axis, -1).astype(dtype)
    eps = jnp.asarray(label_smoothing, dtype)
    if weight is not None:
        weight = weight.astype(dtype)
    if is_index:
        resolved = index_targets(targets)
        w_y = target_weight(weight, resolved.class_index, dtype)
        counted = contributing(resolved, w_y, eps, smoothing, weight, use_z_loss)
        if logit_softcap is not None:
            # The core passes no gradient to rows that add nothing, but tanh's derivative
            # at a nan logit is nan (and 0 * nan = nan): such rows are kept out of it.
            x = jnp.where(counted[..., None], x, 0.0)
    if logit_softcap is not None:
        x = logit_softcap * jnp.tanh(x / logit_softcap)
    if where is not None:
        x = jnp.where(jnp.moveaxis(where, axis, -1), x, -jnp.inf)
    if is_index:
        loss, lse = index_cross_entropy(x, resolved, counted, weight, eps, smoothing)
        denominator = jnp.sum(jnp.where(resolved.keep, w_y, 0.0))
    else:
        t = jnp.moveaxis(targets, axis, -1).astype(dtype)
        if smoothing:
            t = (1.0 - eps) * t + smoothing_share(x, eps)
        a = t if weight is None else t * weight
        denominator = None
        loss, lse = softmax_cross_entropy(x, a)
    if use_z_loss:
        loss = loss + jnp.asarray(z_loss, dtype) * jnp.square(lse)
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
            0 weight to the mean (static, a Python int; a value the targets' dtype
            cannot hold matches nothing). Only for index targets.
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

    Edge cases: class indices may have any integer dtype, with the same results
    as ``int32``, and ``ignore_index`` is compared as a mathematical integer (a
    value the dtype cannot hold matches nothing). An element that adds nothing
    (ignored, or a class weight of 0 without smoothing or z-loss) contributes
    exactly 0 to the loss and to the logits' gradient, even if its logits are
    ``nan`` or infinite. A ``nan`` or ``+inf`` logit in a counted element makes
    it ``nan``. A row's loss does not change when a constant is added to its
    logits, up to the rounding of the logits themselves. A probability target
    that puts mass on a class of probability 0 gives a loss of at least that
    mass times the largest float (standing in for the true ``inf``); its
    gradient with respect to that target entry is taken as 0.

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
    logits = _checks.floating_input("logits", logits, min_ndim=1)
    axis = _checks.class_axis(axis, logits.ndim)
    _checks.has_classes("logits", logits.shape, axis)
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
    if is_index:
        targets = resolve_targets(targets, logits.shape[axis], ignore_index)
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
        is_index=is_index,
        smoothing=smoothing,
        use_z_loss=use_z_loss,
    )


@functools.partial(jax.jit, static_argnames=("reduction", "axis"))
def _nll_loss(log_probs, codes, weight, *, reduction, axis):
    dtype = compute_dtype(log_probs.dtype)
    lp = jnp.moveaxis(log_probs, axis, -1).astype(dtype)
    resolved = index_targets(codes)
    a, element_weight = index_coefficients(resolved, lp.shape[-1], weight, dtype)
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
    weight = _checks.class_weight(weight, log_probs.shape[axis])
    ignore_index = _checks.ignore_index(ignore_index)
    reduction = _checks.reduction(reduction)
    codes = resolve_targets(targets, log_probs.shape[axis], ignore_index)
    return _nll_loss(log_probs, codes, weight, reduction=reduction, axis=axis)
