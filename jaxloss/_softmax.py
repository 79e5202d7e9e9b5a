"""The softmax family: ``log_softmax``, ``softmax`` and ``log_sigmoid``."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax.typing import ArrayLike

from jaxloss import _checks
from jaxloss._reduce import compute_dtype


def max_and_sum_exp(x: jax.Array, axis: int) -> tuple[jax.Array, jax.Array]:
    """Returns ``(m, s)`` with ``logsumexp(x) = m + log(s)``, both with ``keepdims``.

    ``m`` is the row maximum, replaced by 0 where the row is all ``-inf`` so that
    ``x - m`` never forms ``-inf - (-inf)``; such a row has ``s = 0``. A row with
    a ``nan`` or ``+inf`` keeps that maximum, so ``s`` and everything built from it
    are ``nan``: the row has no finite normalization, and says so. The maximum
    carries no gradient: every quantity built from ``(m, s)`` here is invariant to
    the shift, so its derivative cancels exactly.
    """
    return _shift_and_sum_exp(x, jnp.max(x, axis=axis, keepdims=True), axis)


def _shift_and_sum_exp(x: jax.Array, top: jax.Array, axis: int) -> tuple[jax.Array, jax.Array]:
    """``(m, s)`` of ``max_and_sum_exp`` from the row maximum ``top`` (with keepdims)."""
    m = jax.lax.stop_gradient(jnp.where(top == -jnp.inf, 0.0, top))
    s = jnp.sum(jnp.exp(x - m), axis=axis, keepdims=True)
    return m, s


def max_min_and_sum_exp(x: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
    """``max_and_sum_exp`` along the last axis, and each row's minimum (no keepdims),
    found in the same read of ``x`` as the maximum (one variadic reduction).

    With several devices the two are separate reductions: the partitioner combines a
    variadic reduction split over the classes by all-gathering every device's partial
    results, where it all-reduces a plain one."""
    if jax.device_count() > 1:
        m, s = max_and_sum_exp(x, -1)
        return m, s, jnp.min(jax.lax.stop_gradient(x), axis=-1)
    frozen = jax.lax.stop_gradient(x)
    top, low = jax.lax.reduce(
        (frozen, frozen),
        (jnp.array(-jnp.inf, x.dtype), jnp.array(jnp.inf, x.dtype)),
        lambda a, b: (jnp.maximum(a[0], b[0]), jnp.minimum(a[1], b[1])),
        (x.ndim - 1,),
    )
    return (*_shift_and_sum_exp(x, top[..., None], -1), low)


def _mask_logits(x: jax.Array, where: jax.Array | None) -> jax.Array:
    return x if where is None else jnp.where(where, x, -jnp.inf)


@functools.partial(jax.custom_jvp, nondiff_argnums=(1,))
def _log_softmax(x: jax.Array, axis: int) -> jax.Array:
    m, s = max_and_sum_exp(x, axis)
    return x - m - jnp.log(s)


@_log_softmax.defjvp
def _log_softmax_jvp(axis, primals, tangents):
    (x,), (dx,) = primals, tangents
    m, s = max_and_sum_exp(x, axis)
    y = x - m - jnp.log(s)
    # p from the forward's exp(x - m), not exp(y): XLA evaluates the exponential once.
    p = jnp.exp(x - m) * (1.0 / s)
    dy = dx - jnp.sum(p * dx, axis=axis, keepdims=True)
    # A -inf input (a masked class) is a constant -inf output: tangent 0. A finite input
    # whose output overflows to -inf keeps its finite derivative.
    return y, jnp.where(x == -jnp.inf, 0.0, dy)


@functools.partial(jax.custom_jvp, nondiff_argnums=(1,))
def _softmax(x: jax.Array, axis: int) -> jax.Array:
    m, s = max_and_sum_exp(x, axis)
    return jnp.exp(x - m) / s


@_softmax.defjvp
def _softmax_jvp(axis, primals, tangents):
    (x,), (dx,) = primals, tangents
    p = _softmax(x, axis)
    return p, p * (dx - jnp.sum(p * dx, axis=axis, keepdims=True))


@functools.partial(jax.jit, static_argnums=(0, 2))
def _apply_normalized(fn, x, axis, where):
    return fn(_mask_logits(x.astype(compute_dtype(x.dtype)), where), axis).astype(x.dtype)


def _normalized(fn, x, axis, where):
    x = _checks.floating_input("x", x)
    if x.ndim == 0:  # PyTorch's 0-d input: one class
        _checks.class_axis(axis, 1)
        where = _checks.where_mask(where, (1,))
        return _apply_normalized(fn, x[None], 0, where)[0]
    axis = _checks.class_axis(axis, x.ndim)
    where = _checks.where_mask(where, x.shape)
    if x.shape[axis] == 0:  # nothing to normalize: the empty result, as in PyTorch
        return x
    return _apply_normalized(fn, x, axis, where)


def log_softmax(x: ArrayLike, axis: int = -1, *, where: ArrayLike | None = None) -> jax.Array:
    r"""Log-softmax along ``axis``, computed with a shifted log-sum-exp.

    Use it to turn logits into log-probabilities, for example before
    [`nll_loss`][jaxloss.nll_loss]. It never overflows: logits of $\pm 10^4$ in float32
    give exact results, and adding a constant to a row changes the result only by
    the rounding of the inputs. A row holding ``nan`` or ``+inf`` comes out ``nan``
    (it has no finite normalization), as in PyTorch.

    $$
    \operatorname{log\_softmax}(x)_i = x_i - \log \sum_{j \in M} e^{x_j},
    $$

    where $M$ is the set of classes kept by ``where`` (all by default).
    Entries outside $M$ are $-\infty$.

    Gradient (the custom JVP rule), with $p = \operatorname{softmax}(x)$:

    $$
    \frac{\partial y_i}{\partial x_j} = \delta_{ij} - p_j,
    \qquad dy = dx - \langle p, dx \rangle.
    $$

    Args:
        x: floating logits, any shape; a 0-d input is one class, as in PyTorch.
        axis: the class axis (an int).
        where: optional boolean mask broadcastable to ``x``; ``False`` entries
            are left out of the normalization and come out as ``-inf``.

    Returns:
        An array of ``x``'s shape and dtype. bfloat16 and float16 inputs are
        computed in float32.

    PyTorch: ``torch.nn.functional.log_softmax(x, dim=axis)``.

    Examples:
        >>> import jax, jax.numpy as jnp
        >>> import jaxloss as jl
        >>> jnp.set_printoptions(precision=4)
        >>> jl.log_softmax(jnp.array([1.0, 2.0, 3.0]))
        Array([-2.4076, -1.4076, -0.4076], dtype=float32)
        >>> jax.grad(lambda x: jl.log_softmax(x)[2])(jnp.array([1.0, 2.0, 3.0]))
        Array([-0.09  , -0.2447,  0.3348], dtype=float32)

    See also: [`softmax`][jaxloss.softmax], [`cross_entropy`][jaxloss.cross_entropy].
    """
    return _normalized(_log_softmax, x, axis, where)


def softmax(x: ArrayLike, axis: int = -1, *, where: ArrayLike | None = None) -> jax.Array:
    r"""Softmax along ``axis``.

    $$
    \operatorname{softmax}(x)_i = \frac{e^{x_i - m}}{\sum_{j \in M} e^{x_j - m}},
    \qquad m = \max_{j \in M} x_j,
    $$

    with $M$ the classes kept by ``where``; the others get probability 0.

    Gradient (the custom JVP rule): $dp = p \odot (dx - \langle p, dx \rangle)$,
    i.e. the Jacobian $\operatorname{diag}(p) - p p^\top$.

    Args:
        x: floating logits with at least one axis.
        axis: the class axis (an int).
        where: optional boolean mask broadcastable to ``x``.

    Returns:
        Probabilities of ``x``'s shape and dtype, summing to 1 along ``axis``.

    PyTorch: ``torch.nn.functional.softmax(x, dim=axis)``.

    Examples:
        >>> import jax, jax.numpy as jnp
        >>> import jaxloss as jl
        >>> jnp.set_printoptions(precision=4)
        >>> jl.softmax(jnp.array([1.0, 2.0, 3.0]))
        Array([0.09  , 0.2447, 0.6652], dtype=float32)
        >>> jl.softmax(jnp.array([1.0, 2.0, 3.0]), where=jnp.array([True, False, True]))
        Array([0.1192, 0.    , 0.8808], dtype=float32)
        >>> jax.grad(lambda x: jl.softmax(x)[0])(jnp.array([1.0, 2.0, 3.0]))
        Array([ 0.0819, -0.022 , -0.0599], dtype=float32)

    See also: [`log_softmax`][jaxloss.log_softmax].
    """
    return _normalized(_softmax, x, axis, where)


@jax.custom_jvp
def _log_sigmoid(x: jax.Array) -> jax.Array:
    return jnp.minimum(x, 0.0) - jnp.log1p(jnp.exp(-jnp.abs(x)))


@_log_sigmoid.defjvp
def _log_sigmoid_jvp(primals, tangents):
    (x,), (dx,) = primals, tangents
    return _log_sigmoid(x), jax.nn.sigmoid(-x) * dx


def log_sigmoid(x: ArrayLike) -> jax.Array:
    r"""Elementwise $\log \sigma(x)$, stable for any $x$.

    $$
    \log \sigma(x) = -\log(1 + e^{-x}) = \min(x, 0) - \log(1 + e^{-|x|}).
    $$

    Gradient (the custom JVP rule): $\frac{d}{dx}\log\sigma(x) = \sigma(-x)$.

    Args:
        x: floating array of any shape.

    Returns:
        An array of ``x``'s shape and dtype (computed in float32 for 16-bit inputs).

    PyTorch: ``torch.nn.functional.logsigmoid(x)``.

    Examples:
        >>> import jax, jax.numpy as jnp
        >>> import jaxloss as jl
        >>> jnp.set_printoptions(precision=4)
        >>> jl.log_sigmoid(jnp.array([-1e4, 0.0, 1e4]))
        Array([-1.0000e+04, -6.9315e-01,  0.0000e+00], dtype=float32)
        >>> jax.grad(lambda x: jl.log_sigmoid(x).sum())(jnp.array([-1e4, 0.0, 1e4]))
        Array([1. , 0.5, 0. ], dtype=float32)
    """
    x = _checks.floating_input("x", x)
    return _log_sigmoid(x.astype(compute_dtype(x.dtype))).astype(x.dtype)
