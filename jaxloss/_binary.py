"""Binary and multi-label losses: BCE on logits and BCE on probabilities."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax.typing import ArrayLike

from jaxloss import _checks
from jaxloss._reduce import compute_dtype, is_zero, reduce_loss, times


def _bce_with_logits_terms(x, t, pw, tail=None):
    """``softplus(-x)``, ``softplus(x)`` and ``pw t softplus(-x) + (1 - t) softplus(x)``.

    With ``softplus(+-x) = relu(+-x) + log1p(exp(-|x|))`` the loss is
    ``(pw t + 1 - t) log1p(exp(-|x|))`` plus ``(1 - t) x`` for ``x >= 0`` or
    ``-pw t x`` for ``x < 0``: one exponential and one log, and for targets in [0, 1]
    a sum of terms of one sign (no cancellation). An infinite logit times a zero
    coefficient adds 0, its limit. ``tail`` is ``log1p(exp(-|x|))`` if the caller has it.
    """
    if tail is None:
        tail = jnp.log1p(jnp.exp(-jnp.abs(x)))
    sp_neg, sp_pos = jnp.maximum(-x, 0.0) + tail, jnp.maximum(x, 0.0) + tail
    common = (pw * t + 1.0 - t) * tail
    # One select outermost: XLA's CPU backend computes it in one pass before the sum.
    loss = jnp.where(x >= 0.0, common + times(1.0 - t, x), common - times(pw * t, x))
    return sp_neg, sp_pos, loss


@jax.custom_jvp
def _bce_with_logits(x, t, w, pw):
    return times(w, _bce_with_logits_terms(x, t, pw)[2])


def _bce_with_logits_jvp(primals, tangents):
    x, t, w, pw = primals
    dx, dt, dw, dpw = tangents
    sp_neg, sp_pos, unweighted = _bce_with_logits_terms(x, t, pw)
    loss = times(w, unweighted)
    dloss = jnp.zeros_like(loss)
    if not is_zero(dx):
        sig = jax.nn.sigmoid(x)
        dloss = dloss + times(w, (1.0 + (pw - 1.0) * t) * sig - pw * t) * dx
    if not is_zero(dt):
        dloss = dloss + times(w, pw * sp_neg - sp_pos) * dt
    if not is_zero(dw):
        dloss = dloss + unweighted * dw
    if not is_zero(dpw):
        dloss = dloss + times(w * t, sp_neg) * dpw
    return loss, dloss


_bce_with_logits.defjvp(_bce_with_logits_jvp, symbolic_zeros=True)


@functools.partial(jax.jit, static_argnames=("reduction",))
def _bce_logits(logits, targets, weight, pos_weight, *, reduction):
    dtype = compute_dtype(logits.dtype)
    one = jnp.ones((), dtype)
    loss = _bce_with_logits(
        logits.astype(dtype),
        targets.astype(dtype),
        one if weight is None else weight.astype(dtype),
        one if pos_weight is None else pos_weight.astype(dtype),
    )
    return reduce_loss(loss, reduction).astype(logits.dtype)


def _binary_targets(name: str, x: jax.Array, targets) -> jax.Array:
    targets = _checks.as_array("targets", targets)
    if not jnp.issubdtype(targets.dtype, jnp.floating):
        raise TypeError(
            f"targets must be floating (0/1 labels or soft labels), got dtype {targets.dtype}; "
            "cast integer labels with .astype(float)"
        )
    return _checks.same_shape("targets", targets, x.shape, f"the {name}'")


def _elementwise_weight(name, weight, shape, what):
    """None, or a floating array that broadcasts to ``shape`` without growing it."""
    if weight is None:
        return None
    weight = _checks.floating_input(name, weight)
    return _checks.broadcastable_to(name, weight, shape, what)


def binary_cross_entropy_with_logits(
    logits: ArrayLike,
    targets: ArrayLike,
    *,
    weight: ArrayLike | None = None,
    pos_weight: ArrayLike | None = None,
    reduction: str = "mean",
) -> jax.Array:
    r"""Sigmoid cross-entropy on logits, for binary and multi-label targets.

    Exact for any logit: it is written with softplus, so $|x| = 10^4$ in
    float32 gives the exact loss and gradient.

    $$
    \ell = w \big( p_w\, t \operatorname{softplus}(-x)
           + (1 - t) \operatorname{softplus}(x) \big)
         = -w \big( p_w\, t \log\sigma(x) + (1-t) \log\sigma(-x) \big).
    $$

    Gradients (the custom JVP rule):

    $$
    \frac{\partial \ell}{\partial x} = w\big((1 + (p_w - 1)t)\,\sigma(x) - p_w t\big),
    \qquad
    \frac{\partial \ell}{\partial t} = w\big(p_w \operatorname{softplus}(-x)
        - \operatorname{softplus}(x)\big),
    $$

    and $\partial\ell/\partial w = \ell / w$,
    $\partial\ell/\partial p_w = w\, t \operatorname{softplus}(-x)$.

    Args:
        logits: floating array of any shape.
        targets: floating targets in [0, 1] of the logits' shape.
        weight: optional per-element rescaling, broadcastable to the logits.
        pos_weight: optional weight of positive examples, broadcast along the
            last axis (shape ``[num_classes]`` for multi-label logits
            ``[..., num_classes]``).
        reduction: ``"mean"`` (over all elements), ``"sum"`` or ``"none"``.

    Returns:
        A scalar, or the elementwise losses for ``reduction="none"``, in the
        logits' dtype (float32 accumulation for 16-bit inputs).

    PyTorch: ``F.binary_cross_entropy_with_logits``, same arguments and results
    for finite inputs. Deviations: at a logit of ``+-inf`` the loss is its limit
    (0 where a 0/1 target agrees with the sign, ``inf`` otherwise; PyTorch: nan
    for most), and an element of ``weight`` 0 contributes 0 and no gradient even
    if its logit is ``nan`` (PyTorch: nan). Targets outside [0, 1] follow the
    formula, as in PyTorch.

    Examples:
        >>> import jax, jax.numpy as jnp
        >>> import jaxloss as jl
        >>> jnp.set_printoptions(precision=4)
        >>> logits = jnp.array([1.2372, -0.9604, 1.5415])
        >>> targets = jnp.array([1.0, 0.0, 1.0])
        >>> jl.binary_cross_entropy_with_logits(logits, targets)
        Array(0.2576, dtype=float32)
        >>> jax.grad(jl.binary_cross_entropy_with_logits)(logits, targets)  # (sigma - t) / 3
        Array([-0.075 ,  0.0923, -0.0588], dtype=float32)
    """
    logits = _checks.floating_input("logits", logits)
    targets = _binary_targets("logits", logits, targets)
    weight = _elementwise_weight("weight", weight, logits.shape, "the logits'")
    pos_weight = _elementwise_weight(
        "pos_weight", pos_weight, logits.shape, "the logits' (aligned on the last axis)"
    )
    return _bce_logits(logits, targets, weight, pos_weight, reduction=_checks.reduction(reduction))


_LOG_FLOOR = -100.0


def _bce_probs_terms(p, t):
    """Clamped logs, whether each is above the clamp, the unweighted loss, and whether
    the element is defined: ``p`` and ``t`` in [0, 1] (anything else, nan included, is
    nan rather than a plausible number)."""
    log_p, log_1mp = jnp.log(p), jnp.log1p(-p)
    p_live, q_live = log_p > _LOG_FLOOR, log_1mp > _LOG_FLOOR
    log_p = jnp.maximum(log_p, _LOG_FLOOR)
    log_1mp = jnp.maximum(log_1mp, _LOG_FLOOR)
    unweighted = -(t * log_p + (1.0 - t) * log_1mp)
    valid = (t >= 0.0) & (t <= 1.0) & (p >= 0.0) & (p <= 1.0)
    return log_p, log_1mp, p_live, q_live, jnp.where(valid, unweighted, jnp.nan), valid


@jax.custom_jvp
def _bce_probs(p, t, w):
    return times(w, _bce_probs_terms(p, t)[4])


def _bce_probs_jvp(primals, tangents):
    # The derivative of the clamped loss: a clamped log is flat, so its term
    # drops out (PyTorch instead divides by max(p (1 - p), 1e-12)).
    p, t, w = primals
    dp, dt, dw = tangents
    log_p, log_1mp, p_live, q_live, unweighted, valid = _bce_probs_terms(p, t)
    loss = times(w, unweighted)
    dloss = jnp.zeros_like(loss)
    nan_outside = lambda g: jnp.where(valid, g, jnp.nan)  # noqa: E731
    if not is_zero(dp):
        inv_p = jnp.where(p_live, 1.0 / jnp.where(p_live, p, 1.0), 0.0)
        inv_q = jnp.where(q_live, 1.0 / jnp.where(q_live, 1.0 - p, 1.0), 0.0)
        dloss = dloss - times(w, nan_outside(t * inv_p - (1.0 - t) * inv_q)) * dp
    if not is_zero(dt):
        dloss = dloss - times(w, nan_outside(log_p - log_1mp)) * dt
    if not is_zero(dw):
        dloss = dloss + unweighted * dw
    return loss, dloss


_bce_probs.defjvp(_bce_probs_jvp, symbolic_zeros=True)


@functools.partial(jax.jit, static_argnames=("reduction",))
def _bce(probs, targets, weight, *, reduction):
    dtype = compute_dtype(probs.dtype)
    w = jnp.ones((), dtype) if weight is None else weight.astype(dtype)
    loss = _bce_probs(probs.astype(dtype), targets.astype(dtype), w)
    return reduce_loss(loss, reduction).astype(probs.dtype)


def binary_cross_entropy(
    probs: ArrayLike,
    targets: ArrayLike,
    *,
    weight: ArrayLike | None = None,
    reduction: str = "mean",
) -> jax.Array:
    r"""Binary cross-entropy on probabilities, each log clamped at -100 as in PyTorch.

    Prefer [`binary_cross_entropy_with_logits`][jaxloss.binary_cross_entropy_with_logits]
    when you have logits: it is exact where this one must clamp.

    $$
    \ell = -w \big( t \max(\log p, -100) + (1 - t) \max(\log(1 - p), -100) \big).
    $$

    Gradient (the custom JVP rule; a clamped log contributes nothing):

    $$
    \frac{\partial \ell}{\partial p} = -w \Big( \frac{t}{p}[\log p > -100]
        - \frac{1 - t}{1 - p}[\log(1-p) > -100] \Big),
    \qquad
    \frac{\partial \ell}{\partial t} = -w\big(\max(\log p, -100) - \max(\log(1-p), -100)\big).
    $$

    Args:
        probs: floating probabilities in [0, 1], any shape (values outside give nan).
        targets: floating targets in [0, 1] of the same shape (values outside give nan).
        weight: optional per-element rescaling, broadcastable to ``probs``.
        reduction: ``"mean"``, ``"sum"`` or ``"none"``.

    Returns:
        A scalar, or elementwise losses for ``reduction="none"``, in ``probs``' dtype.

    PyTorch: ``F.binary_cross_entropy``. Deviations: at a clamped point
    ($p$ within ~1e-44 of 0 or 1) the gradient is the derivative of the
    clamped function, 0 for that term, where PyTorch divides by
    ``max(p (1 - p), 1e-12)``; ``probs`` or ``targets`` outside [0, 1] (or nan)
    give nan for that element and its gradient, where PyTorch raises (a jitted
    function cannot raise on values); an element of ``weight`` 0 contributes 0.

    Examples:
        >>> import jax, jax.numpy as jnp
        >>> import jaxloss as jl
        >>> jnp.set_printoptions(precision=4)
        >>> probs = jnp.array([0.9, 0.2, 0.0])
        >>> targets = jnp.array([1.0, 0.0, 1.0])
        >>> jl.binary_cross_entropy(probs, targets, reduction="none")
        Array([  0.1054,   0.2231, 100.    ], dtype=float32)
        >>> jax.grad(lambda p: jl.binary_cross_entropy(p, targets, reduction="sum"))(probs)
        Array([-1.1111,  1.25  , -0.    ], dtype=float32)
    """
    probs = _checks.floating_input("probs", probs)
    targets = _binary_targets("probs", probs, targets)
    weight = _elementwise_weight("weight", weight, probs.shape, "the probs'")
    return _bce(probs, targets, weight, reduction=_checks.reduction(reduction))
