"""Margin losses: PyTorch's ``multi_margin_loss``, ``multilabel_margin_loss``,
``multilabel_soft_margin_loss``, ``soft_margin_loss``, ``hinge_embedding_loss``, and
optax's ``hinge_loss``, ``perceptron_loss``, ``multiclass_hinge_loss`` and
``multiclass_perceptron_loss``.

The kinks carry hand-written rules: ``jnp.maximum(0, z)`` would split the derivative
0.5/0.5 at ``z = 0``, where PyTorch takes one side. ``_hinge`` takes the side each
loss states; the rest of each loss is linear in its hinges and differentiated by
autodiff.
"""

from __future__ import annotations

import functools
import math
import numbers

import jax
import jax.numpy as jnp
from jax.typing import ArrayLike

from jaxloss import _checks
from jaxloss._binary import _bce_with_logits
from jaxloss._reduce import class_weight_of, compute_dtype, poison, reduce_loss, whole_last_axis
from jaxloss._softmax import _log_sigmoid
from jaxloss._targets import IGNORED, class_index, target_codes
from jaxloss._xent import target_logit


@functools.partial(jax.custom_jvp, nondiff_argnums=(1, 2))
def _hinge(z, power: int, slope_at_zero: bool):
    """``max(z, 0) ** power``; its derivative at ``z = 0`` is ``power * 0 ** (power - 1)``
    from the right side if ``slope_at_zero``, else 0 (the left side)."""
    positive = jnp.where(z <= 0, 0.0, z)  # nan stays nan
    return positive if power == 1 else positive * positive


@_hinge.defjvp
def _hinge_jvp(power, slope_at_zero, primals, tangents):
    (z,), (dz,) = primals, tangents
    on = z >= 0 if slope_at_zero else z > 0
    slope = jnp.where(on, 1.0 if power == 1 else 2.0 * z, 0.0)
    # The slope multiplies the tangent, so that a nan z gives a nan gradient in
    # reverse mode too.
    slope = jnp.where(jnp.isnan(z), jnp.nan, slope)
    return _hinge(z, power, slope_at_zero), slope * dz


@functools.partial(jax.jit, static_argnames=("p", "reduction"))
def _multi_margin(x, targets, weight, margin, *, p, reduction):
    out_dtype, dtype = x.dtype, compute_dtype(x.dtype)
    x, margin = x.astype(dtype), jnp.asarray(margin, dtype)
    num_classes = x.shape[-1]
    target = class_index(targets, num_classes)
    safe = target.class_index
    scale = (
        jnp.ones_like(x[..., 0]) if weight is None else class_weight_of(weight.astype(dtype), safe)
    )
    # An element of zero weight adds exactly 0, whatever its scores hold.
    x = jnp.where((scale != 0)[..., None], x, 0.0)
    scale = jnp.where(target.valid, scale / num_classes, jnp.nan)
    others = jnp.arange(num_classes) != safe[..., None]
    z = margin - target_logit(x, safe)[..., None] + x
    loss = scale * jnp.sum(jnp.where(others, _hinge(z, p, False), 0.0), axis=-1)
    return reduce_loss(loss, reduction).astype(out_dtype)


def _target_counts(targets, num_classes: int):
    """How often each class is listed before the first -1 of each row of ``targets``,
    and whether every listed entry is a class."""
    codes = target_codes(targets, num_classes, ignore_index=-1)
    listed = jnp.cumprod(codes != IGNORED, axis=-1).astype(bool)
    valid = jnp.all(~listed | (codes >= 0), axis=-1)
    one_hot = jnp.arange(num_classes) == codes[..., None]
    counts = jnp.sum(jnp.where(listed[..., None] & one_hot, 1.0, 0.0), axis=-2)
    return counts, valid


@functools.partial(jax.jit, static_argnames=("reduction",))
def _multilabel_margin(x, targets, *, reduction):
    out_dtype, dtype = x.dtype, compute_dtype(x.dtype)
    x = whole_last_axis(x.astype(dtype))  # every pair of classes
    num_classes = x.shape[-1]
    counts, valid = _target_counts(targets, num_classes)
    x = poison(x, ~valid)
    # z[..., j, i] = 1 - (x_j - x_i): target j against every class i that is not one.
    z = 1.0 - x[..., :, None] + x[..., None, :]
    pairs = counts[..., :, None] * (counts[..., None, :] == 0)
    # Only pairs are read (an infinite score makes other entries of z nan), but an
    # invalid row reads all of its nan scores, even with no valid target left.
    pairs = jnp.where(valid[..., None, None], pairs, 1.0)
    hinges = _hinge(jnp.where(pairs > 0, z, 0.0), 1, False)
    loss = jnp.sum(pairs * hinges, axis=(-2, -1)) / num_classes
    return reduce_loss(loss, reduction).astype(out_dtype)


@functools.partial(jax.jit, static_argnames=("reduction",))
def _multilabel_soft_margin(x, targets, weight, *, reduction):
    dtype = compute_dtype(x.dtype)
    w = jnp.ones((), dtype) if weight is None else weight.astype(dtype)
    terms = _bce_with_logits(x.astype(dtype), targets.astype(dtype), w, jnp.ones((), dtype))
    return reduce_loss(jnp.mean(terms, axis=-1), reduction).astype(x.dtype)


@functools.partial(jax.jit, static_argnames=("reduction",))
def _soft_margin(x, targets, *, reduction):
    dtype = compute_dtype(x.dtype)
    loss = -_log_sigmoid(x.astype(dtype) * targets.astype(dtype))
    return reduce_loss(loss, reduction).astype(x.dtype)


@functools.partial(jax.jit, static_argnames=("reduction",))
def _hinge_embedding(x, targets, margin, *, reduction):
    # PyTorch's form: a target other than 1 adds the hinge, one other than -1 adds x.
    dtype = compute_dtype(x.dtype)
    xs, t = x.astype(dtype), targets.astype(dtype)
    hinge = _hinge(jnp.asarray(margin, dtype) - xs, 1, True)
    loss = jnp.where(t != 1, hinge, 0.0) + jnp.where(t != -1, xs, 0.0)
    return reduce_loss(loss, reduction).astype(x.dtype)


@functools.partial(jax.jit, static_argnames=("reduction", "offset"))
def _binary_margin(x, targets, *, reduction, offset):
    """``max(0, offset - t x)``: the hinge (offset 1) and the perceptron (offset 0)."""
    dtype = compute_dtype(x.dtype)
    loss = _hinge(offset - x.astype(dtype) * targets.astype(dtype), 1, False)
    return reduce_loss(loss, reduction).astype(x.dtype)


@jax.custom_jvp
def _top_minus_target(scores, labels, bonus):
    """``max_k (scores_k + bonus_k) - scores_y`` (labels in range)."""
    return jnp.max(scores + bonus, axis=-1) - target_logit(scores, labels)


@_top_minus_target.defjvp
def _top_minus_target_jvp(primals, tangents):
    scores, labels, bonus = primals
    dscores = tangents[0]
    value = _top_minus_target(scores, labels, bonus)
    # The subgradient of the maximum at a tie: the target's own class when it is among
    # the maximizers (the loss then sits at its kink, and the gradient is 0), else the
    # first maximizer, as argmax picks.
    shifted = scores + bonus
    top = jnp.max(shifted, axis=-1)
    winner = jnp.where(target_logit(shifted, labels) >= top, labels, jnp.argmax(shifted, axis=-1))
    classes = jnp.arange(scores.shape[-1])
    grad = (classes == winner[..., None]).astype(value.dtype) - (classes == labels[..., None])
    # A nan score gives a nan gradient as well as a nan value.
    grad = jnp.where(jnp.isnan(value)[..., None], jnp.nan, grad)
    return value, jnp.sum(grad * dscores, axis=-1)


@functools.partial(jax.jit, static_argnames=("reduction", "margin"))
def _multiclass_margin(scores, labels, *, reduction, margin):
    out_dtype, dtype = scores.dtype, compute_dtype(scores.dtype)
    num_classes = scores.shape[-1]
    label = class_index(labels, num_classes)
    bonus = jnp.where(jnp.arange(num_classes) == label.class_index[..., None], 0.0, margin)
    scores = poison(scores.astype(dtype), ~label.valid)
    loss = _top_minus_target(scores, label.class_index, bonus.astype(dtype))
    return reduce_loss(loss, reduction).astype(out_dtype)


def _real_targets(name: str, targets, shape, values: str = "+1 or -1") -> jax.Array:
    targets = _checks.same_shape(name, targets, shape, "the scores'")
    if not (
        jnp.issubdtype(targets.dtype, jnp.floating) or jnp.issubdtype(targets.dtype, jnp.integer)
    ):
        raise TypeError(f"{name} must be real numbers ({values}), got dtype {targets.dtype}")
    return targets


def _power(p) -> int:
    if isinstance(p, bool) or not isinstance(p, numbers.Integral) or p not in (1, 2):
        raise ValueError(f"p must be 1 or 2, got {p!r}")
    return int(p)


def multi_margin_loss(
    scores: ArrayLike,
    targets: ArrayLike,
    *,
    p: int = 1,
    margin: ArrayLike = 1.0,
    weight: ArrayLike | None = None,
    reduction: str = "mean",
) -> jax.Array:
    r"""Multi-class hinge loss (Weston-Watkins), as PyTorch's ``multi_margin_loss``.

    For scores $x$ over $C$ classes (last axis) and target class $y$:

    $$
    \ell = \frac{w_y}{C} \sum_{i \ne y} \max(0,\ m - x_y + x_i)^p .
    $$

    Gradient (a hand-written rule at the kink): with $z_i = m - x_y + x_i$,
    $\partial\ell/\partial x_i = \frac{w_y}{C}\, p\, z_i^{p-1} [z_i > 0]$ for
    $i \ne y$ and $\partial\ell/\partial x_y = -\sum_{i \ne y} \partial\ell/\partial x_i$;
    at $z_i = 0$ the term adds nothing (PyTorch's choice; ``jnp.maximum`` would
    give half).

    Args:
        scores: floating scores ``(..., C)``; PyTorch's ``(N, C)`` or ``(C,)``, and a
            0-d score as one class.
        targets: integer classes of shape ``scores.shape[:-1]`` (any integer dtype);
            ``(C,)`` scores also take a ``(1,)`` target, as in PyTorch (the result
            then has shape ``(1,)``).
        p: 1 or 2.
        margin: the margin $m$, a real scalar.
        weight: optional per-class weights, shape ``(C,)``.
        reduction: ``"mean"`` (over the elements, not weighted), ``"sum"`` or ``"none"``.

    Returns:
        A scalar, or per-element losses for ``reduction="none"``, in the input dtype;
        nan for a target outside ``[0, C)``.

    PyTorch: ``F.multi_margin_loss(scores, targets, p=p, margin=margin, weight=weight)``.

    Examples:
        >>> import jax, jax.numpy as jnp
        >>> import jaxloss as jl
        >>> jnp.set_printoptions(precision=4)
        >>> x, y = jnp.array([[0.1, 0.2, 0.4, 0.8]]), jnp.array([3])
        >>> jl.multi_margin_loss(x, y)  # (0.3 + 0.4 + 0.6) / 4
        Array(0.325, dtype=float32)
        >>> jax.grad(jl.multi_margin_loss)(x, y)
        Array([[ 0.25,  0.25,  0.25, -0.75]], dtype=float32)
    """
    scores = _checks.floating_input("scores", scores)
    targets = _checks.as_array("targets", targets)
    # PyTorch's shapes: a 0-d score is one class; (C,) scores with a (1,) target are
    # one element of a batch.
    if scores.ndim == 0 or (scores.ndim == 1 and targets.shape == (1,)):
        scores = scores[None]
    scores = _checks.class_scores("scores", scores)
    targets = _checks.class_indices("targets", targets, scores.shape)
    weight = _checks.class_weight(weight, scores.shape[-1])
    margin = _checks.real_scalar("margin", margin, minimum=-math.inf)
    reduction = _checks.reduction(reduction)
    return _multi_margin(scores, targets, weight, margin, p=_power(p), reduction=reduction)


def multilabel_margin_loss(
    scores: ArrayLike, targets: ArrayLike, *, reduction: str = "mean"
) -> jax.Array:
    r"""Multi-label hinge loss, as PyTorch's ``multilabel_margin_loss``.

    Each row of ``targets`` lists the target classes $Y$ of its element, ended by the
    first $-1$ (what follows is not read):

    $$
    \ell = \frac{1}{C} \sum_{j \in Y} \sum_{i \notin Y} \max(0,\ 1 - (x_j - x_i)).
    $$

    A class listed twice counts twice, as in PyTorch. Gradient (a hand-written rule
    at the kink): each active pair ($1 - x_j + x_i > 0$) adds $1/C$ to
    $\partial\ell/\partial x_i$ and $-1/C$ to $\partial\ell/\partial x_j$; a pair at
    exactly 0 adds nothing, as in PyTorch. The pairs cost ``C * C`` per element.

    Args:
        scores: floating scores ``(..., C)``; a 0-d score is one class, as in PyTorch.
        targets: integer class lists of the scores' shape, each ended by -1 unless full.
        reduction: ``"mean"``, ``"sum"`` or ``"none"``.

    Returns:
        A scalar, or per-element losses, in the input dtype; nan for an element whose
        list holds a value outside ``[0, C)`` before its -1 (PyTorch raises).

    PyTorch: ``F.multilabel_margin_loss(scores, targets)``.

    Examples:
        >>> import jax, jax.numpy as jnp
        >>> import jaxloss as jl
        >>> jnp.set_printoptions(precision=4)
        >>> x, y = jnp.array([[0.1, 0.2, 0.4, 0.8]]), jnp.array([[3, 0, -1, 1]])
        >>> jl.multilabel_margin_loss(x, y)  # targets 3 and 0 against 1 and 2
        Array(0.85, dtype=float32)
        >>> jax.grad(jl.multilabel_margin_loss)(x, y)
        Array([[-0.5,  0.5,  0.5, -0.5]], dtype=float32)
    """
    scores = _checks.floating_input("scores", scores)
    targets = _checks.as_array("targets", targets)
    if scores.ndim == 0:  # PyTorch's 0-d input: one class
        scores, targets = scores[None], targets[None]
    scores = _checks.class_scores("scores", scores)
    targets = _checks.same_shape("targets", targets, scores.shape, "the scores'")
    if not jnp.issubdtype(targets.dtype, jnp.integer):
        raise TypeError(f"targets must hold integer class indices, got dtype {targets.dtype}")
    return _multilabel_margin(scores, targets, reduction=_checks.reduction(reduction))


def multilabel_soft_margin_loss(
    logits: ArrayLike,
    targets: ArrayLike,
    *,
    weight: ArrayLike | None = None,
    reduction: str = "mean",
) -> jax.Array:
    r"""Multi-label logistic loss, as PyTorch's ``multilabel_soft_margin_loss``: the
    class mean of the sigmoid cross-entropy.

    $$
    \ell = -\frac{1}{C} \sum_{i} w_i \big(t_i \log\sigma(x_i) + (1 - t_i)\log\sigma(-x_i)\big).
    $$

    Gradient (the custom JVP rule of :func:`binary_cross_entropy_with_logits`):
    $\partial\ell/\partial x_i = w_i (\sigma(x_i) - t_i) / C$.

    Args:
        logits: floating logits ``(..., C)``.
        targets: targets in ``[0, 1]`` of the logits' shape, floating or integer 0/1
            (PyTorch takes both).
        weight: optional per-class weights, broadcastable to the logits.
        reduction: ``"mean"`` (over the elements, each a class mean), ``"sum"`` or ``"none"``.

    Returns:
        A scalar, or the ``logits.shape[:-1]`` losses, in the input dtype.

    PyTorch: ``F.multilabel_soft_margin_loss(logits, targets, weight=weight)``; finite
    for logits of any size, as PyTorch's.

    Examples:
        >>> import jax, jax.numpy as jnp
        >>> import jaxloss as jl
        >>> jnp.set_printoptions(precision=4)
        >>> x, t = jnp.array([[0.0, 2.0]]), jnp.array([[1.0, 0.0]])
        >>> jl.multilabel_soft_margin_loss(x, t)  # (log 2 + log(1 + e^2)) / 2
        Array(1.41, dtype=float32)
        >>> jax.grad(jl.multilabel_soft_margin_loss)(x, t)  # (sigmoid(x) - t) / 2
        Array([[-0.25  ,  0.4404]], dtype=float32)
    """
    logits = _checks.class_scores("logits", logits)
    targets = _real_targets("targets", targets, logits.shape, "in [0, 1]")
    if weight is not None:
        weight = _checks.floating_input("weight", weight)
        weight = _checks.broadcastable_to("weight", weight, logits.shape, "the logits'")
    return _multilabel_soft_margin(logits, targets, weight, reduction=_checks.reduction(reduction))


def soft_margin_loss(
    scores: ArrayLike, targets: ArrayLike, *, reduction: str = "mean"
) -> jax.Array:
    r"""Two-class logistic loss for targets $\pm 1$, as PyTorch's ``soft_margin_loss``.

    $$
    \ell = \log(1 + e^{-t x}) = -\log\sigma(t x).
    $$

    Gradient (the custom JVP rule of :func:`log_sigmoid`):
    $\partial\ell/\partial x = -t\,\sigma(-t x)$.

    Args:
        scores: floating scores, any shape.
        targets: real targets of the same shape (+1 or -1; other values extend the
            formula).
        reduction: ``"mean"``, ``"sum"`` or ``"none"``.

    Returns:
        A scalar, or elementwise losses, in the input dtype.

    PyTorch: ``F.soft_margin_loss(scores, targets)``. Deviation: PyTorch evaluates
    ``log(1 + exp(-t x))`` as written and returns ``inf`` once ``exp`` overflows
    (``t x`` below about -709 in float64, -88 in float32); here the loss is $-t x$
    plus a vanishing term, finite.

    Examples:
        >>> import jax, jax.numpy as jnp
        >>> import jaxloss as jl
        >>> jnp.set_printoptions(precision=4)
        >>> x, t = jnp.array([2.0, -1e4]), jnp.array([1.0, 1.0])
        >>> jl.soft_margin_loss(x, t, reduction="none")
        Array([1.2693e-01, 1.0000e+04], dtype=float32)
        >>> jax.grad(jl.soft_margin_loss)(x, t)  # -t sigmoid(-t x) / 2
        Array([-0.0596, -0.5   ], dtype=float32)
    """
    scores = _checks.floating_input("scores", scores)
    targets = _real_targets("targets", targets, scores.shape)
    return _soft_margin(scores, targets, reduction=_checks.reduction(reduction))


def hinge_embedding_loss(
    x: ArrayLike, targets: ArrayLike, *, margin: ArrayLike = 1.0, reduction: str = "mean"
) -> jax.Array:
    r"""Hinge embedding loss, as PyTorch's ``hinge_embedding_loss``: ``x`` is usually
    a distance, small for similar pairs ($t = 1$) and beyond the margin for
    dissimilar ones ($t = -1$).

    $$
    \ell = \begin{cases} x & t = 1 \\ \max(0,\ m - x) & t = -1 \end{cases}
    $$

    As in PyTorch, a target that is neither adds both terms. Gradient (a hand-written
    rule at the kink): $1$ for $t = 1$; $-[m - x \ge 0]$ for $t = -1$, so that at
    $x = m$ the slope is $-1$, PyTorch's choice (``jnp.maximum`` would give half).

    Args:
        x: floating inputs, any shape.
        targets: real targets of the same shape, +1 or -1.
        margin: the margin $m$, a real scalar.
        reduction: ``"mean"``, ``"sum"`` or ``"none"``.

    Returns:
        A scalar, or elementwise losses, in the input dtype.

    PyTorch: ``F.hinge_embedding_loss(x, targets, margin=margin)``.

    Examples:
        >>> import jax, jax.numpy as jnp
        >>> import jaxloss as jl
        >>> x, t = jnp.array([0.3, 0.4, 1.0]), jnp.array([1.0, -1.0, -1.0])
        >>> jl.hinge_embedding_loss(x, t, reduction="none")
        Array([0.3, 0.6, 0. ], dtype=float32)
        >>> jax.grad(jl.hinge_embedding_loss)(x, t, reduction="sum")
        Array([ 1., -1., -1.], dtype=float32)
    """
    x = _checks.floating_input("x", x)
    targets = _real_targets("targets", targets, x.shape)
    margin = _checks.real_scalar("margin", margin, minimum=-math.inf)
    return _hinge_embedding(x, targets, margin, reduction=_checks.reduction(reduction))


def hinge_loss(scores: ArrayLike, targets: ArrayLike, *, reduction: str = "mean") -> jax.Array:
    r"""Binary hinge loss for targets $\pm 1$, as optax's ``hinge_loss``.

    $$
    \ell = \max(0,\ 1 - t x).
    $$

    Gradient (a hand-written rule at the kink): $-t\,[1 - t x > 0]$; at $t x = 1$,
    where the margin is just met, 0 (optax's ``jnp.maximum`` gives $-t/2$ there).

    Args:
        scores: floating scores, any shape.
        targets: real targets of the same shape, +1 or -1.
        reduction: ``"mean"``, ``"sum"`` or ``"none"`` (optax's output).

    Returns:
        A scalar, or elementwise losses, in the input dtype.

    optax: ``optax.losses.hinge_loss(scores, targets)`` is ``reduction="none"``.

    Examples:
        >>> import jax, jax.numpy as jnp
        >>> import jaxloss as jl
        >>> x, t = jnp.array([0.5, 1.0, -2.0]), jnp.array([1.0, 1.0, 1.0])
        >>> jl.hinge_loss(x, t, reduction="none")
        Array([0.5, 0. , 3. ], dtype=float32)
        >>> jax.grad(jl.hinge_loss)(x, t, reduction="sum")  # 0 (signed -0.) at the kink
        Array([-1., -0., -1.], dtype=float32)
    """
    scores = _checks.floating_input("scores", scores)
    targets = _real_targets("targets", targets, scores.shape)
    return _binary_margin(scores, targets, reduction=_checks.reduction(reduction), offset=1.0)


def perceptron_loss(scores: ArrayLike, targets: ArrayLike, *, reduction: str = "mean") -> jax.Array:
    r"""Binary perceptron loss for targets $\pm 1$, as optax's ``perceptron_loss``.

    $$
    \ell = \max(0,\ -t x).
    $$

    Gradient (a hand-written rule at the kink): $-t\,[t x < 0]$; 0 at $x = 0$
    (optax: $-t/2$).

    Args:
        scores: floating scores, any shape.
        targets: real targets of the same shape, +1 or -1.
        reduction: ``"mean"``, ``"sum"`` or ``"none"`` (optax's output).

    Returns:
        A scalar, or elementwise losses, in the input dtype.

    optax: ``optax.losses.perceptron_loss(scores, targets)`` is ``reduction="none"``.

    Examples:
        >>> import jax, jax.numpy as jnp
        >>> import jaxloss as jl
        >>> x, t = jnp.array([0.5, 0.0, -2.0]), jnp.array([1.0, 1.0, 1.0])
        >>> jl.perceptron_loss(x, t, reduction="none")
        Array([0., 0., 2.], dtype=float32)
        >>> jax.grad(jl.perceptron_loss)(x, t, reduction="sum")
        Array([-0., -0., -1.], dtype=float32)
    """
    scores = _checks.floating_input("scores", scores)
    targets = _real_targets("targets", targets, scores.shape)
    return _binary_margin(scores, targets, reduction=_checks.reduction(reduction), offset=0.0)


def multiclass_hinge_loss(
    scores: ArrayLike, labels: ArrayLike, *, reduction: str = "mean"
) -> jax.Array:
    r"""Multi-class hinge loss (Crammer-Singer), as optax's ``multiclass_hinge_loss``.

    $$
    \ell = \max_k \big(x_k + [k \ne y]\big) - x_y .
    $$

    Gradient (a hand-written rule at ties): $e_{k^*} - e_y$, where $k^*$ is $y$ if
    it attains the maximum (the margin is met or just met: gradient 0), else the
    first class that does. ``jnp.max`` would share the gradient among tied classes.

    Args:
        scores: floating scores ``(..., C)``.
        labels: integer classes of shape ``scores.shape[:-1]``.
        reduction: ``"mean"``, ``"sum"`` or ``"none"`` (optax's output).

    Returns:
        A scalar, or per-element losses, in the input dtype; nan for a label outside
        ``[0, C)``.

    optax: ``optax.losses.multiclass_hinge_loss(scores, labels)`` is ``reduction="none"``.

    Examples:
        >>> import jax, jax.numpy as jnp
        >>> import jaxloss as jl
        >>> x, y = jnp.array([[2.0, 1.5, 0.0]]), jnp.array([1])
        >>> jl.multiclass_hinge_loss(x, y)  # (2 + 1) - 1.5
        Array(1.5, dtype=float32)
        >>> jax.grad(jl.multiclass_hinge_loss)(x, y)
        Array([[ 1., -1.,  0.]], dtype=float32)
    """
    scores = _checks.class_scores("scores", scores)
    labels = _checks.class_indices("labels", labels, scores.shape)
    return _multiclass_margin(scores, labels, reduction=_checks.reduction(reduction), margin=1.0)


def multiclass_perceptron_loss(
    scores: ArrayLike, labels: ArrayLike, *, reduction: str = "mean"
) -> jax.Array:
    r"""Multi-class perceptron loss, as optax's ``multiclass_perceptron_loss``.

    $$
    \ell = \max_k x_k - x_y .
    $$

    Gradient (a hand-written rule at ties): $e_{k^*} - e_y$, with $k^* = y$ when $y$
    attains the maximum (gradient 0), else the first class that does.

    Args:
        scores: floating scores ``(..., C)``.
        labels: integer classes of shape ``scores.shape[:-1]``.
        reduction: ``"mean"``, ``"sum"`` or ``"none"`` (optax's output).

    Returns:
        A scalar, or per-element losses, in the input dtype; nan for a label outside
        ``[0, C)``.

    optax: ``optax.losses.multiclass_perceptron_loss(scores, labels)`` is
    ``reduction="none"``.

    Examples:
        >>> import jax, jax.numpy as jnp
        >>> import jaxloss as jl
        >>> x, y = jnp.array([[2.0, 1.5, 2.0]]), jnp.array([1])
        >>> jl.multiclass_perceptron_loss(x, y)
        Array(0.5, dtype=float32)
        >>> jax.grad(jl.multiclass_perceptron_loss)(x, y)  # the first of the tied maxima
        Array([[ 1., -1.,  0.]], dtype=float32)
    """
    scores = _checks.class_scores("scores", scores)
    labels = _checks.class_indices("labels", labels, scores.shape)
    return _multiclass_margin(scores, labels, reduction=_checks.reduction(reduction), margin=0.0)
