"""Sparsemax and its Fenchel-Young losses: ``sparsemax``, ``sparsemax_loss`` (binary)
and ``multiclass_sparsemax_loss``."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax.typing import ArrayLike

from jaxloss import _checks
from jaxloss._reduce import compute_dtype, is_zero, poison, reduce_loss, times, whole_last_axis
from jaxloss._targets import class_index
from jaxloss._xent import target_logit


def _threshold(x):
    """The tau of ``max(x - tau, 0)`` summing to 1 along the last axis (the first axis
    of ``x`` sorted in decreasing order whose prefix keeps ``1 + k z_k > sum z_{<=k}``)."""
    z = jnp.flip(jnp.sort(whole_last_axis(x), axis=-1), axis=-1)
    prefix = jnp.cumsum(z, axis=-1)
    k = jnp.arange(1, x.shape[-1] + 1, dtype=x.dtype)
    size = jnp.sum(1.0 + k * z > prefix, axis=-1, keepdims=True)
    top = jnp.take_along_axis(prefix, jnp.maximum(size - 1, 0).astype(jnp.int32), axis=-1)
    return (top - 1.0) / size


@jax.custom_jvp
def _sparsemax_last(x):
    # Shifted by the row maximum first: the result does not change, the sums stay small.
    top = jnp.max(x, axis=-1, keepdims=True)
    shifted = x - jnp.where(jnp.isfinite(top), top, 0.0)
    p = jnp.maximum(shifted - _threshold(shifted), 0.0)
    # No finite projection: a nan or +inf score, or no finite one (the maximum says which).
    return jnp.where(jnp.isfinite(top), p, jnp.nan)


@_sparsemax_last.defjvp
def _sparsemax_last_jvp(primals, tangents):
    (x,), (dx,) = primals, tangents
    p = _sparsemax_last(x)
    support = p > 0
    mean = jnp.sum(jnp.where(support, dx, 0.0), axis=-1, keepdims=True) / jnp.sum(
        support, axis=-1, keepdims=True
    )
    # A row without a finite projection (p nan) has a nan Jacobian, not 0: the nan
    # coefficient multiplies the tangent, so reverse mode carries it too.
    undefined = jnp.where(jnp.isnan(p), jnp.nan, 0.0)
    return p, jnp.where(support, dx - mean, 0.0) + undefined * dx


@functools.partial(jax.jit, static_argnames=("axis",))
def _sparsemax(x, *, axis):
    moved = jnp.moveaxis(x.astype(compute_dtype(x.dtype)), axis, -1)
    return jnp.moveaxis(_sparsemax_last(moved), -1, axis).astype(x.dtype)


def sparsemax(x: ArrayLike, axis: int = -1) -> jax.Array:
    r"""Sparsemax: the Euclidean projection of ``x`` onto the probability simplex.

    $$
    \mathrm{sparsemax}(x) = \arg\min_{p \in \Delta} \|p - x\|^2 = \max(x - \tau, 0),
    $$

    with $\tau$ the threshold at which the result sums to 1. Unlike softmax, it is
    exactly 0 on the classes below the threshold. Gradient (the custom JVP rule):
    with $S$ the support ($p_i > 0$), $\dot p_i = [i \in S]\big(\dot x_i -
    \frac{1}{|S|}\sum_{j \in S} \dot x_j\big)$; a class exactly at the threshold is
    outside the support.

    Args:
        x: floating scores, any shape.
        axis: the class axis.

    Returns:
        Probabilities of ``x``'s shape and dtype (computed in float32 for 16-bit
        inputs); a row containing nan, ``+inf``, or only ``-inf`` is nan.

    optax: ``optax.projections.projection_simplex`` of each row; ``jax.nn`` has no
    sparsemax. PyTorch has none.

    Examples:
        >>> import jax, jax.numpy as jnp
        >>> import jaxloss as jl
        >>> jnp.set_printoptions(precision=4)
        >>> jl.sparsemax(jnp.array([1.0, 0.8, -1.0]))  # tau = 0.4
        Array([0.6, 0.4, 0. ], dtype=float32)
        >>> jax.jacobian(jl.sparsemax)(jnp.array([1.0, 0.8, -1.0]))
        Array([[ 0.5, -0.5,  0. ],
               [-0.5,  0.5,  0. ],
               [ 0. ,  0. ,  0. ]], dtype=float32)
    """
    x = _checks.floating_input("x", x, min_ndim=1)
    axis = _checks.class_axis(axis, x.ndim)
    _checks.has_classes("x", x.shape, axis)
    return _sparsemax(x, axis=axis)


@jax.custom_jvp
def _binary_sparsemax(x, t):
    """``sparse_plus(x) - t x``: 0 / -t x for x <= -1, (x + 1)^2 / 4 - t x between,
    (1 - t) x for x >= 1, written per piece so that t = 1 cancels nothing (and a
    zero coefficient of an infinite logit is 0)."""
    middle = (x + 1.0) ** 2 / 4.0 - t * x
    return jnp.where(x >= 1.0, times(1.0 - t, x), jnp.where(x <= -1.0, -times(t, x), middle))


def _binary_sparsemax_jvp(primals, tangents):
    (x, t), (dx, dt) = primals, tangents
    dloss = jnp.zeros_like(_binary_sparsemax(x, t))
    if not is_zero(dx):
        dloss = dloss + (jnp.clip((x + 1.0) / 2.0, 0.0, 1.0) - t) * dx
    if not is_zero(dt):
        dloss = dloss - x * dt
    return _binary_sparsemax(x, t), dloss


_binary_sparsemax.defjvp(_binary_sparsemax_jvp, symbolic_zeros=True)


@functools.partial(jax.jit, static_argnames=("reduction",))
def _sparsemax_binary_loss(logits, targets, *, reduction):
    dtype = compute_dtype(logits.dtype)
    loss = _binary_sparsemax(logits.astype(dtype), targets.astype(dtype))
    return reduce_loss(loss, reduction).astype(logits.dtype)


def sparsemax_loss(logits: ArrayLike, targets: ArrayLike, *, reduction: str = "mean") -> jax.Array:
    r"""Binary sparsemax loss: the Fenchel-Young loss of the sparse sigmoid
    $\mathrm{clip}((x + 1)/2, 0, 1)$, which is exactly 0 or 1 beyond $|x| \ge 1$.

    $$
    \ell = \mathrm{sparseplus}(x) - t x,
    \qquad
    \mathrm{sparseplus}(x) = \begin{cases}
        0 & x \le -1 \\ (x + 1)^2/4 & |x| < 1 \\ x & x \ge 1
    \end{cases}
    $$

    It is 0 exactly when the sparse sigmoid equals a 0/1 target. Gradient (the
    custom JVP rule): $\partial\ell/\partial x = \mathrm{clip}((x + 1)/2, 0, 1) - t$,
    $\partial\ell/\partial t = -x$.

    Args:
        logits: floating scores, any shape.
        targets: targets of the same shape: 0/1 labels (any dtype) or
            probabilities in ``[0, 1]``.
        reduction: ``"mean"``, ``"sum"`` or ``"none"`` (optax's output).

    Returns:
        A scalar, or elementwise losses, in the input dtype.

    optax: ``optax.losses.sparsemax_loss(logits, labels)`` is ``reduction="none"``
    for 0/1 labels. PyTorch has none.

    Examples:
        >>> import jax, jax.numpy as jnp
        >>> import jaxloss as jl
        >>> x, t = jnp.array([-2.0, 0.0, 3.0]), jnp.array([1.0, 1.0, 1.0])
        >>> jl.sparsemax_loss(x, t, reduction="none")
        Array([2.  , 0.25, 0.  ], dtype=float32)
        >>> jax.grad(jl.sparsemax_loss)(x, t, reduction="sum")
        Array([-1. , -0.5,  0. ], dtype=float32)
    """
    logits = _checks.floating_input("logits", logits)
    targets = _checks.same_shape("targets", targets, logits.shape, "the logits'")
    if not (jnp.issubdtype(targets.dtype, jnp.number) or targets.dtype == jnp.bool_):
        raise TypeError(f"targets must be 0/1 labels or probabilities, got dtype {targets.dtype}")
    return _sparsemax_binary_loss(logits, targets, reduction=_checks.reduction(reduction))


def _fenchel_young_value(x, labels, p):
    """sum_i p_i (x_i - x_y) + (1 - |p|^2) / 2, for p = sparsemax(x) and labels in range."""
    x_y = target_logit(x, labels)[..., None]
    gap = jnp.sum(jnp.where(p > 0, p * (x - x_y), 0.0), axis=-1)
    return gap + 0.5 * (1.0 - jnp.sum(p * p, axis=-1))


@jax.custom_jvp
def _multiclass_fenchel_young(x, labels):
    return _fenchel_young_value(x, labels, _sparsemax_last(x))


@_multiclass_fenchel_young.defjvp
def _multiclass_fenchel_young_jvp(primals, tangents):
    (x, labels), (dx, _) = primals, tangents
    p = _sparsemax_last(x)  # once, for the value and the gradient
    target = jnp.arange(x.shape[-1]) == labels[..., None]
    return _fenchel_young_value(x, labels, p), jnp.sum((p - target) * dx, axis=-1)


@functools.partial(jax.jit, static_argnames=("reduction",))
def _multiclass_sparsemax(scores, labels, *, reduction):
    dtype = compute_dtype(scores.dtype)
    label = class_index(labels, scores.shape[-1])
    x = poison(scores.astype(dtype), ~label.valid)  # nan value and gradient
    loss = _multiclass_fenchel_young(x, label.class_index)
    return reduce_loss(loss, reduction).astype(scores.dtype)


def multiclass_sparsemax_loss(
    scores: ArrayLike, labels: ArrayLike, *, reduction: str = "mean"
) -> jax.Array:
    r"""Multi-class sparsemax loss: the Fenchel-Young loss of :func:`sparsemax`.

    With $p = \mathrm{sparsemax}(x)$,

    $$
    \ell = \sum_i p_i (x_i - x_y) + \tfrac12\big(1 - \|p\|^2\big),
    $$

    0 exactly when $p$ is the one-hot of $y$ (the target leads the others by at
    least 1). Gradient (the custom JVP rule): $\partial\ell/\partial x = p - e_y$,
    as for cross-entropy with softmax.

    Args:
        scores: floating scores ``(..., C)``.
        labels: integer classes of shape ``scores.shape[:-1]``.
        reduction: ``"mean"``, ``"sum"`` or ``"none"`` (optax's output).

    Returns:
        A scalar, or per-element losses, in the input dtype; nan for a label outside
        ``[0, C)``.

    optax: ``optax.losses.multiclass_sparsemax_loss(scores, labels)`` is
    ``reduction="none"``. PyTorch has none.

    Examples:
        >>> import jax, jax.numpy as jnp
        >>> import jaxloss as jl
        >>> jnp.set_printoptions(precision=4)
        >>> x, y = jnp.array([[1.0, 0.8, -1.0]]), jnp.array([1])
        >>> jl.multiclass_sparsemax_loss(x, y)  # 0.6 * 0.2 + (1 - 0.52) / 2
        Array(0.36, dtype=float32)
        >>> jax.grad(jl.multiclass_sparsemax_loss)(x, y)  # sparsemax(x) - e_y
        Array([[ 0.6, -0.6,  0. ]], dtype=float32)
    """
    scores = _checks.class_scores("scores", scores)
    labels = _checks.class_indices("labels", labels, scores.shape)
    return _multiclass_sparsemax(scores, labels, reduction=_checks.reduction(reduction))
