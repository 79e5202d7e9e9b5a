"""Connectionist temporal classification: ``ctc_loss`` and ``ctc_loss_with_paddings``.

The loss runs the forward recursion of Graves et al. (2006) in log space as a
``lax.scan`` over time, over the extended label sequence (a blank before, between
and after the labels: S' = 2S + 1 states), each frame rescaled and each variable kept
as a float pair (``Pair``) so that float32 loses nothing to their size. Its JVP rule
takes the gradient from the state occupancies, computed by the smoothing recursion
from the stored forward variables (``_occupancy``), so autodiff never differentiates
through the scan at first order. The lattice costs O(T B S') memory, never O(T S' C).
"""

from __future__ import annotations

import functools
import numbers
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.typing import ArrayLike

from jaxloss import _checks
from jaxloss._reduce import compute_dtype, safe_divide
from jaxloss._softmax import log_softmax
from jaxloss._targets import bounded_count, target_codes


class Pair(NamedTuple):
    """A log value as the unevaluated sum ``hi + lo`` of two floats: ``lo`` holds what
    rounding ``hi`` lost. The forward variables are kept so: far below their frame's
    largest (the states a path reaches only against the odds so far) they are tens of
    units in size, and float32 rounds them by ~2e-6 at each frame, a perturbation of
    the emissions larger than their own rounding that the occupancies would carry."""

    hi: jax.Array
    lo: jax.Array


def _two_sum(a, b) -> Pair:
    """``a + b`` exactly, as a ``Pair`` (Knuth's TwoSum); ``lo`` is 0 where ``hi`` is
    not finite."""
    hi = a + b
    b_part = hi - a
    lo = (a - (hi - b_part)) + (b - b_part)
    return Pair(hi, jnp.where(jnp.isfinite(hi), lo, 0.0))


def _shifted_pair(pair: Pair, by: int, allowed=True) -> Pair:
    """The pair of state ``s - by`` at state ``s`` (-inf where not ``allowed``)."""
    hi = jnp.where(allowed, _shift_right(pair.hi, by), -jnp.inf)
    return Pair(hi, jnp.where(allowed, _shift_right(pair.lo, by, 0.0), 0.0))


def _log_sum(terms, axis=None):
    """``log sum exp(hi + lo)`` over ``terms`` (a list of pairs, elementwise) or over
    ``axis`` of one pair, as ``top + log_total``: ``top`` the largest ``hi`` (0 when
    every term is -inf; a constant to autodiff), ``log_total`` in ``[0, log n]``
    (``-inf`` for an empty sum, whose log is taken at 1 so that higher derivatives
    stay finite). nan when a term is."""
    if axis is None:
        top = functools.reduce(jnp.maximum, [t.hi for t in terms])
    else:
        top = jnp.max(terms.hi, axis=axis, keepdims=True)
    top = jnp.where(top == -jnp.inf, 0.0, jax.lax.stop_gradient(top))
    if axis is None:
        total = sum(jnp.exp((t.hi - top) + t.lo) for t in terms)
    else:
        total = jnp.sum(jnp.exp((terms.hi - top) + terms.lo), axis=axis, keepdims=True)
    return top, _log_or_minus_inf(total)


def _log_or_minus_inf(total):
    empty = total == 0
    return jnp.where(empty, -jnp.inf, jnp.log(jnp.where(empty, 1.0, total)))


def _shift_right(x, by, fill=-jnp.inf):
    """``x[..., s - by]``, with ``fill`` for the first ``by`` states. The fill is made
    from a slice of ``x`` so that it is sharded like ``x`` (explicit sharding)."""
    by = min(by, x.shape[-1])
    pad = jnp.full_like(x[..., :by], fill)
    return jnp.concatenate([pad, x[..., : x.shape[-1] - by]], axis=-1)


def _shift_left(x, by, fill=-jnp.inf):
    """``x[..., s + by]``, with ``fill`` for the last ``by`` states."""
    by = min(by, x.shape[-1])
    pad = jnp.full_like(x[..., :by], fill)
    return jnp.concatenate([x[..., by:], pad], axis=-1)


class Lattice(NamedTuple):
    """The extended-label lattice of each sequence (boolean, no tangents)."""

    skip: jax.Array  # (B, S'): state s may be entered from s - 2
    active: jax.Array  # (T, B): frame t is within the sequence's input
    final: jax.Array  # (B, S'): the two states a path may end in
    used: jax.Array  # (B, S'): the states of the sequence's own 2L + 1
    invalid: jax.Array  # (B,): a label or a length is not valid: the loss is nan


def _forward(emit, lattice: Lattice):
    """The log forward variables alpha[t, b, s] (after frame t) as pairs, rescaled so
    that each frame's largest is about 0, and the log-likelihood of each sequence.

    alpha starts from a virtual state before s = 0; a frame that is not active leaves
    it unchanged. The rescaling keeps the variables small, where float32 resolves the
    differences between states (unscaled, they fall by about log C a frame); the
    shift is a constant to autodiff, added back to the likelihood. Only ``top``, a
    stored ``hi``, is large in ``top + log_total + emit - shift``: the rest is summed
    first and added to it exactly.
    """
    states = emit.shape[-1]
    # zeros_like of a reduction rather than of emit[0]: T may be 0, and the sharding is kept.
    zero = jnp.zeros_like(emit.sum(0))
    start = Pair(jnp.where(jnp.arange(states) == 0, 0.0, -jnp.inf) + zero, zero)

    def step(carry, frame):
        alpha, log_scale = carry
        emit_t, active_t = frame
        terms = [alpha, _shifted_pair(alpha, 1), _shifted_pair(alpha, 2, lattice.skip)]
        top, log_total = _log_sum(terms)
        shift = jax.lax.stop_gradient(jnp.max(top + log_total + emit_t, axis=-1))
        shift = jnp.where(jnp.isfinite(shift) & active_t, shift, 0.0)
        # emit - shift first: the two are close, and their difference is exact.
        new = _two_sum(top, (emit_t - shift[:, None]) + log_total)
        alpha = jax.tree.map(lambda n, a: jnp.where(active_t[:, None], n, a), new, alpha)
        return (alpha, log_scale + shift), alpha

    (last, log_scale), alphas = jax.lax.scan(step, (start, zero[:, 0]), (emit, lattice.active))
    return alphas, _final_log_likelihood(last, lattice.final) + log_scale


def _final_log_likelihood(last: Pair, final):
    top, log_total = _log_sum(_ending(last, final), axis=-1)
    return (top + log_total)[:, 0]


def _ending(alpha: Pair, final) -> Pair:
    return Pair(jnp.where(final, alpha.hi, -jnp.inf), jnp.where(final, alpha.lo, 0.0))


@functools.partial(jax.custom_jvp, nondiff_argnums=(2,))
def _ctc_nll(emit, lattice: Lattice, zero_infinity):
    """The negative log-likelihood per sequence from the gathered log-probabilities
    ``emit[t, b, s]`` of each extended label; nan for ``invalid`` sequences."""
    _, log_likelihood = _forward(emit, lattice)
    return _finish(-log_likelihood, lattice.invalid, zero_infinity)


def _finish(nll, invalid, zero_infinity):
    if zero_infinity:
        nll = jnp.where(nll == jnp.inf, 0.0, nll)
    return jnp.where(invalid, jnp.nan, nll)


def _split_back(later, alpha: Pair, lattice: Lattice):
    """The occupancies of frame t from those of frame t + 1 (``later``): each state's
    share of the paths into a state of frame t + 1 is its forward variable over their
    sum, ``exp(alpha_t(s) - inflow(s'))``. Only these local ratios of the forward
    variables enter, never their sum with backward ones: errors that the forward
    recursion accumulated over many frames cancel in them, as they do in reverse-mode
    autodiff of the forward recursion."""
    terms = [alpha, _shifted_pair(alpha, 1), _shifted_pair(alpha, 2, lattice.skip)]
    top, log_total = _log_sum(terms)  # the inflow of each state s' of frame t + 1
    skip_from = _shift_left(lattice.skip, 2, False)  # may state s go to s + 2?

    def share(by, allowed):
        target = _shift_left(later, by, 0.0)
        on = allowed & (target > 0)
        gap = (alpha.hi - _shift_left(top, by, 0.0)) + (alpha.lo - _shift_left(log_total, by, 0.0))
        return jnp.where(on, target * jnp.exp(jnp.where(on, gap, 0.0)), 0.0)

    return share(0, True) + share(1, True) + share(2, skip_from)


def _occupancy(alphas: Pair, lattice: Lattice):
    """The occupancy of state s at frame t, the share of the likelihood of the paths
    through it, from the forward variables by the smoothing recursion: at a sequence's
    last active frame the final states' shares, then ``_split_back`` from one active
    frame to the one before. 0 on frames that are not active."""

    def step(carry, frame):
        later, after = carry  # the occupancies of the next active frame, if any
        alpha, active_t = frame
        top, log_total = _log_sum(_ending(alpha, lattice.final), axis=-1)
        ending = lattice.final & (log_total > -jnp.inf)
        gap = (alpha.hi - top) + (alpha.lo - log_total)
        ends = jnp.where(ending, jnp.exp(jnp.where(ending, gap, 0.0)), 0.0)
        occupancy = jnp.where(after[:, None], _split_back(later, alpha, lattice), ends)
        occupancy = jnp.where(active_t[:, None], occupancy, 0.0)
        carry = (jnp.where(active_t[:, None], occupancy, later), after | active_t)
        return carry, occupancy

    # Reductions rather than [0]: T may be 0 (and the sharding is kept).
    start = (jnp.zeros_like(alphas.hi.sum(0)), jnp.zeros_like(lattice.active.any(0)))
    _, occupancies = jax.lax.scan(step, start, (alphas, lattice.active), reverse=True)
    # Each frame's occupancies sum to 1 (every path sits on one state per frame);
    # rounding in the recursion moves the sum by ~1e-5 over a thousand frames, which a
    # log-softmax turns into errors of p * 1e-5 on small logit gradients. Normalized.
    total = jnp.sum(occupancies, axis=-1, keepdims=True)
    return occupancies / jnp.where(total > 0, total, 1.0)


@_ctc_nll.defjvp
def _ctc_nll_jvp(zero_infinity, primals, tangents):
    emit, lattice = primals
    alphas, log_likelihood = _forward(emit, lattice)
    nll = _finish(-log_likelihood, lattice.invalid, zero_infinity)
    # The gradient of -log p with respect to emit[t, b, s] is minus the occupancy. No
    # path (p = 0) or a nan input: 0/0, nan on the sequence's states and frames.
    occupancy = _occupancy(alphas, lattice)
    undefined = ~(log_likelihood > -jnp.inf) | lattice.invalid
    occupancy = jnp.where(undefined[None, :, None], jnp.nan, occupancy)
    dropped = (log_likelihood == -jnp.inf) & zero_infinity
    counted = lattice.active[..., None] & lattice.used[None] & ~dropped[None, :, None]
    occupancy = jnp.where(counted, occupancy, 0.0)
    return nll, -jnp.sum(occupancy * tangents[0], axis=(0, 2))


def _lattice(targets, target_lengths, active, bad_sequence, blank: int, num_classes: int):
    """The blank-interleaved labels (B, 2S + 1) and their ``Lattice``."""
    batch, max_length = targets.shape
    codes = target_codes(targets, num_classes)  # any integer dtype, no wrap-around
    bad_label = (codes < 0) | (codes == blank)
    labels = jnp.maximum(codes, 0)
    interleaved = jnp.stack([jnp.full_like(labels, blank), labels], axis=-1)
    lengths = target_lengths[:, None]
    last_blank = jnp.full_like(lengths, blank)
    extended = jnp.concatenate([interleaved.reshape(batch, 2 * max_length), last_blank], axis=-1)
    state = jnp.arange(2 * max_length + 1)
    skip = (state % 2 == 1) & (state >= 3) & (extended != _shift_right(extended, 2, -1))
    final = (state == 2 * lengths) | (state == 2 * lengths - 1)
    in_sequence = jnp.arange(max_length) < lengths
    invalid = jnp.any(in_sequence & bad_label, axis=-1) | bad_sequence
    return extended, Lattice(skip, active, final, state <= 2 * lengths, invalid)


def _reduce(nll, target_lengths, reduction: str):
    if reduction == "none":
        return nll
    if reduction == "sum":
        return jnp.sum(nll)
    per_label = nll / jnp.maximum(target_lengths, 1).astype(nll.dtype)
    return safe_divide(jnp.sum(per_label), jnp.asarray(nll.shape[0], nll.dtype))


@functools.partial(jax.jit, static_argnames=("blank", "reduction", "zero_infinity", "time_major"))
def _ctc(log_probs, targets, active, target_lengths, bad_sequence, *, blank, reduction,
         zero_infinity, time_major):  # fmt: skip
    dtype = compute_dtype(log_probs.dtype)
    num_classes = log_probs.shape[-1]
    extended, lattice = _lattice(targets, target_lengths, active, bad_sequence, blank, num_classes)
    # Gather the extended labels' log-probabilities in the input's layout, then put
    # time first for the scan; the (T, B, C) array itself is never transposed.
    if time_major:
        emit = jnp.take_along_axis(log_probs, extended[None], axis=2)
    else:
        emit = jnp.take_along_axis(log_probs, extended[:, None], axis=2).transpose(1, 0, 2)
    nll = _ctc_nll(emit.astype(dtype), lattice, zero_infinity)
    return _reduce(nll, target_lengths, reduction).astype(log_probs.dtype)


def _integer_array(name: str, value, ndim: int) -> jax.Array:
    value = _checks.as_array(name, value)
    if not jnp.issubdtype(value.dtype, jnp.integer):
        raise TypeError(f"{name} must have an integer dtype, got {value.dtype}")
    if value.ndim != ndim:
        raise ValueError(f"{name} must have {ndim} dimension(s), got shape {value.shape}")
    return value


def _lengths(name: str, value, batch: int, limit: int, what: str) -> jax.Array:
    """Per-sequence lengths in [0, limit], checked when known at trace time."""
    value = _integer_array(name, value, 1)
    if value.shape != (batch,):
        raise ValueError(f"{name} must have shape ({batch},), one per sequence, got {value.shape}")
    if _checks.is_readable(value) and value.size:
        host = np.asarray(value)
        low, high = int(host.min()), int(host.max())
        if low < 0 or high > limit:
            raise ValueError(
                f"{name} must be in [0, {limit}] ({what}), got values in [{low}, {high}]"
            )
    return value


def _blank(value, num_classes: int) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"blank must be a Python int, got {value!r}")
    index = int(value)
    if not 0 <= index < num_classes:
        raise ValueError(f"blank must be a class index in [0, {num_classes}), got {index}")
    return index


def _options(reduction, zero_infinity) -> str:
    _checks.flag("zero_infinity", zero_infinity)
    return _checks.reduction(reduction)


def ctc_loss(
    log_probs: ArrayLike,
    targets: ArrayLike,
    input_lengths: ArrayLike,
    target_lengths: ArrayLike,
    *,
    blank: int = 0,
    reduction: str = "mean",
    zero_infinity: bool = False,
) -> jax.Array:
    r"""Connectionist temporal classification loss, in PyTorch's layout.

    The negative log-likelihood of each target sequence $y$ (length $L$) under the
    per-frame class log-probabilities $\log p_t$ of its first $T_b$ frames,
    summed over every alignment $\pi$ that reduces to $y$ when repeats are merged
    and blanks removed:

    $$
    \ell = -\log \sum_{\pi \in \mathcal{B}^{-1}(y)} \prod_{t < T_b} p_t(\pi_t).
    $$

    The sum is the forward recursion over the extended labels $y'$ (a blank
    before, between and after the labels, $2L + 1$ states) in log space.
    Gradient (the custom JVP rule; mathematically from the forward variables $\alpha$
    and the backward variables $\beta$, computed by the smoothing recursion from the
    forward variables alone, as accurate in float32 as autodiff through the scan):
    $\partial\ell/\partial \log p_t(c) = -\sum_{s: y'_s = c}
    e^{\alpha_t(s) + \beta_t(s) + \ell}$, minus the posterior probability of
    class $c$ at frame $t$; it sums to $-1$ over the classes of each frame,
    and is 0 on frames past $T_b$.

    Args:
        log_probs: floating log-probabilities of shape ``(T, B, C)`` (time,
            batch, classes), or ``(T, C)`` for one sequence. Low-precision inputs
            are accumulated in float32.
        targets: integer labels, padded to shape ``(B, S)`` (or ``(S,)``); only
            the first ``target_lengths[b]`` of row ``b`` are read.
        input_lengths: integer frames per sequence, shape ``(B,)`` (or scalar),
            each in ``[0, T]``.
        target_lengths: integer labels per sequence, shape ``(B,)`` (or scalar),
            each in ``[0, S]``.
        blank: the blank class, a Python int in ``[0, C)``.
        reduction: ``"mean"`` (each loss divided by its target length, at least
            1, then averaged over the batch), ``"sum"`` or ``"none"`` (per
            sequence).
        zero_infinity: give impossible alignments (infinite loss) a loss of 0
            and a zero gradient.

    Returns:
        A scalar, or the ``(B,)`` losses for ``reduction="none"``, in the input dtype.
        A sequence whose labels (within its length) include ``blank`` or a class
        outside ``[0, C)`` has a nan loss; so does one whose length is traced and
        out of range (known lengths out of range raise ``ValueError``).

    PyTorch: ``F.ctc_loss`` with the same arguments gives the same losses.
    Its gradient with respect to ``log_probs`` assumes they come from a
    log-softmax (``exp(log_probs) - posterior``); this one is the true gradient
    (``-posterior``), and the two agree through a ``log_softmax``. ``targets``
    must be padded ``(B, S)``; PyTorch's concatenated 1-D form is not accepted.

    Examples:
        >>> import jax, jax.numpy as jnp
        >>> import jaxloss as jl
        >>> jnp.set_printoptions(precision=4)
        >>> log_probs = jl.log_softmax(jnp.array([[[0.0, 1.0, 0.0]], [[1.0, 0.0, 0.0]]]))
        >>> targets, lengths = jnp.array([[1]]), jnp.array([2])
        >>> # paths 1-blank, 1-1, blank-1: -log(p0[1] p1[0] + p0[1] p1[1] + p0[0] p1[1])
        >>> jl.ctc_loss(log_probs, targets, lengths, jnp.array([1]))
        Array(0.6953, dtype=float32)
        >>> jax.grad(jl.ctc_loss)(log_probs, targets, lengths, jnp.array([1]))[:, 0]
        Array([[-0.09  , -0.91  ,  0.    ],
               [-0.6652, -0.3348,  0.    ]], dtype=float32)
    """
    log_probs = _checks.floating_input("log_probs", log_probs)
    if log_probs.ndim not in (2, 3):
        raise ValueError(f"log_probs must have shape (T, B, C) or (T, C), got {log_probs.shape}")
    unbatched = log_probs.ndim == 2
    targets = _integer_array("targets", targets, 1 if unbatched else 2)
    if unbatched:
        log_probs, targets = log_probs[:, None], targets[None]
        input_lengths = jnp.reshape(_integer_array("input_lengths", input_lengths, 0), (1,))
        target_lengths = jnp.reshape(_integer_array("target_lengths", target_lengths, 0), (1,))
    frames, batch, num_classes = log_probs.shape
    if targets.shape[0] != batch:
        raise ValueError(
            f"targets must have {batch} rows (log_probs' batch axis 1), got shape {targets.shape}"
        )
    input_lengths = _lengths("input_lengths", input_lengths, batch, frames, "log_probs' T")
    target_lengths = _lengths(
        "target_lengths", target_lengths, batch, targets.shape[1], "targets' padded length S"
    )
    blank = _blank(blank, num_classes)
    reduction = _options(reduction, zero_infinity)
    input_lengths, input_ok = bounded_count(input_lengths, frames)
    target_lengths, target_ok = bounded_count(target_lengths, targets.shape[1])
    active = jnp.arange(frames)[:, None] < input_lengths[None, :]
    loss = _ctc(log_probs, targets, active, target_lengths, ~(input_ok & target_ok),
                blank=blank, reduction=reduction, zero_infinity=zero_infinity,
                time_major=True)  # fmt: skip
    return loss[0] if unbatched and reduction == "none" else loss


def _paddings(name: str, value, shape: tuple[int, ...], right_padded: bool) -> jax.Array:
    """0/1 padding indicators of ``shape`` (1 for a padded position), checked when
    known at trace time."""
    value = _checks.as_array(name, value)
    if value.shape != shape:
        raise ValueError(f"{name} must have shape {shape}, got {value.shape}")
    if _checks.is_readable(value) and value.size:
        host = np.asarray(value)
        if not np.all((host == 0) | (host == 1)):
            raise ValueError(f"{name} must hold only 0 and 1 (1 marks a padded position)")
        if right_padded and np.any(np.diff(host.astype(np.int8), axis=-1) < 0):
            raise ValueError(f"{name} must be right-padded: in each row, 0s then 1s")
    return value


def ctc_loss_with_paddings(
    logits: ArrayLike,
    logit_paddings: ArrayLike,
    labels: ArrayLike,
    label_paddings: ArrayLike,
    *,
    blank: int = 0,
    reduction: str = "none",
    zero_infinity: bool = False,
) -> jax.Array:
    r"""The CTC loss of :func:`ctc_loss` in optax's layout: batch-major logits and
    padding indicators.

    ``ctc_loss_with_paddings(logits, logit_paddings, labels, label_paddings,
    blank=k)`` is ``optax.ctc_loss(logits, logit_paddings, labels, label_paddings,
    blank_id=k)`` for every alignment that is possible; an impossible one is
    ``inf`` here (optax: a large finite number, from its ``log_epsilon``). In
    terms of :func:`ctc_loss`, it is

    $$
    \texttt{ctc\_loss}(\mathrm{log\_softmax}(\texttt{logits}).\mathrm{transpose}(1, 0, 2),
    \texttt{labels}, \sum_t (1 - \texttt{logit\_paddings}),
    \sum_n (1 - \texttt{label\_paddings}))
    $$

    when the logit paddings are at the end of each row; a padded frame
    elsewhere is skipped, as in optax. Gradient: the custom JVP rule of
    :func:`ctc_loss`, through the log-softmax: $\partial\ell/\partial z_t =
    \mathrm{softmax}(z_t) - \text{posterior}_t$ on frames that are not padded, 0
    on padded ones.

    Args:
        logits: floating unnormalized scores of shape ``(B, T, C)``.
        logit_paddings: ``(B, T)`` indicators, 1 for a padded frame, else 0.
        labels: integer labels of shape ``(B, N)``.
        label_paddings: ``(B, N)`` indicators, 1 for a padded label; right-padded
            (0s then 1s in each row).
        blank: the blank class, a Python int in ``[0, C)``.
        reduction: ``"none"`` (per sequence, optax's output), ``"mean"`` (each loss
            divided by its label count, at least 1, then averaged) or ``"sum"``.
        zero_infinity: give impossible alignments a loss of 0 and a zero gradient.

    Returns:
        The ``(B,)`` losses, or a scalar, in the input dtype; nan for a sequence
        whose labels include ``blank`` or a class outside ``[0, C)``, and for one
        whose traced ``label_paddings`` are not 0s then 1s (known ones raise
        ``ValueError``). An impossible alignment is ``inf`` (0 with
        ``zero_infinity``), with a nan gradient on every class of its frames (the
        posterior is 0/0, and the log-softmax spreads it).

    Examples:
        >>> import jax, jax.numpy as jnp
        >>> import jaxloss as jl
        >>> jnp.set_printoptions(precision=4)
        >>> logits = jnp.array([[[0.0, 1.0, 0.0], [1.0, 0.0, 0.0], [5.0, 5.0, 5.0]]])
        >>> labels, paddings = jnp.array([[1, 2]]), jnp.array([[0.0, 1.0]])
        >>> jl.ctc_loss_with_paddings(logits, jnp.array([[0.0, 0.0, 1.0]]), labels, paddings)
        Array([0.6953], dtype=float32)
        >>> jax.grad(lambda z: jl.ctc_loss_with_paddings(
        ...     z, jnp.array([[0.0, 0.0, 1.0]]), labels, paddings)[0])(logits)[0]
        Array([[ 0.1219, -0.3339,  0.2119],
               [-0.0891, -0.1228,  0.2119],
               [ 0.    ,  0.    ,  0.    ]], dtype=float32)
    """
    logits = _checks.floating_input("logits", logits)
    if logits.ndim != 3:
        raise ValueError(f"logits must have shape (B, T, C), got {logits.shape}")
    batch, frames, num_classes = logits.shape
    labels = _integer_array("labels", labels, 2)
    if labels.shape[0] != batch:
        raise ValueError(f"labels must have {batch} rows (logits' batch), got {labels.shape}")
    logit_paddings = _paddings("logit_paddings", logit_paddings, (batch, frames), False)
    label_paddings = _paddings("label_paddings", label_paddings, labels.shape, True)
    blank = _blank(blank, num_classes)
    reduction = _options(reduction, zero_infinity)
    active = (logit_paddings == 0).T
    target_lengths = jnp.sum(label_paddings == 0, axis=1, dtype=jnp.int32)
    # A padded frame's logits are not read: a nan there gives neither a nan loss nor
    # a nan gradient.
    log_probs = log_softmax(jnp.where(active.T[..., None], logits, 0.0))
    return _ctc(log_probs, labels, active, target_lengths,
                _not_right_padded(label_paddings), blank=blank, reduction=reduction,
                zero_infinity=zero_infinity, time_major=False)  # fmt: skip


def _not_right_padded(label_paddings):
    """Rows of traced label paddings that hold a value other than 0 and 1, or a 0 after
    a 1 (the eager check raises for them): their loss is nan, not a guess."""
    binary = (label_paddings == 0) | (label_paddings == 1)
    rising = jnp.any(label_paddings[:, 1:] < label_paddings[:, :-1], axis=1)
    return ~jnp.all(binary, axis=1) | rising
