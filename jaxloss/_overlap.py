"""Overlap losses for segmentation: ``tversky_loss``, ``dice_loss`` and
``generalized_dice_loss``.

Each class's loss is a ratio of three sums over the pixels (the soft intersection,
the predicted mass and the target mass). The sums are linear and left to autodiff;
the ratio carries a hand-written rule that also defines the empty case.
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
from jax.typing import ArrayLike

from jaxloss import _checks
from jaxloss._reduce import compute_dtype, reduce_loss
from jaxloss._softmax import _softmax
from jaxloss._targets import class_index


@jax.custom_jvp
def _tversky_ratio(intersection, predicted, target, alpha, beta, smooth):
    """``1 - (I + s) / (I + alpha (P - I) + beta (T - I) + s)``; 0 where the denominator
    is 0 (no target, no prediction, no smoothing: a perfect empty match)."""
    numerator, denominator = _terms(intersection, predicted, target, alpha, beta, smooth)
    empty = denominator == 0
    return jnp.where(empty, 0.0, 1.0 - numerator / jnp.where(empty, 1.0, denominator))


def _terms(intersection, predicted, target, alpha, beta, smooth):
    numerator = intersection + smooth
    false_positive, false_negative = predicted - intersection, target - intersection
    return numerator, numerator + alpha * false_positive + beta * false_negative


@_tversky_ratio.defjvp
def _tversky_ratio_jvp(primals, tangents):
    intersection, predicted, target, alpha, beta, smooth = primals
    d_i, d_p, d_t, d_alpha, d_beta, d_smooth = tangents
    numerator, denominator = _terms(*primals)
    empty = denominator == 0
    inverse = 1.0 / jnp.where(empty, 1.0, denominator)
    ratio = numerator * inverse
    # d(1 - N/D) = (N dD - D dN) / D^2 = (ratio dD - dN) / D
    d_numerator = d_i + d_smooth
    d_denominator = (
        (1.0 - alpha - beta) * d_i + alpha * d_p + beta * d_t + d_smooth
        + (predicted - intersection) * d_alpha + (target - intersection) * d_beta
    )  # fmt: skip
    tangent = (ratio * d_denominator - d_numerator) * inverse
    return _tversky_ratio(*primals), jnp.where(empty, 0.0, tangent)


def _target_mass(targets, shape, classes_axis: int | None, dtype):
    """Targets as per-class mass of ``shape`` (classes last): one-hot rows for class
    indices (nan rows for indices outside the classes), else the given values."""
    num_classes = shape[-1]
    if jnp.issubdtype(targets.dtype, jnp.integer) and targets.ndim < len(shape):
        label = class_index(targets, num_classes)
        one_hot = jnp.arange(num_classes) == label.class_index[..., None]
        return jnp.where(label.valid[..., None], one_hot, jnp.nan).astype(dtype)
    if classes_axis is None or targets.ndim < len(shape):
        return targets.astype(dtype)[..., None]
    return jnp.moveaxis(targets.astype(dtype), classes_axis, -1)


@functools.partial(jax.jit, static_argnames=("axis", "options"))
def _overlap(predictions, targets, weight, alpha, beta, smooth, *, axis, options):
    from_logits, per_sample, ignore_background, generalized, reduction = options
    dtype = compute_dtype(predictions.dtype)
    x = predictions.astype(dtype)
    x = x[..., None] if axis is None else jnp.moveaxis(x, axis, -1)
    mass = _target_mass(targets, x.shape, axis, dtype)
    if not from_logits:
        p = x
    elif x.shape[-1] == 1:
        p = jax.nn.sigmoid(x)
    else:
        p = _softmax(x, x.ndim - 1)
    per_sample = per_sample and x.ndim > 1
    batch = x.shape[0] if per_sample else 1
    # The pixels per sample, spelled out: reshape cannot infer -1 from an empty batch.
    pixels = math.prod(x.shape[:-1]) // batch if batch else 0
    p, mass = p.reshape(batch, pixels, x.shape[-1]), mass.reshape(batch, pixels, x.shape[-1])
    intersection, target = jnp.sum(p * mass, axis=1), jnp.sum(mass, axis=1)
    loss = _tversky_ratio(intersection, jnp.sum(p, axis=1), target, alpha, beta, smooth)
    if generalized:  # optax's weights: inverse squared class mass, mean 1
        inverse = 1.0 / (jnp.sum(target, axis=0) ** 2 + 1e-7)
        loss = loss * (inverse * inverse.size / jnp.sum(inverse))
    if weight is not None:
        loss = loss * weight.astype(dtype)
    if ignore_background and loss.shape[-1] > 1:
        loss = loss[:, 1:]
    loss = loss if per_sample else loss[0]
    loss = loss[..., 0] if axis is None else loss  # one binary channel: no class axis
    return reduce_loss(loss, reduction).astype(predictions.dtype)


def _overlap_arguments(predictions, targets, axis, weight):
    """Checks the arrays; returns them with the class axis normalized (None: binary,
    no class axis). Integer targets without the class axis are class indices; targets
    of the predictions' shape are per-class mass (one-hot or soft)."""
    predictions = _checks.floating_input("predictions", predictions, min_ndim=1)
    if axis is not None:
        axis = _checks.class_axis(axis, predictions.ndim)
        _checks.has_classes("predictions", predictions.shape, axis)
    targets = _checks.as_array("targets", targets)
    kind = targets.dtype
    if not (
        jnp.issubdtype(kind, jnp.integer) or jnp.issubdtype(kind, jnp.floating) or kind == jnp.bool_
    ):
        raise TypeError(f"targets must be class indices or per-class mass, got {targets.dtype}")
    index_shape = None if axis is None else predictions.shape[:axis] + predictions.shape[axis + 1 :]
    is_index = jnp.issubdtype(targets.dtype, jnp.integer) and targets.shape == index_shape
    if is_index and predictions.shape[axis] == 1:
        raise ValueError(
            f"targets: with one class (predictions' axis {axis} has size 1), integer targets "
            "without the class axis would all be class 0; pass 0/1 targets of the "
            f"predictions' shape {predictions.shape}, or axis=None for one binary channel"
        )
    if not is_index:
        targets = _checks.same_shape("targets", targets, predictions.shape, "the predictions'")
        targets = targets.astype(compute_dtype(predictions.dtype))
    classes = 1 if axis is None else predictions.shape[axis]
    return predictions, targets, axis, _checks.class_weight(weight, classes)


def _options(from_logits, per_sample, ignore_background, generalized: bool, reduction):
    """The static options of ``_overlap``, checked."""
    return (
        _checks.flag("from_logits", from_logits),
        _checks.flag("per_sample", per_sample),
        _checks.flag("ignore_background", ignore_background),
        generalized,
        _checks.reduction(reduction),
    )


def _scalars(alpha, beta, smooth):
    return (
        _checks.real_scalar("alpha", alpha, minimum=0.0),
        _checks.real_scalar("beta", beta, minimum=0.0),
        _checks.real_scalar("smooth", smooth, minimum=0.0),
    )


def tversky_loss(
    predictions: ArrayLike,
    targets: ArrayLike,
    *,
    alpha: ArrayLike = 0.5,
    beta: ArrayLike = 0.5,
    smooth: ArrayLike = 1.0,
    axis: int | None = -1,
    weight: ArrayLike | None = None,
    from_logits: bool = True,
    per_sample: bool = True,
    ignore_background: bool = False,
    reduction: str = "mean",
) -> jax.Array:
    r"""Tversky loss: the soft Dice loss with separate weights on false positives and
    false negatives.

    With $p$ the predicted probabilities and $t$ the targets of one class, summed
    over the pixels ($I = \sum p t$, $P = \sum p$, $T = \sum t$):

    $$
    \ell = 1 - \frac{I + s}{I + \alpha (P - I) + \beta (T - I) + s}.
    $$

    $\alpha = \beta = 1/2$ is the Dice loss. A class with no target and no
    prediction mass and ``smooth=0`` (a 0/0 ratio) has loss 0, a perfect match, and
    a zero gradient. Gradient (the custom JVP rule of the ratio; the sums are
    linear): with $N = I + s$ and $D$ the denominator,
    $\partial\ell/\partial I = (N(1 - \alpha - \beta)/D - 1)/D$,
    $\partial\ell/\partial P = N\alpha/D^2$, $\partial\ell/\partial T = N\beta/D^2$,
    so $\partial\ell/\partial p = t\,\partial\ell/\partial I + \partial\ell/\partial P$
    before the softmax.

    Args:
        alpha: weight of the false positives $P - I$ (>= 0).
        beta: weight of the false negatives $T - I$ (>= 0).
        predictions: floating logits (or probabilities with ``from_logits=False``),
            with the classes along ``axis``; ``axis=None`` for one binary channel
            and no class axis.
        targets: class indices (integers, the predictions' shape without ``axis``),
            or per-class mass of the predictions' shape (one-hot, 0/1 or soft).
        axis: the class axis (``1`` for PyTorch's ``(N, C, d1, ...)``), or None.
        smooth: added to the numerator and the denominator (>= 0).
        weight: optional per-class weights, shape ``(C,)``, multiplying each class's
            loss.
        from_logits: apply a softmax over the classes (a sigmoid for one class or
            ``axis=None``) first.
        per_sample: sum over every axis except the class axis and the first other
            axis (the batch), giving one loss per sample and class (optax's
            default); False also sums over the batch (one loss per class).
        ignore_background: leave out class 0 (when there is more than one).
        reduction: ``"mean"`` over samples and classes, ``"sum"``, or ``"none"``
            (``(B, C)`` per sample, ``(C,)`` otherwise; without the class axis for
            ``axis=None``).

    Returns:
        The reduced loss in the predictions' dtype (computed in float32 for 16-bit
        inputs); nan for a sample with a class index outside ``[0, C)``.

    optax: ``optax.losses.dice_loss(logits, one_hot, alpha=a, beta=b)`` (per sample,
    mean over classes) is ``tversky_loss(logits, one_hot, alpha=a, beta=b,
    reduction="none").mean(-1)``. Keras 3: ``keras.losses.Tversky(alpha, beta)`` is
    ``tversky_loss(probs, targets, alpha=alpha, beta=beta, axis=None, smooth=0.0,
    from_logits=False, per_sample=False)``.

    Examples:
        >>> import jax, jax.numpy as jnp
        >>> import jaxloss as jl
        >>> jnp.set_printoptions(precision=4)
        >>> p, t = jnp.array([0.9, 0.2, 0.6]), jnp.array([1.0, 0.0, 0.0])
        >>> # I = 0.9, FP = 0.8, FN = 0.1: 1 - 0.9 / (0.9 + 0.7 * 0.8 + 0.3 * 0.1)
        >>> kwargs = dict(alpha=0.7, beta=0.3, smooth=0.0, axis=None, from_logits=False)
        >>> jl.tversky_loss(p, t, per_sample=False, **kwargs)  # the three pixels together
        Array(0.396, dtype=float32)
        >>> jax.grad(jl.tversky_loss)(p, t, per_sample=False, **kwargs)
        Array([-0.3874,  0.2838,  0.2838], dtype=float32)
    """
    predictions, targets, axis, weight = _overlap_arguments(predictions, targets, axis, weight)
    options = _options(from_logits, per_sample, ignore_background, False, reduction)
    scalars = _scalars(alpha, beta, smooth)
    return _overlap(predictions, targets, weight, *scalars, axis=axis, options=options)


def dice_loss(
    predictions: ArrayLike,
    targets: ArrayLike,
    *,
    smooth: ArrayLike = 1.0,
    axis: int | None = -1,
    weight: ArrayLike | None = None,
    from_logits: bool = True,
    per_sample: bool = True,
    ignore_background: bool = False,
    reduction: str = "mean",
) -> jax.Array:
    r"""Soft Dice loss, per class: :func:`tversky_loss` with $\alpha = \beta = 1/2$.

    $$
    \ell = 1 - \frac{2 I + 2 s}{P + T + 2 s}, \qquad I = \sum p t,\ P = \sum p,\ T = \sum t.
    $$

    Gradient: that of :func:`tversky_loss`, $\partial\ell/\partial p =
    -2t/(P + T + 2s) + 2(I + s)/(P + T + 2s)^2$ before the softmax.

    Args:
        predictions: logits or probabilities, classes along ``axis`` (see
            :func:`tversky_loss`).
        targets: class indices, or per-class mass of the predictions' shape.
        smooth: added to the numerator and the denominator (>= 0).
        axis: the class axis, or None for one binary channel.
        weight: optional per-class weights, shape ``(C,)``.
        from_logits: apply a softmax (a sigmoid for one channel) first.
        per_sample: one loss per sample and class (True), or pooled over the batch.
        ignore_background: leave out class 0.
        reduction: ``"mean"``, ``"sum"`` or ``"none"``.

    Returns:
        The reduced loss in the predictions' dtype; nan for a sample with a class
        index outside ``[0, C)``.

    optax: ``optax.losses.dice_loss(logits, one_hot)`` (per sample, mean over
    classes) is ``dice_loss(logits, one_hot, reduction="none").mean(-1)``, and its
    mean over the batch is ``dice_loss(logits, one_hot)``. Keras 3:
    ``keras.losses.Dice()`` is ``dice_loss(probs, targets, axis=None, smooth=0.0,
    from_logits=False, per_sample=False)``.

    Examples:
        >>> import jax, jax.numpy as jnp
        >>> import jaxloss as jl
        >>> jnp.set_printoptions(precision=4)
        >>> logits = jnp.array([[2.0, 0.0], [0.0, 2.0], [1.0, 1.0]])
        >>> labels = jnp.array([0, 1, 1])  # class indices
        >>> jl.dice_loss(logits, labels, per_sample=False, reduction="none")  # per class
        Array([0.1641, 0.1343], dtype=float32)
        >>> jax.grad(jl.dice_loss)(logits, labels, per_sample=False)[0]
        Array([-0.0218,  0.0218], dtype=float32)
    """
    return tversky_loss(
        predictions, targets, alpha=0.5, beta=0.5, smooth=smooth, axis=axis, weight=weight,
        from_logits=from_logits, per_sample=per_sample, ignore_background=ignore_background,
        reduction=reduction,
    )  # fmt: skip


def generalized_dice_loss(
    predictions: ArrayLike,
    targets: ArrayLike,
    *,
    smooth: ArrayLike = 1.0,
    axis: int | None = -1,
    from_logits: bool = True,
    per_sample: bool = True,
    ignore_background: bool = False,
    reduction: str = "mean",
) -> jax.Array:
    r"""Generalized Dice loss (Sudre et al., 2017): the Dice loss of each class weighted
    by the inverse square of its target mass over the whole batch, as optax computes
    it.

    $$
    \ell_c = w_c\, \mathrm{dice}_c, \qquad
    w_c = C\,\frac{1/(T_c^2 + 10^{-7})}{\sum_k 1/(T_k^2 + 10^{-7})},\quad
    T_c = \textstyle\sum_{\text{batch, pixels}} t_c.
    $$

    The weights depend on the targets alone. Gradient: that of :func:`dice_loss`,
    times $w_c$.

    Args:
        predictions: logits or probabilities, classes along ``axis`` (see
            :func:`tversky_loss`).
        targets: class indices, or per-class mass of the predictions' shape.
        smooth: added to the numerator and the denominator (>= 0).
        axis: the class axis, or None for one binary channel.
        from_logits: apply a softmax (a sigmoid for one channel) first.
        per_sample: one loss per sample and class (True), or pooled over the batch.
        ignore_background: leave out class 0.
        reduction: ``"mean"``, ``"sum"`` or ``"none"``.

    Returns:
        The reduced loss in the predictions' dtype.

    optax: ``optax.losses.multiclass_generalized_dice_loss(logits, one_hot)`` is
    ``generalized_dice_loss(logits, one_hot)``.

    Examples:
        >>> import jax.numpy as jnp
        >>> import jaxloss as jl
        >>> logits = jnp.array([[2.0, 0.0], [0.0, 2.0], [1.0, 1.0]])
        >>> float(jl.generalized_dice_loss(logits, jnp.array([0, 1, 1]))) > 0
        True
    """
    predictions, targets, axis, _ = _overlap_arguments(predictions, targets, axis, None)
    options = _options(from_logits, per_sample, ignore_background, True, reduction)
    scalars = _scalars(0.5, 0.5, smooth)
    return _overlap(predictions, targets, None, *scalars, axis=axis, options=options)
