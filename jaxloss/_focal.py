"""Focal and poly losses: ``sigmoid_focal_loss``, ``softmax_focal_loss`` and
``poly1_cross_entropy``.

The two softmax losses are ``sum_c a_c h(p_c)`` with the coefficients ``a`` of
``cross_entropy`` (targets, class weights, smoothing, ignored elements) and a per-class
function ``h`` of the probability: ``(1 - p)^gamma (-log p)`` (focal) or
``-log p + epsilon (1 - p)`` (Poly-1). Their logit gradient has cross-entropy's form
``S p - b`` with ``b_c = -a_c p_c h'(p_c)`` and ``S = sum_c b_c``, one custom JVP rule
for both. The sigmoid focal loss builds on the binary module's softplus terms.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax.typing import ArrayLike

from jaxloss import _checks
from jaxloss._binary import _bce_with_logits_terms, _binary_targets, _elementwise_weight
from jaxloss._reduce import compute_dtype, is_zero, reduce_loss, reduce_tokens, times
from jaxloss._softmax import _log_sigmoid, max_and_sum_exp
from jaxloss._targets import resolve_targets
from jaxloss._xent import (
    IndexTargets,
    Options,
    coefficient_columns,
    drop_minus_inf_tangent,
    logit_gradient,
    smoothing_share,
    target_logit,
    target_weight,
)

FOCAL, POLY1 = "focal", "poly1"


def _modulation(kind: str, log_p, param):
    """``h(p)`` and ``-p h'(p)`` per class, from ``log p`` (``param`` is gamma or epsilon).

    Focal: with ``u = 1 - p`` (as ``-expm1(log p)``, exact near ``p = 1``),
    ``h = u^gamma (-log p)`` and ``-p h' = u^gamma (1 + gamma p r)``, ``r = -log p / u``.
    ``r`` is in ``[1, inf)`` and tends to 1 as ``p -> 1``: the factor ``u^(gamma - 1)``
    of ``h'``, unbounded there for ``gamma < 1``, only appears multiplied by ``-log p``,
    which vanishes as fast. So the rule is finite for every ``gamma >= 0`` and returns
    the exact limit, ``u^gamma``, where ``u = 0``.
    """
    p = jnp.exp(log_p)
    if kind == POLY1:
        return -log_p + param * (1.0 - p), 1.0 + param * p
    u = -jnp.expm1(log_p)
    scale = jnp.power(u, param)
    ratio = jnp.where(u > 0, -log_p / jnp.where(u > 0, u, 1.0), 1.0)
    # p r = -p log p / u tends to 0 as p -> 0: a -inf logit gives 0, not 0 * inf.
    return scale * -log_p, scale * (1.0 + param * times(p, ratio))


def _modulated_terms(x, a, kind, param):
    m, s = max_and_sum_exp(x, -1)
    log_p = (x - m) - jnp.log(s)
    h, b = _modulation(kind, log_p, param)
    # A class with a_c = 0 adds exactly 0 (a masked class has log p = -inf).
    loss = jnp.sum(jnp.where(a != 0, a * h, 0.0), axis=-1)
    return loss, log_p, h, jnp.where(a != 0, a * b, 0.0)


@functools.partial(jax.custom_jvp, nondiff_argnums=(2,))
def _modulated_cross_entropy(x, a, kind: str, param):
    """``sum_c a_c h(p_c)`` along the last axis; ``param`` carries no tangent."""
    return _modulated_terms(x, a, kind, param)[0]


def _modulated_cross_entropy_jvp(kind, primals, tangents):
    # d loss = <S p - b, dx> + <h(p), da>, b_c = -a_c p_c h'(p_c), S = sum_c b_c.
    x, a, param = primals
    dx, da, _ = tangents
    loss, log_p, h, b = _modulated_terms(x, a, kind, param)
    dloss = jnp.zeros_like(loss)
    if not is_zero(dx):
        p = jnp.exp(log_p)
        grad = logit_gradient(jnp.sum(b, axis=-1, keepdims=True), p, b)
        dloss = dloss + jnp.sum(grad * drop_minus_inf_tangent(x, dx), axis=-1)
    if not is_zero(da):
        dloss = dloss + jnp.sum(jnp.where(x == -jnp.inf, 0.0, h) * da, axis=-1)
    return loss, dloss


_modulated_cross_entropy.defjvp(_modulated_cross_entropy_jvp, symbolic_zeros=True)


def _index_modulated_terms(x, targets: IndexTargets, element_weight, kind, param):
    """``_modulated_terms`` for class-index targets without smoothing, where only the
    target class has a coefficient: ``h`` and ``b`` per row from the gathered target
    logit, so the only passes over the classes are the softmax's."""
    m, s = max_and_sum_exp(x, -1)
    log_s = jnp.log(s)
    x_y = target_logit(x, targets.class_index)
    h, b = _modulation(kind, (x_y - m[..., 0]) - log_s[..., 0], param)
    counted = element_weight != 0
    loss = jnp.where(targets.bad, jnp.nan, jnp.where(counted, element_weight * h, 0.0))
    # d loss / d w: h, taken as 0 at a -inf target logit (0 * log 0 = 0) and where the
    # target is out of range.
    dloss_dweight = jnp.where(targets.bad | (x_y == -jnp.inf), 0.0, h)
    return loss, jnp.where(counted, element_weight * b, 0.0), dloss_dweight, m, log_s


@functools.partial(jax.custom_jvp, nondiff_argnums=(3,))
def _index_modulated_cross_entropy(x, targets: IndexTargets, element_weight, kind: str, param):
    return _index_modulated_terms(x, targets, element_weight, kind, param)[0]


def _index_modulated_cross_entropy_jvp(kind, primals, tangents):
    # The rule of _modulated_cross_entropy with b zero but for the target: S = b_y.
    x, targets, element_weight, param = primals
    dx, _, dweight, _ = tangents
    loss, b, dloss_dweight, m, log_s = _index_modulated_terms(
        x, targets, element_weight, kind, param
    )
    dloss = jnp.zeros_like(loss)
    if not is_zero(dx):
        p = jnp.exp(x - m) * jnp.exp(-log_s)
        onehot = targets.class_index[..., None] == jnp.arange(x.shape[-1], dtype=jnp.int32)
        grad = logit_gradient(b[..., None], p, jnp.where(onehot, b[..., None], 0.0))
        grad = jnp.where(targets.bad[..., None], jnp.nan, grad)
        dloss = dloss + jnp.sum(grad * drop_minus_inf_tangent(x, dx), axis=-1)
    if not is_zero(dweight):
        dloss = dloss + dloss_dweight * dweight
    return loss, dloss


_index_modulated_cross_entropy.defjvp(_index_modulated_cross_entropy_jvp, symbolic_zeros=True)


def _index_modulated(x, codes, class_weight, eps, options: Options, kind: str, param):
    """Per-element loss of class-index targets, and each element's share of the mean."""
    targets = IndexTargets.from_codes(codes)
    w_y = target_weight(class_weight, targets.class_index, x.dtype)
    element_weight = jnp.where(targets.keep, w_y, 0.0)
    if not options.has_smoothing:
        # A row that adds nothing is kept out of the softmax: its logits may be nan.
        adds = (element_weight != 0) | targets.bad
        x = jnp.where(adds[..., None], x, 0.0)
        loss = _index_modulated_cross_entropy(x, targets, element_weight, kind, param)
        return loss, element_weight
    share = smoothing_share(x, eps)
    spread = share if class_weight is None else share * class_weight
    columns = jnp.arange(x.shape[-1], dtype=jnp.int32)
    a = coefficient_columns(targets, element_weight, columns, eps, spread)
    x = jnp.where(jnp.any(a != 0, axis=-1, keepdims=True), x, 0.0)
    return _modulated_cross_entropy(x, a, kind, param), element_weight


@functools.partial(jax.jit, static_argnums=(5, 6))
def _softmax_modulated(logits, targets, class_weight, label_smoothing, where, options, kind, param):
    dtype = compute_dtype(logits.dtype)
    x = jnp.moveaxis(logits, options.axis, -1).astype(dtype)
    param = jax.lax.stop_gradient(jnp.asarray(param, dtype))
    if class_weight is not None:
        class_weight = class_weight.astype(dtype)
    eps = jnp.asarray(label_smoothing, dtype)
    if where is not None:
        x = jnp.where(jnp.moveaxis(where, options.axis, -1), x, -jnp.inf)
    if options.targets_are_indices:
        loss, share_of_mean = _index_modulated(x, targets, class_weight, eps, options, kind, param)
    else:
        t = jnp.moveaxis(targets, options.axis, -1).astype(dtype)
        if options.has_smoothing:
            t = (1.0 - eps) * t + smoothing_share(x, eps)
        a = t if class_weight is None else t * class_weight
        loss = _modulated_cross_entropy(x, a, kind, param)
        share_of_mean = jnp.ones(x.shape[:-1], dtype)
    no_tokens = _checks.TokenWeighting(None, None, None)
    return reduce_tokens(loss, share_of_mean, options.reduction, no_tokens).astype(logits.dtype)


def _softmax_arguments(
    logits, targets, weight, ignore_index, reduction, label_smoothing, axis, where
):
    logits, axis, targets, is_index, ignore_index = _checks.softmax_logits_and_targets(
        logits, targets, axis, ignore_index
    )
    has_smoothing = not _checks.is_static_zero(label_smoothing)
    label_smoothing = _checks.real_scalar(
        "label_smoothing", label_smoothing, minimum=0.0, maximum=1.0
    )
    class_weight = _checks.class_weight(weight, logits.shape[axis])
    where = _checks.where_mask(where, logits.shape)
    if is_index:
        targets = resolve_targets(targets, logits.shape[axis], ignore_index)
    options = Options(
        reduction=_checks.reduction(reduction),
        axis=axis,
        targets_are_indices=is_index,
        has_smoothing=has_smoothing,
    )
    return logits, targets, class_weight, label_smoothing, where, options


def softmax_focal_loss(
    logits: ArrayLike,
    targets: ArrayLike,
    *,
    gamma: ArrayLike = 2.0,
    alpha: ArrayLike | None = None,
    ignore_index: int = -100,
    reduction: str = "mean",
    label_smoothing: ArrayLike = 0.0,
    axis: int = -1,
    where: ArrayLike | None = None,
) -> jax.Array:
    r"""Focal loss of a softmax classifier (Lin et al., 2017), for imbalanced classes.

    Cross-entropy with each class's term scaled down by $(1 - p_c)^\gamma$, so that
    well-classified examples count less:

    $$
    \ell_n = \sum_c a_{n,c}\,(1 - p_{n,c})^\gamma\,(-\log p_{n,c}),
    $$

    with the coefficients $a$ of [`cross_entropy`][jaxloss.cross_entropy] (the target,
    ``alpha`` as class weights, label smoothing, ``ignore_index``). At
    $\gamma = 0$ it is ``cross_entropy(logits, targets, weight=alpha, ...)``; with
    index targets and no smoothing it is $-\alpha_y (1 - p_y)^\gamma \log p_y$, Keras's
    ``CategoricalFocalCrossentropy`` formula (whose ``alpha`` is one scalar).

    Gradient (the custom JVP rule): with $u = 1 - p$,
    $b_c = a_c\,u_c^\gamma\,(1 + \gamma\,p_c\,r_c)$ and $r_c = -\log p_c / u_c$,

    $$
    \frac{\partial \ell_n}{\partial x_{n,j}} = p_{n,j} \sum_c b_{n,c} - b_{n,j},
    \qquad \frac{\partial \ell_n}{\partial a_{n,c}} = u_c^\gamma (-\log p_c).
    $$

    $r_c \in [1, \infty)$ tends to 1 as $p_c \to 1$: the derivative of $u^\gamma$,
    unbounded at $u = 0$ for $0 < \gamma < 1$, enters only multiplied by $-\log p_c$,
    which vanishes as fast, so the rule is finite for every $\gamma \ge 0$ and gives
    the exact limit where $p_c$ rounds to 1. ``alpha`` (the class weights) gets its
    true gradient, $\sum_n \partial \ell_n / \partial a_{n,c}$ through the
    coefficients; ``gamma`` carries none (it is held constant by ``stop_gradient``).

    Args:
        logits: floating ``[..., num_classes, ...]`` with the classes on ``axis``.
        targets: integer class indices (the logits' shape without ``axis``) or floating
            probabilities (the logits' shape, differentiable).
        gamma: the focusing parameter $\gamma \ge 0$ (may be traced).
        alpha: optional ``[num_classes]`` class weights, or a scalar for all classes
            (which, like any common factor of the class weights, cancels in ``"mean"``).
        ignore_index: index targets equal to it add nothing (static).
        reduction: ``"mean"``, ``"sum"`` or ``"none"`` (static); ``"mean"`` divides by
            $\sum_n \alpha_{y_n}$ over kept elements, as ``cross_entropy`` does.
        label_smoothing: $\varepsilon \in [0, 1]$.
        axis: the class axis (static).
        where: optional boolean mask of the available classes.

    Returns:
        A scalar, or per-element losses for ``reduction="none"``, in the logits' dtype
        (16-bit logits accumulate in float32).

    Examples:
        >>> import jax, jax.numpy as jnp
        >>> import jaxloss as jl
        >>> jnp.set_printoptions(precision=4)
        >>> logits = jnp.array([[2.0, 0.0, -1.0], [0.5, 0.4, 0.3]])
        >>> targets = jnp.array([0, 2])
        >>> jl.softmax_focal_loss(logits, targets, reduction="none")
        Array([0.0041, 0.5879], dtype=float32)
        >>> jl.softmax_focal_loss(logits, targets, gamma=0.0)  # cross-entropy
        Array(0.6859, dtype=float32)
        >>> jax.grad(jl.softmax_focal_loss)(logits, targets)
        Array([[-0.0054,  0.0039,  0.0015],
               [ 0.1826,  0.1652, -0.3478]], dtype=float32)
    """
    x, targets, class_weight, smoothing, where, options = _softmax_arguments(
        logits, targets, None, ignore_index, reduction, label_smoothing, axis, where
    )
    gamma = _checks.real_scalar("gamma", gamma, minimum=0.0)
    if alpha is not None:
        alpha = _checks.floating_input("alpha", alpha)
        num_classes = x.shape[options.axis]
        if alpha.ndim == 0:
            alpha = jnp.broadcast_to(alpha, (num_classes,))
        class_weight = _checks.class_weight(alpha, num_classes, name="alpha")
    return _softmax_modulated(x, targets, class_weight, smoothing, where, options, FOCAL, gamma)


def poly1_cross_entropy(
    logits: ArrayLike,
    targets: ArrayLike,
    *,
    epsilon: ArrayLike = 1.0,
    weight: ArrayLike | None = None,
    ignore_index: int = -100,
    reduction: str = "mean",
    label_smoothing: ArrayLike = 0.0,
    axis: int = -1,
    where: ArrayLike | None = None,
) -> jax.Array:
    r"""Poly-1 cross-entropy (Leng et al., 2022, "PolyLoss"): cross-entropy plus
    $\epsilon$ times the first polynomial term of its expansion, $1 - p_t$.

    $$
    \ell_n = \sum_c a_{n,c}\,\big(-\log p_{n,c} + \epsilon\,(1 - p_{n,c})\big),
    $$

    with the coefficients $a$ of [`cross_entropy`][jaxloss.cross_entropy]. Without
    weights this is $\mathrm{CE} + \epsilon (1 - p_t)$ with
    $p_t = \sum_c \tilde t_c\, p_c$ for the (smoothed) target distribution $\tilde t$;
    class weights scale both terms of a class alike. $\epsilon = 0$ is
    ``cross_entropy``.

    Gradient (the custom JVP rule): with $b_c = a_c (1 + \epsilon p_c)$,
    $\partial \ell_n / \partial x_{n,j} = p_{n,j} \sum_c b_{n,c} - b_{n,j}$, i.e.
    cross-entropy's $S p - a$ plus $\epsilon\, p \odot (\sum_c a_c p_c - a)$;
    $\partial \ell_n / \partial a_{n,c} = -\log p_{n,c} + \epsilon (1 - p_{n,c})$.
    ``epsilon`` carries no gradient.

    Args:
        logits: floating ``[..., num_classes, ...]`` with the classes on ``axis``.
        targets: integer class indices (the logits' shape without ``axis``) or floating
            probabilities (the logits' shape, differentiable).
        weight: optional ``[num_classes]`` class weights.
        ignore_index: index targets equal to it add nothing (static).
        reduction: ``"mean"``, ``"sum"`` or ``"none"`` (static), as in
            [`cross_entropy`][jaxloss.cross_entropy].
        label_smoothing: $\varepsilon \in [0, 1]$.
        axis: the class axis (static).
        where: optional boolean mask of the available classes.
        epsilon: the coefficient $\epsilon$ of $1 - p_t$, at least -1 (may be traced).

    Returns:
        A scalar, or per-element losses for ``reduction="none"``, in the logits' dtype.

    Examples:
        >>> import jax, jax.numpy as jnp
        >>> import jaxloss as jl
        >>> jnp.set_printoptions(precision=4)
        >>> logits = jnp.array([[2.0, 0.0, -1.0], [0.5, 0.4, 0.3]])
        >>> targets = jnp.array([0, 2])
        >>> jl.poly1_cross_entropy(logits, targets, reduction="none")
        Array([0.3261, 1.9013], dtype=float32)
        >>> jax.grad(jl.poly1_cross_entropy)(logits, targets)
        Array([[-0.144 ,  0.1053,  0.0387],
               [ 0.2388,  0.216 , -0.4548]], dtype=float32)
    """
    logits, targets, class_weight, smoothing, where, options = _softmax_arguments(
        logits, targets, weight, ignore_index, reduction, label_smoothing, axis, where
    )
    epsilon = _checks.real_scalar("epsilon", epsilon, minimum=-1.0)
    return _softmax_modulated(
        logits, targets, class_weight, smoothing, where, options, POLY1, epsilon
    )


# --- sigmoid focal loss --------------------------------------------------------------


def integer_exponent(gamma) -> int | None:
    """``gamma`` as a static int where the caller passed a Python number with an integer
    value (the usual ``gamma=2``): ``q**2`` is then a multiplication, not
    ``exp(gamma log q)``. None for anything else (a non-integer value, an array, a
    traced value)."""
    if isinstance(gamma, (int, float)) and not isinstance(gamma, bool):
        if float(gamma).is_integer() and 0 <= gamma <= 8:
            return int(gamma)
    return None


def _sigmoid_focal_terms(x, t, pw, gamma, exponent):
    """The focal factor ``q^gamma`` with ``q = 1 - p_t``, the cross-entropy, the ratio
    ``s (1 - s)(1 - 2t) / q`` of the gradient, ``s = sigmoid(x)`` and ``1 - s``.

    With ``hi`` and ``lo`` the larger and the smaller of ``s`` and ``1 - s``
    (``1 / (1 + e)`` and ``e / (1 + e)``, ``e = exp(-|x|)``) and ``c = 1 - t`` for
    ``x >= 0``, ``c = t`` otherwise: ``q = c hi + (1 - c) lo``, and the ratio is
    ``(1 - 2t) lo / m`` with ``m = c + (1 - c) lo / hi`` (``q / hi``). Neither divides by
    ``q`` nor takes the log of an underflowed one: at ``c = 0`` (a hard target on the
    saturated side) ``q = lo``, ``log q = log_sigmoid(-|x|)`` and the ratio is
    ``(1 - 2t) hi``. So every derivative stays finite at any finite logit, and the
    limits hold at infinite ones.
    """
    s, s_bar = jax.nn.sigmoid(x), jax.nn.sigmoid(-x)
    positive = x >= 0
    hi, lo = jnp.where(positive, s, s_bar), jnp.where(positive, s_bar, s)
    c = jnp.where(positive, 1.0 - t, t)
    hard = c == 0
    mixed = jnp.where(hard, 1.0, c + (1.0 - c) * lo / hi)
    ratio = (1.0 - 2.0 * t) * jnp.where(hard, hi, lo / mixed)
    if exponent is not None:  # q itself: a product, no log or exp
        factor = jax.lax.integer_pow(c * hi + (1.0 - c) * lo, exponent)
    else:
        ax = jnp.where(positive, x, -x)  # |x|, with the slope of the x >= 0 side at 0
        log_q = jnp.where(hard, 0.0, jnp.log(mixed)) + _log_sigmoid(jnp.where(hard, -ax, ax))
        off = gamma == 0  # q^0 = 1, even where q = 0
        factor = jnp.where(off, 1.0, jnp.exp(jnp.where(off, 1.0, gamma) * log_q))
    ce = _bce_with_logits_terms(x, t, pw)[2]
    return factor, ce, ratio, s, s_bar


@functools.partial(jax.custom_jvp, nondiff_argnums=(5,))
def _sigmoid_focal(x, t, balance, pw, gamma, exponent: int | None):
    factor, ce, *_ = _sigmoid_focal_terms(x, t, pw, gamma, exponent)
    return times(balance, times(factor, ce))


def _sigmoid_focal_jvp(exponent, primals, tangents):
    # d/dx [q^gamma ce] = gamma q^gamma (dq/dx / q) ce + q^gamma dce/dx, where
    # dq/dx = s (1 - s)(1 - 2t) and |dq/dx / q| <= 1 (q >= min(s, 1 - s) for t in
    # [0, 1]): finite for every gamma >= 0, and 0 where q = 0. d/d balance = q^gamma ce.
    x, t, balance, pw, gamma = primals
    dx, _, dbalance, _, _ = tangents
    factor, ce, ratio, s, s_bar = _sigmoid_focal_terms(x, t, pw, gamma, exponent)
    focal = times(factor, ce)
    loss = times(balance, focal)
    dloss = jnp.zeros_like(loss)
    if not is_zero(dx):
        dce = (1.0 - t) * s - pw * t * s_bar  # no cancellation as s -> 1
        slope = times(factor, gamma * times(ratio, ce) + dce)
        dloss = dloss + times(balance, slope) * dx
    if not is_zero(dbalance):
        dloss = dloss + focal * dbalance
    return loss, dloss


_sigmoid_focal.defjvp(_sigmoid_focal_jvp, symbolic_zeros=True)


@functools.partial(jax.jit, static_argnames=("reduction", "exponent"))
def _sigmoid_focal_loss(logits, targets, alpha, gamma, weight, pos_weight, *, reduction, exponent):
    dtype = compute_dtype(logits.dtype)
    x, t = logits.astype(dtype), jax.lax.stop_gradient(targets.astype(dtype))
    one = jnp.ones((), dtype)
    balance = one
    if alpha is not None:
        alpha = jax.lax.stop_gradient(jnp.asarray(alpha, dtype))
        # A negative alpha turns the balancing off, as in torchvision.
        balance = jnp.where(alpha >= 0, alpha * t + (1.0 - alpha) * (1.0 - t), 1.0)
    if weight is not None:
        balance = balance * weight.astype(dtype)
    pw = one if pos_weight is None else jax.lax.stop_gradient(pos_weight.astype(dtype))
    gamma = jax.lax.stop_gradient(jnp.asarray(gamma, dtype))
    loss = _sigmoid_focal(x, t, jnp.broadcast_to(balance, x.shape), pw, gamma, exponent)
    return reduce_loss(loss, reduction).astype(logits.dtype)


def sigmoid_focal_loss(
    logits: ArrayLike,
    targets: ArrayLike,
    *,
    alpha: ArrayLike | None = 0.25,
    gamma: ArrayLike = 2.0,
    weight: ArrayLike | None = None,
    pos_weight: ArrayLike | None = None,
    reduction: str = "mean",
) -> jax.Array:
    r"""Sigmoid focal loss (Lin et al., 2017), the loss of dense detectors (RetinaNet).

    Binary cross-entropy on logits, scaled by $(1 - p_t)^\gamma$ and balanced by
    $\alpha_t$:

    $$
    \ell = \alpha_t\, w\, (1 - p_t)^\gamma\,\big(p_w\, t \operatorname{softplus}(-x)
        + (1 - t)\operatorname{softplus}(x)\big),
    \quad p_t = p t + (1 - p)(1 - t),\ \alpha_t = \alpha t + (1 - \alpha)(1 - t),
    $$

    with $p = \sigma(x)$, ``weight`` $w$ and ``pos_weight`` $p_w$ as in
    [`binary_cross_entropy_with_logits`][jaxloss.binary_cross_entropy_with_logits].
    ``alpha=None`` (or a negative value, as in torchvision) sets $\alpha_t = 1$. The
    same as ``torchvision.ops.sigmoid_focal_loss`` where their options overlap, except
    the default reduction: torchvision's is ``"none"``, jaxloss's ``"mean"``, as
    everywhere in jaxloss. Exact for any logit: no $\log\sigma$ of a saturated value
    is formed.

    Gradient (the custom JVP rule): with $s = \sigma(x)$, $q = 1 - p_t$ and
    $\mathrm{ce}$ the bracket above,

    $$
    \frac{\partial \ell}{\partial x} = \alpha_t w\, q^\gamma \Big(\gamma\,
      \frac{s(1-s)(1-2t)}{q}\,\mathrm{ce} + (1 - t)\,s - p_w t\,(1 - s)\Big).
    $$

    $|s(1-s)(1-2t)/q| \le 1$ for $t \in [0, 1]$, so the factor $q^{\gamma-1}$ of the
    naive derivative, unbounded at $q = 0$ for $0 < \gamma < 1$, never appears: the rule
    is finite for every $\gamma \ge 0$ and is 0 where $q$ rounds to 0 (the exact limit).
    $\partial\ell/\partial w = \alpha_t (1 - p_t)^\gamma\,\mathrm{ce}$; ``targets``,
    ``alpha``, ``gamma`` and ``pos_weight`` carry no gradient (they are held constant
    by ``stop_gradient``).

    Args:
        logits: floating, any shape.
        targets: floating labels in $[0, 1]$ of the logits' shape.
        alpha: the balance of positives, in $[0, 1]$; None or negative to turn it off.
        gamma: the focusing parameter $\gamma \ge 0$.
        weight: optional elementwise weight, broadcastable to the logits.
        pos_weight: optional weight of positives, broadcastable to the logits.
        reduction: ``"mean"``, ``"sum"`` or ``"none"`` (static).

    Returns:
        A scalar, or per-element losses for ``reduction="none"``, in the logits' dtype.

    Examples:
        >>> import jax, jax.numpy as jnp
        >>> import jaxloss as jl
        >>> jnp.set_printoptions(precision=4)
        >>> logits = jnp.array([3.0, -1.0, 0.5, -4.0])
        >>> targets = jnp.array([1.0, 1.0, 0.0, 0.0])
        >>> jl.sigmoid_focal_loss(logits, targets, reduction="none")
        Array([2.7321e-05, 1.7547e-01, 2.8306e-01, 4.4037e-06], dtype=float32)
        >>> jax.grad(jl.sigmoid_focal_loss)(logits, targets)
        Array([-1.9679e-05, -4.8015e-02,  9.8653e-02,  3.2532e-06], dtype=float32)
    """
    logits = _checks.floating_input("logits", logits)
    targets = _binary_targets("logits", logits, targets)
    if alpha is not None:
        alpha = _checks.real_scalar("alpha", alpha, minimum=-float("inf"), maximum=1.0)
    exponent = integer_exponent(gamma)
    gamma = _checks.real_scalar("gamma", gamma, minimum=0.0)
    weight = _elementwise_weight("weight", weight, logits.shape, "the logits'")
    pos_weight = _elementwise_weight(
        "pos_weight", pos_weight, logits.shape, "the logits' (aligned on the last axis)"
    )
    return _sigmoid_focal_loss(
        logits,
        targets,
        alpha,
        gamma,
        weight,
        pos_weight,
        reduction=_checks.reduction(reduction),
        exponent=exponent,
    )
