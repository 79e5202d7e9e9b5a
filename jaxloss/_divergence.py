"""Divergences: ``kl_div``."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax.typing import ArrayLike

from jaxloss import _checks
from jaxloss._reduce import compute_dtype, is_zero, reduce_loss, safe_divide


def _absent_term(log_input):
    """The term of a zero target: 0 (the limit of t log t, even against log_input =
    -inf), but nan where log_input is nan or +inf, which no log-probability is."""
    return jnp.where(jnp.isnan(log_input) | (log_input == jnp.inf), jnp.nan, 0.0)


@functools.partial(jax.custom_jvp, nondiff_argnums=(2,))
def _kl_pointwise(log_input, target, log_target):
    # A negative or nan target is not a probability, and its term is nan (log of a
    # negative number).
    if log_target:
        absent = target == -jnp.inf
        return jnp.where(absent, _absent_term(log_input), jnp.exp(target) * (target - log_input))
    absent = target == 0
    safe_target = jnp.where(absent, 1.0, target)
    return jnp.where(absent, _absent_term(log_input), target * (jnp.log(safe_target) - log_input))


def _nan_where_nan(log_input, slope):
    """The term is linear in log_input, but a nan log_input has a nan gradient too
    (judged from the input, which the rule reads anyway: no pass over the loss)."""
    return jnp.where(jnp.isnan(log_input), jnp.nan, slope)


def _kl_pointwise_jvp(log_target, primals, tangents):
    log_input, target = primals
    dlog_input, dtarget = tangents
    loss = _kl_pointwise(log_input, target, log_target)
    dloss = jnp.zeros_like(loss)
    if log_target:
        absent = target == -jnp.inf
        p = jnp.exp(target)
        if not is_zero(dlog_input):
            dloss = (
                dloss
                - _nan_where_nan(log_input, jnp.where(absent, _absent_term(log_input), p))
                * dlog_input
            )
        if not is_zero(dtarget):
            slope = jnp.where(absent, 0.0, p * (target - log_input + 1.0))
            dloss = dloss + slope * dtarget
        return loss, dloss
    absent = target == 0
    if not is_zero(dlog_input):
        slope = _nan_where_nan(log_input, jnp.where(absent, _absent_term(log_input), target))
        dloss = dloss - slope * dlog_input
    if not is_zero(dtarget):
        # d/dt [t log t - t x] = log t + 1 - x. At t = 0 it is -inf (one-sided); the rule
        # returns 0 there, so that a target with zeros trains (PyTorch returns nan).
        safe_target = jnp.where(absent, 1.0, target)
        slope = jnp.where(absent, 0.0, jnp.log(safe_target) + 1.0 - log_input)
        dloss = dloss + slope * dtarget
    return loss, dloss


_kl_pointwise.defjvp(_kl_pointwise_jvp, symbolic_zeros=True)


@functools.partial(jax.jit, static_argnames=("reduction", "log_target"))
def _kl_div(log_input, target, *, reduction, log_target):
    dtype = compute_dtype(log_input.dtype)
    loss = _kl_pointwise(log_input.astype(dtype), target.astype(dtype), log_target)
    if reduction == "batchmean":
        batch = log_input.shape[0] if log_input.ndim else 1
        out = safe_divide(jnp.sum(loss), jnp.asarray(batch, loss.dtype))
    else:
        out = reduce_loss(loss, reduction)
    return out.astype(log_input.dtype)


def kl_div(
    log_input: ArrayLike,
    target: ArrayLike,
    *,
    reduction: str = "mean",
    log_target: bool = False,
) -> jax.Array:
    r"""Kullback-Leibler divergence $\mathrm{KL}(t \,\|\, q)$ given $\log q$.

    As in PyTorch, the *input* is the model's log-probabilities and the *target*
    the reference distribution (probabilities, or log-probabilities with
    ``log_target=True``). Use ``reduction="batchmean"`` for the true KL
    divergence per example; ``"mean"`` averages over every element.

    $$
    \ell = t\,(\log t - \log q) \quad (0 \text{ where } t = 0),
    \qquad
    \ell = e^{s}(s - \log q) \quad \text{with } s = \log t \text{ if log\_target}.
    $$

    Gradients (the custom JVP rule):
    $\partial\ell/\partial\log q = -t$ and
    $\partial\ell/\partial t = \log t + 1 - \log q$ (taken as 0 at $t = 0$,
    where the one-sided derivative is $-\infty$);
    with ``log_target``, $\partial\ell/\partial s = e^{s}(s - \log q + 1)$.

    Args:
        log_input: floating log-probabilities $\log q$, any shape.
        target: floating targets of the same shape.
        reduction: ``"mean"``, ``"batchmean"`` (sum / ``log_input.shape[0]``),
            ``"sum"`` or ``"none"``.
        log_target: whether ``target`` holds log-probabilities.

    Returns:
        A scalar, or elementwise terms for ``reduction="none"``, in the input dtype.

    PyTorch: ``F.kl_div(log_input, target, reduction=..., log_target=...)``,
    same results for positive targets. Deviations: a zero target (``-inf`` with
    ``log_target``) contributes 0 even against ``log_input = -inf``, and its
    derivative with respect to the target is taken as 0 (PyTorch: nan for both);
    ``"batchmean"`` of an empty batch is 0 (PyTorch: nan); ``target`` must have
    ``log_input``'s shape rather than broadcast. A negative or nan target is not
    a probability: its term is nan, as in PyTorch; so is the term (and its
    gradient) of a nan ``log_input``, whatever the target. A ``+inf`` ``log_input``
    gives nan against a zero target and ``-inf`` against a positive one, as in
    PyTorch.

    Examples:
        >>> import jax, jax.numpy as jnp
        >>> import jaxloss as jl
        >>> jnp.set_printoptions(precision=4)
        >>> log_q = jl.log_softmax(jnp.array([[1.0, 2.0, 3.0]]))
        >>> t = jnp.array([[0.2, 0.3, 0.5]])
        >>> jl.kl_div(log_q, t, reduction="batchmean")
        Array(0.078, dtype=float32)
        >>> jax.grad(jl.kl_div)(log_q, t)  # -t / numel
        Array([[-0.0667, -0.1   , -0.1667]], dtype=float32)
    """
    log_input = _checks.floating_input("log_input", log_input)
    target = _checks.floating_input("target", target)
    target = _checks.same_shape("target", target, log_input.shape, "log_input's")
    reduction = _checks.reduction(reduction, ("mean", "batchmean", "sum", "none"))
    log_target = _checks.flag("log_target", log_target)
    return _kl_div(log_input, target, reduction=reduction, log_target=log_target)
