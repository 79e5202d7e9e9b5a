"""The softmax cross-entropy kernel beneath ``cross_entropy``, ``nll_loss`` and
``linear_cross_entropy``.

Every variant of these losses (index or probability targets, class weights, label
smoothing, ignored elements) is, per element,

    l = sum_c a_c * (-log p_c),

with a *coefficient* vector ``a`` built linearly from the targets and options. This
module holds, once: the resolved class-index targets (``_targets.resolve_targets``, then
``IndexTargets.from_codes``), building the coefficients, the value and the closed-form logit
gradient ``S p - a`` (as ``jax.custom_jvp`` rules), the z-loss and the soft-cap, and
the mean's denominator. The public modules validate their arguments, build an
``Options`` (static) and a ``Scalars`` (traced), and call into it.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from jaxloss._reduce import class_weight_of, compute_dtype, explicit_sharding, is_zero
from jaxloss._softmax import max_and_sum_exp, max_min_and_sum_exp
from jaxloss._targets import IGNORED, OUT_OF_RANGE

# --- the static and traced configuration of one call ---------------------------------


@dataclasses.dataclass(frozen=True)
class Options:
    """The static configuration of one call: hashable, so it keys ``jax.jit``'s cache.

    Built by the public function after validation. ``has_*`` say whether an option can
    be nonzero; an option known at trace time to be 0 turns its work off, a traced one
    keeps the general path (so changing it under ``jit`` never retraces).
    """

    reduction: str = "mean"
    axis: int = -1
    targets_are_indices: bool = True
    has_smoothing: bool = False
    has_z_loss: bool = False
    has_softcap: bool = False


class Scalars(NamedTuple):
    """The numeric options of one call, traced: class weights (or None), label
    smoothing, the z-loss coefficient and the soft-cap (or None)."""

    class_weight: jax.Array | None
    label_smoothing: jax.Array
    z_loss: jax.Array
    logit_softcap: jax.Array | None

    def astype(self, dtype) -> Scalars:
        def cast(value):
            return None if value is None else jnp.asarray(value).astype(dtype)

        return Scalars(
            cast(self.class_weight),
            jnp.asarray(self.label_smoothing).astype(dtype),
            jnp.asarray(self.z_loss).astype(dtype),
            cast(self.logit_softcap),
        )

    @property
    def compute_dtype(self) -> jnp.dtype:
        """The dtype the loss is computed in, once ``astype`` has cast the scalars to it."""
        return self.z_loss.dtype


class Fill(NamedTuple):
    """The values written into masked entries: 0 and nan.

    Plain constants by default. Inside its loops ``linear_cross_entropy`` passes arrays
    tied to the loop index instead: XLA's CPU backend moves the broadcast of a constant
    to a tile's shape out of a loop, where it stays alive as a buffer of the tile's size.
    """

    zero: Any = 0.0
    nan: Any = float("nan")


CONSTANT_FILL = Fill()


# --- class-index targets -------------------------------------------------------------


class IndexTargets(NamedTuple):
    """Resolved class-index targets, the three facts the kernels use of each code."""

    class_index: jax.Array  # int32 class, 0 where ignored or out of range (safe to gather)
    keep: jax.Array  # the target is not ignore_index
    bad: jax.Array  # kept, but outside [0, C): the element's loss and gradient are nan

    @classmethod
    def from_codes(cls, codes: jax.Array) -> IndexTargets:
        """From the int32 codes of ``_targets.resolve_targets``."""
        return cls(jnp.maximum(codes, 0), codes != IGNORED, codes == OUT_OF_RANGE)


# --- coefficients --------------------------------------------------------------------


def target_weight(class_weight: jax.Array | None, class_index: jax.Array, dtype) -> jax.Array:
    """Each element's class weight ``w[y]``, or ones without class weights."""
    if class_weight is None:
        return jnp.ones(class_index.shape, dtype)
    return class_weight_of(class_weight.astype(dtype), class_index)


def mean_denominator(targets: IndexTargets, w_y: jax.Array) -> jax.Array:
    """``sum_n w[y_n]`` over kept elements: what ``"mean"`` divides by (index targets)."""
    return jnp.sum(jnp.where(targets.keep, w_y, 0.0))


def smoothing_is_on(scalars: Scalars, options: Options):
    """Whether the smoothing term can be nonzero: the static flag refined at run time
    (a traced smoothing of 0, or class weights that are all 0, turn it off)."""
    if not options.has_smoothing:
        return jnp.zeros((), bool)
    on = scalars.label_smoothing != 0
    return on if scalars.class_weight is None else on & jnp.any(scalars.class_weight != 0)


def contributing(
    targets: IndexTargets, w_y: jax.Array, scalars: Scalars, options: Options
) -> jax.Array:
    """The elements whose loss can be nonzero: kept, with a nonzero coefficient (target
    weight, smoothing or z-loss), or out of range (their loss is nan). The others add
    exactly 0 to the loss and to every gradient of the logits, whatever their logits hold."""
    coefficient = (1.0 - scalars.label_smoothing) * w_y if options.has_smoothing else w_y
    live = (coefficient != 0) | smoothing_is_on(scalars, options)
    if options.has_z_loss:
        live = jnp.ones_like(live)
    return targets.keep & (live | targets.bad)


def live_classes(x: jax.Array) -> tuple[jax.Array, jax.Array]:
    """The classes that can carry probability (logit not ``-inf``; a masked class has
    been set to ``-inf``) and their count ``K`` per row (at least 1), along the last axis."""
    live = x != -jnp.inf
    return live, jnp.maximum(jnp.sum(live, axis=-1), 1).astype(x.dtype)


def smoothing_share(x: jax.Array, label_smoothing) -> jax.Array:
    """``eps / K`` on the live classes, 0 elsewhere: the smoothing part of ``a``."""
    live, count = live_classes(x)
    return jnp.where(live, label_smoothing / count[..., None], 0.0)


def index_coefficients(
    targets: IndexTargets,
    num_classes: int,
    class_weight,
    dtype,
    label_smoothing=None,
    share=None,
):
    """The coefficients ``a`` of class-index targets as an array ``[..., C]``.

    ``w[y] * onehot(y)``, or with smoothing ``(1 - eps) w[y] onehot(y) + share * w``
    where ``share`` is ``eps / K`` on the live classes; zero on ignored elements and
    nan on elements whose target is outside ``[0, C)``. Returns ``(a, w_y)``.
    """
    w_y = target_weight(class_weight, targets.class_index, dtype)
    spread = None
    if share is not None:
        spread = share if class_weight is None else share * class_weight
    element_weight = jnp.where(targets.keep, w_y, 0.0)
    columns = jnp.arange(num_classes, dtype=jnp.int32)
    a = coefficient_columns(targets, element_weight, columns, label_smoothing, spread)
    return a, w_y


def coefficient_columns(
    targets: IndexTargets,
    element_weight,
    columns: jax.Array,
    label_smoothing=None,
    spread=None,
    fill: Fill = CONSTANT_FILL,
):
    """The columns ``columns`` (class ids, ``[width]`` int32, may be traced) of the
    coefficients of ``index_coefficients``, from each element's weight (``w[y]``, 0
    where ignored) and the smoothing ``spread`` of those columns (``share * w``), or
    None without smoothing. The second pass of ``linear_cross_entropy`` walks the
    vocabulary with them."""
    onehot = targets.class_index[..., None] == columns
    a = jnp.where(onehot, element_weight[..., None], fill.zero)
    if spread is not None:
        a = (1.0 - label_smoothing) * a + jnp.where(targets.keep[..., None], spread, fill.zero)
    return jnp.where(targets.bad[..., None], fill.nan, a)


# --- z-loss and soft-cap -------------------------------------------------------------


def z_loss_term(lse: jax.Array, z_loss, keep=None) -> jax.Array:
    """PaLM's ``z * lse^2`` per element (0 where ``keep`` is False)."""
    term = z_loss * jnp.square(lse)
    return term if keep is None else jnp.where(keep, term, 0.0)


def z_loss_logit_scale(lse: jax.Array, z_loss, keep) -> jax.Array:
    """What the z-loss adds to the row scale ``S`` of the logit gradient ``S p - a``:
    ``d(z lse^2)/dx = 2 z lse p``."""
    return jnp.where(keep, 2.0 * z_loss * lse, 0.0)


def soft_cap(x: jax.Array, cap) -> tuple[jax.Array, jax.Array]:
    """Gemma 2's ``cap * tanh(x / cap)``, and the tanh for ``soft_cap_gradient``."""
    t = jnp.tanh(x / cap)
    return cap * t, t


def soft_cap_gradient(grad: jax.Array, t: jax.Array) -> jax.Array:
    """The gradient through the soft-cap: times ``1 - tanh^2``."""
    return grad * (1.0 - jnp.square(t))


# --- the value and its logit gradient ------------------------------------------------


def drop_minus_inf_tangent(x: jax.Array, dx: jax.Array) -> jax.Array:
    """A ``-inf`` logit (a masked class) is a constant: its tangent is 0."""
    return jnp.where(x == -jnp.inf, 0.0, dx)


def logit_gradient(scale, p, a, fill: Fill = CONSTANT_FILL):
    """``scale * p - a``: the gradient of ``sum_c a_c (-log p_c)`` (times ``scale = S``)
    in the logits, exactly 0 for a class whose coefficient and row scale are both 0, so
    that a row that adds nothing passes no gradient, even from non-finite logits."""
    return jnp.where((scale != 0) | (a != 0), scale * p - a, fill.zero)


def xent_terms(x, a, m, s, low):
    """Cross-entropy and log-sum-exp along the last axis from the shift ``m`` and sum ``s``
    (``x`` and ``a`` in their own dtype, computed in at least float32).

    ``sum_c a_c (lse - x_c)`` is evaluated as ``S log s + sum_c a_c (m - x_c)`` with
    ``S = sum_c a_c``: no two large numbers are subtracted, so adding a constant to a
    row of logits changes the loss only by the rounding of the logits themselves.

    A class with logit ``-inf`` (masked, probability 0) has ``m - x_c = inf``: with
    ``a_c = 0`` it contributes exactly 0 rather than ``0 * inf = nan``, and with mass
    ``a_c > 0`` the loss is the true ``inf`` (never a large finite number that would
    pass for a loss). A row that is all ``-inf`` (``s = 0``) has no softmax at all:
    with mass its loss is ``nan``, without it 0.
    """
    # The shifts are clamped at the largest float so that 0 * inf never forms, and again
    # at half of it: the two sums differ exactly where mass sits on a shift below that,
    # which is -inf (logits are finite or -inf). Both are plain sums of products, which
    # XLA's CPU backend fuses with the reads of x and a (a select or a comparison inside
    # the sum would have it write an N x C temporary first).
    dtype = m.dtype
    biggest = jnp.finfo(dtype).max

    def shifted_sum(floor):
        return -jnp.sum(a.astype(dtype) * jnp.maximum(x.astype(dtype) - m, floor), axis=-1)

    total = jnp.sum(a.astype(dtype), axis=-1)
    cross = shifted_sum(-biggest)
    loss = total * jnp.log(jnp.maximum(s[..., 0], 1.0)) + cross

    # The branch upcasts low-precision inputs itself: an upcast array passed into it
    # would be written out in float32 on every call, -inf or not.
    def mass_on_minus_inf(loss):
        return jnp.where(cross > shifted_sum(-0.5 * biggest), jnp.inf, loss)

    # The second sum only where some logit is -inf (``low``, each row's minimum).
    any_minus_inf = jnp.any(low == -jnp.inf)
    loss = jax.lax.cond(any_minus_inf, mass_on_minus_inf, lambda loss: loss, loss)
    loss = jnp.where((s[..., 0] == 0) & (total != 0), jnp.nan, loss)
    return loss, m[..., 0] + jnp.log(s[..., 0])


@jax.custom_jvp
def softmax_cross_entropy(x: jax.Array, a: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Returns ``(sum_c a_c * -log_softmax(x)_c, logsumexp(x))`` along the last axis, in
    at least float32 (``x`` and ``a`` are upcast inside)."""
    return xent_terms(x, a, *max_min_and_sum_exp(x.astype(compute_dtype(x.dtype))))


def _softmax_cross_entropy_jvp(primals, tangents):
    # d loss = <S p - a, dx> + <-log p, da>,   d lse = <p, dx>.
    # Classes with logit -inf (masked) have p = 0 and a = 0: their dx is dropped,
    # and by the convention 0 * log 0 = 0 their -log p is taken as 0 for da.
    x_in, a_in = primals
    dx, da = tangents
    dtype = compute_dtype(x_in.dtype)
    x, a = x_in.astype(dtype), a_in.astype(dtype)
    m, s, low = max_min_and_sum_exp(x)
    loss, lse = xent_terms(x_in, a_in, m, s, low)
    dloss = jnp.zeros_like(loss)
    dlse = jnp.zeros_like(lse)
    if not is_zero(dx):
        # exp((x - m) - log s) rather than exp(x - m) / s: a distinct expression, so XLA
        # does not merge it with the forward's exp(x - m) and keep that N x C array
        # between the passes; each pass then reads only the logits.
        p = jnp.where(s == 0, 0.0, jnp.exp((x - m) - jnp.log(s)))
        dx = drop_minus_inf_tangent(x, dx.astype(dtype))
        grad = logit_gradient(jnp.sum(a, axis=-1, keepdims=True), p, a)
        dloss = dloss + jnp.sum(grad * dx, axis=-1)
        dlse = jnp.sum(p * dx, axis=-1)
    if not is_zero(da):
        neg_log_p = jnp.where(x == -jnp.inf, 0.0, lse[..., None] - x)
        dloss = dloss + jnp.sum(da.astype(dtype) * neg_log_p, axis=-1)
    return (loss, lse), (dloss, dlse)


softmax_cross_entropy.defjvp(_softmax_cross_entropy_jvp, symbolic_zeros=True)


@jax.custom_jvp
def index_nll(log_probs: jax.Array, targets: IndexTargets, element_weight: jax.Array):
    """``-w log_probs[y]`` per element from a gather (no pass over the classes): 0 where
    the weight ``w`` is 0 (an ignored element, whatever its log-probabilities), nan
    where the target is out of range."""
    picked = target_logit(log_probs, targets.class_index)
    loss = jnp.where(element_weight != 0, -element_weight * picked, 0.0)
    return jnp.where(targets.bad, jnp.nan, loss)


def _index_nll_jvp(primals, tangents):
    log_probs, targets, element_weight = primals
    dlog_probs, _, dweight = tangents
    picked = target_logit(log_probs, targets.class_index)
    loss = index_nll(log_probs, targets, element_weight)
    dloss = jnp.zeros_like(loss)
    if not is_zero(dlog_probs):
        dpicked = target_logit(dlog_probs, targets.class_index)
        # The loss is linear in log_probs[y], but a nan one gives a nan gradient too.
        slope = jnp.where(element_weight != 0, element_weight, 0.0)
        slope = jnp.where(jnp.isnan(loss), jnp.nan, slope)
        dloss = dloss - slope * dpicked
        # Out of range, the whole row's gradient is nan (the class is unknown).
        row_nan = jnp.where(targets.bad, jnp.nan, 0.0)
        dloss = dloss + row_nan * jnp.sum(dlog_probs, axis=-1)
    if not is_zero(dweight):
        # 0 * log 0 = 0: an impossible target adds no gradient to its weight, nor does
        # one out of range (its weight is not that of any class).
        dead = targets.bad | (picked == -jnp.inf)
        dloss = dloss - dweight * jnp.where(dead, 0.0, picked)
    return loss, dloss


index_nll.defjvp(_index_nll_jvp, symbolic_zeros=True)


class _IndexTerms(NamedTuple):
    loss: jax.Array  # per element
    lse: jax.Array  # log-sum-exp of contributing elements, 0 elsewhere
    nll: jax.Array  # lse - x_y
    smooth: jax.Array | None  # sum_c w_c (lse - x_c) / K over live classes
    w_y: jax.Array
    live: jax.Array | None  # classes that can carry probability
    live_count: jax.Array | None  # K
    live_weight: jax.Array | None  # W, the sum of the live classes' weights
    shift: jax.Array  # the row maximum m (keepdims)
    log_s: jax.Array  # log sum exp(x - m) (keepdims)


def target_logit(x, class_index):
    """``x[..., y]``: a gather, so the only full passes over ``x`` are the max and
    the sum of exponentials. A class axis sharded in JAX's explicit sharding mode
    cannot be gathered from without collectives, so there it is a masked sum, which
    partitions into a per-device sum and one all-reduce of N floats."""
    sharding = explicit_sharding(x)
    if sharding is not None and sharding.spec[-1:] not in ((), (None,)):
        onehot = class_index[..., None] == jnp.arange(x.shape[-1], dtype=class_index.dtype)
        return jnp.sum(jnp.where(onehot, x, 0.0), axis=-1)
    return jnp.take_along_axis(x, class_index[..., None], axis=-1)[..., 0]


def _index_terms(x, targets, counted, scalars, options) -> _IndexTerms:
    class_weight, eps = scalars.class_weight, scalars.label_smoothing
    w_y = target_weight(class_weight, targets.class_index, x.dtype)
    m, s = max_and_sum_exp(x, -1)
    log_s = jnp.log(s[..., 0])
    # (m - x_y) + log s, not lse - x_y: the difference of the two large logits is
    # exact, so a common offset of the row does not change the loss.
    nll = (m[..., 0] - target_logit(x, targets.class_index)) + log_s
    target_coefficient = w_y
    smooth = live = live_count = live_weight = None
    if options.has_smoothing:
        target_coefficient = (1.0 - eps) * w_y
        live, live_count = live_classes(x)
        weights = 1.0 if class_weight is None else class_weight
        # sum_c w_c (lse - x_c) = sum_c w_c (m - x_c) + W log s, W = sum_c w_c over the
        # live classes: no large terms cancel.
        shifted = jnp.sum(jnp.where(live, weights * (m - x), 0.0), axis=-1)
        live_weight = (
            live_count
            if class_weight is None
            else jnp.sum(jnp.where(live, class_weight, 0.0), axis=-1)
        )
        smooth = (shifted + live_weight * log_s) / live_count
    loss = jnp.where(target_coefficient != 0, target_coefficient * nll, 0.0)
    if options.has_smoothing:
        loss = loss + jnp.where(smoothing_is_on(scalars, options), eps * smooth, 0.0)
    loss = jnp.where(targets.bad, jnp.nan, jnp.where(counted, loss, 0.0))
    lse = jnp.where(counted, m[..., 0] + log_s, 0.0)
    return _IndexTerms(
        loss, lse, nll, smooth, w_y, live, live_count, live_weight, m, log_s[..., None]
    )


@functools.partial(jax.custom_jvp, nondiff_argnums=(4,))
def index_cross_entropy(x, targets: IndexTargets, counted, scalars: Scalars, options: Options):
    """Per-element ``(loss, lse)`` of class-index targets along the last axis.

    The loss is ``sum_c a_c (-log p_c)`` with ``a`` as in ``index_coefficients``,
    computed without building ``a``: the target logit is gathered. Elements outside
    ``counted`` (see ``contributing``) have loss 0, lse 0 and no gradient. Tangents
    reach ``x``, the class weights and the label smoothing; the z-loss and soft-cap
    are applied by the caller.
    """
    terms = _index_terms(x, targets, counted, scalars, options)
    return terms.loss, terms.lse


def _index_cross_entropy_jvp(options, primals, tangents):
    # d loss = <S p - a, dx> + d(w) and d(eps) terms;  d lse = <p, dx>.
    x, targets, counted, scalars = primals
    dx, _, _, dscalars = tangents
    class_weight, eps = scalars.class_weight, scalars.label_smoothing
    terms = _index_terms(x, targets, counted, scalars, options)
    scored = targets.keep & ~targets.bad
    dloss = jnp.zeros_like(terms.loss)
    dlse = jnp.zeros_like(terms.lse)
    if not is_zero(dx):
        # exp(x - m) as in the forward's sum: XLA computes it once, in a buffer that the
        # gradient then overwrites (no temporary), and the gradient reads no logits.
        p = jnp.exp(x - terms.shift) * jnp.exp(-terms.log_s)
        if options.has_smoothing:
            share = jnp.where(terms.live, (eps / terms.live_count)[..., None], 0.0)
            a, _ = index_coefficients(targets, x.shape[-1], class_weight, x.dtype, eps, share)
            # S = sum_c a_c in closed form: a second reduction over the classes would cost
            # another pass.
            scale = (1.0 - eps) * terms.w_y + eps * terms.live_weight / terms.live_count
        else:
            a, _ = index_coefficients(targets, x.shape[-1], class_weight, x.dtype)
            scale = terms.w_y
        # A -inf logit is a constant (a mask): a target there (nll = inf) gets no
        # gradient, decided per row; elsewhere p = 0 and a = 0 already give 0.
        dead = (terms.nll == jnp.inf)[..., None] & (
            targets.class_index[..., None] == jnp.arange(x.shape[-1], dtype=jnp.int32)
        )
        a = jnp.where(dead, 0.0, a)
        grad = jnp.where(counted[..., None], logit_gradient(scale[..., None], p, a), 0.0)
        grad = jnp.where(targets.bad[..., None], jnp.nan, grad)
        dloss = dloss + jnp.sum(grad * dx, axis=-1)
        # Masked before the product: transposed, 0 * p would be nan for a row of nan logits.
        dlse = jnp.sum(jnp.where(counted[..., None], p, 0.0) * dx, axis=-1)
    dclass_weight = dscalars.class_weight
    if class_weight is not None and not is_zero(dclass_weight):
        d_w = class_weight_of(dclass_weight, targets.class_index) * terms.nll
        if options.has_smoothing:
            neg_log_p = jnp.where(terms.live, terms.lse[..., None] - x, 0.0)
            d_smooth = jnp.sum(dclass_weight * neg_log_p, axis=-1) / terms.live_count
            d_w = (1.0 - eps) * d_w + eps * d_smooth
        dloss = dloss + jnp.where(scored, d_w, 0.0)
    deps = dscalars.label_smoothing
    if options.has_smoothing and not is_zero(deps):
        d_eps = terms.smooth - terms.w_y * terms.nll
        dloss = dloss + jnp.where(scored, d_eps * deps, 0.0)
    return (terms.loss, terms.lse), (dloss, dlse)


index_cross_entropy.defjvp(_index_cross_entropy_jvp, symbolic_zeros=True)
