"""Contrastive losses over a batch of pairs without the B x B logits.

Contrastive training classifies over the batch: with ``z = logit_scale * x @ y.T +
logit_bias``, row ``i`` holds the scores of ``x_i`` against every ``y_j``. CLIP's
softmax loss needs each row's and each column's log-sum-exp (``_fused/two_way.py``, one
walk over chunks of rows for both), SigLIP's sigmoid loss each row's sum of softpluses
(``_fused/sigmoid_pairs.py``), and NT-Xent is a head of the fused engine
(``NTXentHead``, the batch's unit embeddings as the weight). No call holds more than a
chunk of rows of the similarities, in the value or in the gradient.

With the batch split over devices the operand every row is compared with is gathered
once (inside ``shard_map`` over the rows' mesh axes where a mesh is set, or over a
caller's ``axis_name``), as the written-out ``x @ y.T`` would gather it; with no mesh
set, the walks run one group of rows per device (``_each_group``).
"""

from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp
from jax.typing import ArrayLike

from jaxloss import _checks
from jaxloss._fused import driver, engine
from jaxloss._fused.chunking import VocabChunk, spread_over_devices
from jaxloss._fused.sigmoid_pairs import sigmoid_pair_losses
from jaxloss._fused.two_way import two_way_lse
from jaxloss._reduce import explicit_sharding, safe_divide
from jaxloss._targets import IGNORED
from jaxloss._xent import Fill, IndexTargets

DIRECTIONS = ("both", "x_to_y", "y_to_x")
# Logits per step by default: 4 MiB of float32, a quarter of the fused vocabulary losses'
# chunk, since the batch's gathered side and its gradient share a device's memory.
CHUNK_ELEMENTS = 2**20


@dataclasses.dataclass(frozen=True)
class NTXentHead:
    """NT-Xent of one row (``engine.Head``): ``sum_{j in pos} softplus(n - z_j)`` with
    ``n = lse_{k in neg} z_k``, the positives the other rows of the row's label and the
    negatives the rows of other labels (a row is neither to itself). Tokens: the row's
    own column (its code) and its label; params: every column's label. Its logit
    gradient is ``-sigmoid(n - z_j)`` on a positive and ``A exp(z_k - n)`` on a negative,
    ``A = sum_{j in pos} sigmoid(n - z_j)``; saved for the second pass: the negatives'
    maximum, the log of their shifted sum, and ``A``."""

    @property
    def saved_width(self) -> int:
        return 3

    @property
    def stats_width(self) -> int:
        return 0

    def counted(self, tokens, params):
        return tokens[0] != IGNORED

    def _masks(self, tokens, column_labels, ids):
        codes, labels = tokens
        same = column_labels[ids][None, :] == labels[:, None]
        own = ids[None, :] == IndexTargets.from_codes(codes).class_index[:, None]
        return same & ~own, ~same

    def _negatives(self, z, negative):
        """The negatives' maximum (0 where a row has none) and the log of their shifted
        sum (-inf where a row has none, with a gradient of 0 there)."""
        masked = jnp.where(negative, z, -jnp.inf)
        m = jnp.max(masked, axis=-1, initial=-jnp.inf)
        m = jnp.where(m == -jnp.inf, 0.0, m)
        total = jnp.sum(jnp.exp(masked - m[:, None]), axis=-1)
        none = total == 0
        return m, jnp.where(none, -jnp.inf, jnp.log(jnp.where(none, 1.0, total)))

    def _terms(self, z, tokens, column_labels, ids, zero):
        positive, negative = self._masks(tokens, column_labels, ids)
        m, log_s = self._negatives(z, negative)
        gap = log_s[:, None] - (z - m[:, None])
        loss = jnp.sum(jnp.where(positive, jax.nn.softplus(gap), zero), axis=-1)
        loss = jnp.where(self.counted(tokens, column_labels), loss, 0.0)
        return loss, positive, negative, m, log_s, gap

    def loss(self, z, tokens, column_labels):
        ids = jnp.arange(z.shape[1], dtype=jnp.int32)
        loss = self._terms(z, tokens, column_labels, ids, 0.0)[0]
        return loss, jnp.zeros((z.shape[0], 0), z.dtype)

    def loss_and_grad(
        self, z, tokens, column_labels, fill: Fill, by_slices: bool = False
    ) -> engine.HeadTerms:
        ids = jnp.arange(z.shape[1], dtype=jnp.int32)
        terms = self._terms(z, tokens, column_labels, ids, fill.zero)
        loss, positive, negative, m, log_s, gap = terms
        a = jnp.sum(jnp.where(positive, jax.nn.sigmoid(gap), fill.zero), axis=-1)
        saved = jnp.stack([m, log_s, a], axis=-1)
        grad = self._grad(z, saved, positive, negative, tokens, fill)
        return engine.HeadTerms(loss, grad, saved, jnp.zeros((z.shape[0], 0), z.dtype))

    def grad_by_slices(self, column_labels) -> bool:
        return True

    def vocab_chunk_grad(self, z_t, tokens, saved, column_labels, chunk: VocabChunk, fill: Fill):
        positive, negative = self._masks(tokens, column_labels, chunk.ids())
        return self._grad(z_t.T, saved, positive, negative, tokens, fill).T

    def _grad(self, z, saved, positive, negative, tokens, fill: Fill):
        m, log_s, a = saved[:, :1], saved[:, 1:2], saved[:, 2:]
        shifted = z - m
        grad = jnp.where(positive, -jax.nn.sigmoid(log_s - shifted), fill.zero)
        # Kept finite off the negatives (log_s is -inf in a row without any), so that the
        # second order's cotangent of the unused branch is 0, not 0 * inf.
        grad = jnp.where(negative, a * jnp.exp(jnp.where(negative, shifted - log_s, 0.0)), grad)
        return jnp.where((tokens[0] != IGNORED)[:, None], grad, fill.zero)


def _pairs(
    x, y, logit_scale, logit_bias
) -> tuple[jax.Array, jax.Array, jax.Array, jax.Array | None]:
    """``x`` and ``y`` checked as ``(B, D)`` floating arrays of one shape, and the scalars."""
    x = _checks.floating_input("x", x)
    y = _checks.floating_input("y", y)
    if x.ndim != 2:
        raise ValueError(f"x must have shape (B, D) (a batch of embeddings), got {x.shape}")
    if y.shape != x.shape:
        raise ValueError(f"y must have x's shape {x.shape} (one y per x), got {y.shape}")
    scale = _checks.real_scalar("logit_scale", logit_scale, minimum=-math.inf)
    bias = None
    if logit_bias is not None:
        bias = _checks.real_scalar("logit_bias", logit_bias, minimum=-math.inf)
    return x, y, scale, bias


def _direction(value) -> str:
    if value not in DIRECTIONS:
        raise ValueError(f"direction must be one of {DIRECTIONS}, got {value!r}")
    return value


def _axis_name(value):
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, tuple) and value and all(isinstance(a, str) for a in value):
        return value
    raise TypeError(f"axis_name must be a mesh axis name, a tuple of them, or None; got {value!r}")


def _gathered(a, axis_name):
    """All the rows of ``a`` on every device: over ``axis_name`` (its transpose sums the
    gradient back to each device's rows: a reduce-scatter); under a mesh whose devices
    do not divide the batch, replicated; as it is with no mesh set."""
    if axis_name is not None:
        return jax.lax.all_gather(a, axis_name, axis=0, tiled=True)
    sharding = explicit_sharding(a)
    if sharding is not None:
        return jax.sharding.reshard(a, jax.sharding.NamedSharding(sharding.mesh, jax.P()))
    mesh = jax.sharding.get_abstract_mesh()
    if mesh.empty or not spread_over_devices(a):
        return a
    return jax.lax.with_sharding_constraint(a, jax.sharding.NamedSharding(mesh, jax.P()))


def _row_axes(a):
    """The mesh axes that split ``a``'s rows, where the set mesh shows them and their
    devices divide the rows: under explicit axis types those of ``a``'s sharding, under
    automatic ones every automatic axis of the mesh (its layout is not in the types).
    None with no mesh set, inside a ``shard_map`` manual over every axis, or when
    nothing divides."""
    mesh = jax.sharding.get_abstract_mesh()
    if mesh.empty or not spread_over_devices(a):
        return None
    sharding = explicit_sharding(a)
    if sharding is not None:
        axes = sharding.spec[0] if len(sharding.spec) else None
    else:
        auto = jax.sharding.AxisType.Auto
        axes = tuple(n for n, t in zip(mesh.axis_names, mesh.axis_types, strict=True) if t == auto)
    axes = (axes,) if isinstance(axes, str) else tuple(axes or ())
    devices = math.prod(mesh.shape[n] for n in axes)
    if devices <= 1 or a.shape[0] % devices:
        return None
    return axes


def _each_group(a, others):
    """``others.T`` once per group of ``a``'s rows walked apart, ``(G, D, B)``: with no
    mesh set and the rows dividing evenly over the devices, one group per device, so
    that the partitioner, which cannot see the layout there, walks each group on the
    device that holds its rows (see ``two_way``); else one group."""
    devices = jax.device_count()
    spread = jax.sharding.get_abstract_mesh().empty and spread_over_devices(a)
    groups = devices if spread and a.shape[0] % devices == 0 else 1
    return jnp.broadcast_to(others.T, (groups, *others.T.shape))


def _on_each_device(fn, rows, shared, reduction: str, axis_name):
    """``fn(*rows, *shared, axis_name)``, the loss of the whole batch. Where a set mesh
    splits the rows, it runs inside ``shard_map`` over those axes, so that each device
    gathers the other side once and the gradient is reduce-scattered once, as a user's
    ``shard_map`` would; elsewhere as it is (``axis_name`` given, or no mesh set, where
    the partitioner lays it out)."""
    axes = None if axis_name is not None else _row_axes(rows[0])
    if axes is None:
        return fn(*rows, *shared, axis_name)
    spec = jax.P(axes)
    mapped = jax.shard_map(
        lambda *args: fn(*args, axes),
        in_specs=(spec,) * len(rows) + (jax.P(),) * len(shared),
        out_specs=spec if reduction == "none" else jax.P(),
    )
    return mapped(*rows, *shared)


def _rows_per_chunk(chunk_size: int | None, columns: int) -> int:
    """``chunk_size``, or as many rows as hold ``CHUNK_ELEMENTS`` similarities."""
    return chunk_size or max(1, CHUNK_ELEMENTS // columns)


def _row_offset(rows: int, axis_name):
    """The index in the whole batch of this device's first row."""
    if axis_name is None:
        return 0
    return jax.lax.axis_index(axis_name) * rows


def _total(per_row_sum, axis_name):
    return per_row_sum if axis_name is None else jax.lax.psum(per_row_sum, axis_name)


def _scaled(x, scale, acc):
    return x.astype(acc) * scale.astype(acc)


def _bias_columns(bias, columns: int, acc):
    return None if bias is None else jnp.broadcast_to(bias.astype(acc), (columns,))


def _empty(reduction: str, dtype):
    return jnp.zeros((0,) if reduction == "none" else (), dtype)


def _reduced(per_row, reduction: str, rows: int, axis_name):
    """``"none"``: this device's rows; ``"sum"``: over the whole batch; ``"mean"``: that
    divided by the batch size."""
    if reduction == "none":
        return per_row
    total = _total(jnp.sum(per_row), axis_name)
    if reduction == "sum":
        return total
    world = 1 if axis_name is None else jax.lax.psum(1, axis_name)
    return total / (rows * world)


def contrastive_loss(
    x: ArrayLike,
    y: ArrayLike,
    *,
    logit_scale: ArrayLike = 1.0,
    logit_bias: ArrayLike | None = None,
    label_smoothing: ArrayLike = 0.0,
    direction: str = "both",
    reduction: str = "mean",
    chunk_size: int | None = None,
    axis_name: str | tuple[str, ...] | None = None,
) -> jax.Array:
    r"""CLIP's contrastive loss, computed without the ``B x B`` logits.

    Each ``x_i`` classifies its own ``y_i`` among all the ``y`` (the rows of the logits)
    and each ``y_i`` its ``x_i`` among all the ``x`` (the columns); the loss of pair
    ``i`` is the mean of the two cross-entropies:

    $$
    z_{ij} = s\,x_i \cdot y_j + b, \qquad
    \ell_i = \tfrac12\Big(\operatorname{lse}_j z_{ij} - z_{ii}\Big)
        + \tfrac12\Big(\operatorname{lse}_j z_{ji} - z_{ii}\Big),
    $$

    with $s$ = ``logit_scale`` (the multiplier itself: open_clip passes
    ``logit_scale.exp()``) and $b$ = ``logit_bias`` (it cancels in a softmax; accepted so
    that the two contrastive losses share arguments). With ``label_smoothing``
    $\varepsilon$ each direction's target is $(1-\varepsilon)$ on the pair and
    $\varepsilon/B$ on every column, as in [`cross_entropy`][jaxloss.cross_entropy].
    ``x`` and ``y`` are not normalized here (CLIP normalizes them in the model). It
    equals ``(cross_entropy(z, arange(B)) + cross_entropy(z.T, arange(B))) / 2``, and
    open_clip's ``ClipLoss`` with ``local_loss=False``.

    One walk over chunks of rows gives each row's log-sum-exp and keeps every column's
    running maximum and sum, so memory holds a chunk of rows of the logits at a time,
    in the value and in the gradient (which walks the chunks again).

    Gradient: with $P$ and $Q$ the row and column softmaxes of $z$ and $T$ the targets,
    $G = \tfrac{1}{2}(P - T) + \tfrac{1}{2}(Q - T)$ (times each pair's cotangent), and
    $\partial/\partial x = s\,G y$, $\partial/\partial y = s\,G^\top x$,
    $\partial/\partial s = \sum_{ij} G_{ij}\, x_i \cdot y_j$,
    $\partial/\partial b = \sum_{ij} G_{ij} = 0$; forward mode and second order too.

    Args:
        x: ``(B, D)`` embeddings of one side (images), any float dtype; 16-bit inputs
            are accumulated in float32.
        y: ``(B, D)`` embeddings of the other side (captions), pair ``i`` is
            ``(x_i, y_i)``.
        logit_scale: the scalar $s$, differentiable.
        logit_bias: an optional scalar $b$, differentiable.
        label_smoothing: $\varepsilon$ in ``[0, 1]``.
        direction: ``"both"`` (CLIP), ``"x_to_y"`` (each ``x`` classifies among the
            ``y``: the rows alone) or ``"y_to_x"`` (the columns alone).
        reduction: ``"mean"`` over the pairs, ``"sum"``, or ``"none"`` for ``(B,)``.
        chunk_size: rows of the logits per step (default: as many as fit $2^{20}$ logits).
        axis_name: inside ``shard_map`` with the batch split over this mesh axis (or
            tuple of axes): ``x`` and ``y`` are this device's pairs, the other side is
            gathered over it, ``"mean"`` and ``"sum"`` are over the whole batch (the same
            on every device) and ``"none"`` gives this device's pairs.

    Returns:
        The loss in the promoted dtype of ``x`` and ``y``: a scalar, or ``(B,)`` for
        ``"none"`` (``B`` rows of this device under ``axis_name``). An empty batch gives
        0 (``"none"``: an empty array).

    Examples:
        >>> import jax, jax.numpy as jnp
        >>> import jaxloss as jl
        >>> jnp.set_printoptions(precision=4)
        >>> x = jnp.array([[1.0, 0.0], [0.0, 1.0], [0.6, 0.8]])
        >>> y = jnp.array([[0.8, 0.6], [0.0, 1.0], [1.0, 0.0]])
        >>> jl.contrastive_loss(x, y, logit_scale=10.0)
        Array(1.9838, dtype=float32)
        >>> z, pairs = 10.0 * x @ y.T, jnp.arange(3)
        >>> (jl.cross_entropy(z, pairs) + jl.cross_entropy(z.T, pairs)) / 2  # unfused
        Array(1.9838, dtype=float32)
        >>> jax.grad(lambda x: jl.contrastive_loss(x, y, logit_scale=10.0))(x)
        Array([[ 0.8158, -1.7164],
               [ 0.0538, -0.1886],
               [-1.0969,  2.0995]], dtype=float32)
    """
    x, y, scale, bias = _pairs(x, y, logit_scale, logit_bias)
    reduction = _checks.reduction(reduction)
    direction = _direction(direction)
    axis_name = _axis_name(axis_name)
    label_smoothing = _checks.real_scalar("label_smoothing", label_smoothing, minimum=0.0,
                                          maximum=1.0)  # fmt: skip
    chunk_size = _checks.optional_positive_int("chunk_size", chunk_size)
    dtype = jnp.promote_types(x.dtype, y.dtype)
    if x.shape[0] == 0:
        return _empty(reduction, dtype)
    weights = {"both": (0.5, 0.5), "x_to_y": (1.0, 0.0), "y_to_x": (0.0, 1.0)}[direction]
    shared = (scale, label_smoothing) + (() if bias is None else (bias,))

    def loss(x, y, scale, smoothing, *rest):
        acc = engine.accumulation_dtype(x, y)
        axis = rest[-1]
        bias = rest[0] if len(rest) == 2 else jnp.zeros((), acc)
        per_pair = _clip_per_pair(
            _scaled(x, scale, acc), y, bias.astype(acc), smoothing.astype(acc),
            weights, chunk_size, axis,
        )  # fmt: skip
        return _reduced(per_pair, reduction, x.shape[0], axis).astype(dtype)

    return _on_each_device(loss, (x, y), shared, reduction, axis_name)


def _clip_per_pair(a, y, bias, smoothing, weights, chunk_size, axis_name):
    """Each pair's weighted row and column cross-entropies of ``z = a @ y.T + bias``
    (``a`` and ``y`` this device's pairs, ``a`` already scaled): the log-sum-exps from
    ``two_way_lse``, the rest linear in ``z``."""
    rows, acc = a.shape[0], a.dtype
    offset = _row_offset(rows, axis_name)
    others, y = _gathered(y, axis_name).astype(acc), y.astype(acc)
    chunk = _rows_per_chunk(chunk_size, others.shape[0])
    row_lse, col_lse = two_way_lse(a, _each_group(a, others), bias, offset, chunk, axis_name)
    diagonal = jnp.sum(a * y, axis=-1) + bias
    # The columns' means from this device's rows (summed over the devices), not from
    # the gathered side, whose gradient would then hold a rank-one B x D term.
    y_mean = _total(jnp.sum(y, axis=0), axis_name) / others.shape[0]
    a_mean = _total(jnp.sum(a, axis=0), axis_name) / others.shape[0]
    row_mean, col_mean = a @ y_mean + bias, y @ a_mean + bias
    keep = 1.0 - smoothing
    row = row_lse - keep * diagonal - smoothing * row_mean
    col = col_lse - keep * diagonal - smoothing * col_mean
    return weights[0] * row + weights[1] * col


def sigmoid_contrastive_loss(
    x: ArrayLike,
    y: ArrayLike,
    *,
    logit_scale: ArrayLike = 1.0,
    logit_bias: ArrayLike | None = None,
    reduction: str = "mean",
    chunk_size: int | None = None,
    axis_name: str | tuple[str, ...] | None = None,
) -> jax.Array:
    r"""SigLIP's sigmoid loss, computed without the ``B x B`` logits.

    Every image-caption pair is a binary decision: matching on the diagonal, not
    elsewhere.

    $$
    z_{ij} = s\,x_i \cdot y_j + b, \qquad
    \ell_i = -\sum_j \log \sigma(\sigma_{ij} z_{ij}), \quad
    \sigma_{ij} = \begin{cases} +1 & i = j \\ -1 & i \ne j \end{cases}
    $$

    ``"mean"`` is $\frac1B \sum_i \ell_i$, big_vision's and open_clip's normalization
    (the sum over all $B^2$ pairs divided by $B$), ``"sum"`` is $\sum_i \ell_i$ and
    ``"none"`` gives each $\ell_i$, the row of ``x_i`` against every caption. SigLIP
    initializes $s = 10$ and $b = -10$ and learns both; open_clip's ``SigLipLoss`` takes
    ``logit_scale.exp()`` as $s$ here.

    One walk over chunks of rows gives the value (a row needs nothing beyond itself)
    and another the gradient, so memory holds a chunk of rows of the logits at a time.

    Gradient: $G_{ij} = -\sigma_{ij}\,\sigma(-\sigma_{ij} z_{ij})$ (times row ``i``'s
    cotangent), $\partial/\partial x = s\,G y$, $\partial/\partial y = s\,G^\top x$,
    $\partial/\partial s = \sum_{ij} G_{ij}\, x_i \cdot y_j$,
    $\partial/\partial b = \sum_{ij} G_{ij}$; forward mode and second order too.

    Args:
        x: ``(B, D)`` embeddings of one side, any float dtype; 16-bit inputs are
            accumulated in float32.
        y: ``(B, D)`` embeddings of the other side; pair ``i`` is ``(x_i, y_i)``.
        logit_scale: the scalar $s$, differentiable.
        logit_bias: an optional scalar $b$, differentiable.
        reduction: ``"mean"``, ``"sum"`` or ``"none"`` (see above).
        chunk_size: rows of the logits per step (default: as many as fit $2^{20}$ logits).
        axis_name: inside ``shard_map`` with the batch split over this mesh axis (or
            tuple of axes): ``x`` and ``y`` are this device's pairs, ``y`` is gathered
            over it, ``"mean"`` and ``"sum"`` are over the whole batch and ``"none"``
            gives this device's rows.

    Returns:
        The loss in the promoted dtype of ``x`` and ``y``: a scalar, or ``(B,)`` for
        ``"none"``. An empty batch gives 0 (``"none"``: an empty array).

    Examples:
        >>> import jax, jax.numpy as jnp
        >>> import jaxloss as jl
        >>> jnp.set_printoptions(precision=4)
        >>> x = jnp.array([[1.0, 0.0], [0.0, 1.0], [0.6, 0.8]])
        >>> y = jnp.array([[0.8, 0.6], [0.0, 1.0], [1.0, 0.0]])
        >>> jl.sigmoid_contrastive_loss(x, y, logit_scale=10.0, logit_bias=-10.0)
        Array(2.7299, dtype=float32)
        >>> signs = 2 * jnp.eye(3) - 1  # +1 on the pairs
        >>> -jnp.sum(jl.log_sigmoid(signs * (10.0 * x @ y.T - 10.0))) / 3  # unfused
        Array(2.7299, dtype=float32)
        >>> jax.grad(lambda b: jl.sigmoid_contrastive_loss(x, y, logit_scale=10.0,
        ...                                                logit_bias=b))(-10.0)
        Array(-0.4414, dtype=float32, weak_type=True)
    """
    x, y, scale, bias = _pairs(x, y, logit_scale, logit_bias)
    reduction = _checks.reduction(reduction)
    axis_name = _axis_name(axis_name)
    chunk_size = _checks.optional_positive_int("chunk_size", chunk_size)
    dtype = jnp.promote_types(x.dtype, y.dtype)
    rows = x.shape[0]
    if rows == 0:
        return _empty(reduction, dtype)
    shared = (scale,) + (() if bias is None else (bias,))

    def loss(x, y, scale, *rest):
        acc = engine.accumulation_dtype(x, y)
        axis, bias = rest[-1], rest[0] if len(rest) == 2 else None
        a, others = _scaled(x, scale, acc), _gathered(y, axis).astype(acc)
        b = jnp.zeros((), acc) if bias is None else bias.astype(acc)
        chunk = _rows_per_chunk(chunk_size, others.shape[0])
        offset = _row_offset(a.shape[0], axis)
        per_row = sigmoid_pair_losses(a, _each_group(a, others), b, offset, chunk)
        return _reduced(per_row, reduction, x.shape[0], axis).astype(dtype)

    return _on_each_device(loss, (x, y), shared, reduction, axis_name)


def _engine_rows(head, a, others, bias, row_labels, labels, reduction, chunk_size, axis_name):
    """This device's rows of ``a`` through the fused engine with ``others.T`` as the
    weight: each row's loss for ``"none"``, else their sum."""
    w = others.T
    weighting, plan = driver.check_token_options(
        a, w, reduction="none" if reduction == "none" else "sum", token_weight=None,
        segment_ids=None, normalizer=None,
        chunk_size=_rows_per_chunk(chunk_size, w.shape[1]), passes=None,
        vocab_chunk_size=None, vocab_size=None,
    )  # fmt: skip
    rows = a.shape[0]
    codes = jnp.arange(rows, dtype=jnp.int32) + _row_offset(rows, axis_name)

    def head_tokens(x2, codes, row_labels):
        tokens = codes if row_labels is None else (codes, row_labels)
        return driver.HeadTokens(x2, tokens, jnp.ones(codes.shape, a.dtype))

    bias = _bias_columns(bias, w.shape[1], a.dtype)
    return driver.fused_loss(
        head, a, w, bias, codes, row_labels, labels, weighting, plan, head_tokens
    ).loss


def _positive_pairs(all_labels):
    """The ordered pairs of distinct rows of the whole batch that share a label (by
    sorting: no ``B x B`` comparison)."""
    ordered = jnp.sort(all_labels)
    first = jnp.searchsorted(ordered, ordered, side="left", method="sort")
    past = jnp.searchsorted(ordered, ordered, side="right", method="sort")
    return jnp.sum(past - first - 1)


def _unit_rows(e, acc):
    """Each row over its norm, the norm at least the square root of the dtype's epsilon
    (``optax.losses.cosine_similarity`` with ``epsilon=finfo(dtype).eps``, which clips
    the squared norm). The norm is taken of the row over its largest magnitude, so that
    rows beyond the square root of the largest float do not overflow to a zero vector."""
    floor = jnp.sqrt(jnp.asarray(jnp.finfo(e.dtype).eps, acc))
    e = e.astype(acc)
    largest = jnp.max(jnp.abs(e), axis=-1, keepdims=True)
    largest = jax.lax.stop_gradient(jnp.where(largest == 0, 1.0, largest))
    norm = largest * jnp.sqrt(jnp.sum(jnp.square(e / largest), axis=-1, keepdims=True))
    return e / jnp.maximum(norm, floor)


def ntxent_loss(
    embeddings: ArrayLike,
    labels: ArrayLike,
    temperature: ArrayLike = 0.07,
    *,
    reduction: str = "mean",
    chunk_size: int | None = None,
    axis_name: str | tuple[str, ...] | None = None,
) -> jax.Array:
    r"""NT-Xent (SimCLR's normalized temperature-scaled cross-entropy), computed without
    the ``B x B`` similarities; ``optax.losses.ntxent``'s value and gradient.

    Rows with one label are positives of each other (a row is not its own), rows of
    other labels its negatives. With cosine similarities over the temperature,

    $$
    z_{ij} = \frac{u_i \cdot u_j}{\tau},\quad u_i = \frac{e_i}{\max(\|e_i\|^2, \epsilon)^{1/2}},
    \qquad
    \ell_i = \sum_{j \in \mathrm{pos}(i)} -\log
        \frac{e^{z_{ij}}}{e^{z_{ij}} + \sum_{k \in \mathrm{neg}(i)} e^{z_{ik}}}
        = \sum_{j \in \mathrm{pos}(i)} \operatorname{softplus}(n_i - z_{ij}),
    $$

    $n_i = \operatorname{lse}_{k \in \mathrm{neg}(i)} z_{ik}$ and $\epsilon$ the
    embeddings' dtype epsilon. ``"mean"`` divides $\sum_i \ell_i$ by the number of
    positive pairs (optax's loss); a batch without a positive pair gives 0 where optax
    gives nan (0/0). ``"sum"`` is $\sum_i \ell_i$, ``"none"`` each $\ell_i$.

    The rows go through the fused engine in chunks with $u^\top$ as the weight: memory
    holds a chunk of rows of the similarities at a time.

    Gradient: $\partial \ell_i / \partial z_{ij} = -\sigma(n_i - z_{ij})$ on a positive
    and $A_i\, e^{z_{ik} - n_i}$ on a negative, $A_i = \sum_{j \in \mathrm{pos}(i)}
    \sigma(n_i - z_{ij})$; then through the normalization and $\tau$ by the chain rule.

    Args:
        embeddings: ``(B, D)``, any float dtype (16-bit accumulated in float32).
        labels: ``(B,)`` integers; equal labels mark positive pairs.
        temperature: $\tau > 0$, differentiable.
        reduction: ``"mean"`` (over positive pairs), ``"sum"`` or ``"none"`` (``(B,)``).
        chunk_size: rows per step (default: as many as fit $2^{20}$ similarities).
        axis_name: inside ``shard_map`` with the batch split over this mesh axis (or
            tuple of axes): the rows of this device against the gathered batch;
            ``"mean"`` and ``"sum"`` over the whole batch, ``"none"`` this device's rows.

    Returns:
        The loss in the embeddings' dtype: a scalar, or ``(B,)`` for ``"none"``.

    Examples:
        >>> import jax, jax.numpy as jnp
        >>> import jaxloss as jl
        >>> jnp.set_printoptions(precision=4)
        >>> e = jnp.array([[1.0, 0.0], [0.8, 0.6], [0.0, 1.0], [-0.6, 0.8]])
        >>> labels = jnp.array([0, 0, 1, 1])  # rows 0 and 1 a pair, rows 2 and 3 another
        >>> jl.ntxent_loss(e, labels, 0.5)  # optax.losses.ntxent(e, labels, 0.5)
        Array(0.4302, dtype=float32)
        >>> jax.grad(jl.ntxent_loss)(e, labels, 0.5)
        Array([[ 0.    , -0.0298],
               [-0.3735,  0.498 ],
               [ 0.6225,  0.    ],
               [-0.0238, -0.0179]], dtype=float32)
    """
    embeddings = _checks.floating_input("embeddings", embeddings)
    if embeddings.ndim != 2:
        raise ValueError(f"embeddings must have shape (B, D), got {embeddings.shape}")
    labels = _checks.as_array("labels", labels)
    if not jnp.issubdtype(labels.dtype, jnp.integer):
        raise TypeError(f"labels must be integers, got dtype {labels.dtype}")
    if labels.shape != embeddings.shape[:1]:
        raise ValueError(f"labels must have shape {embeddings.shape[:1]}, got {labels.shape}")
    temperature = _checks.real_scalar("temperature", temperature, minimum=0.0, strict=True)
    reduction = _checks.reduction(reduction)
    axis_name = _axis_name(axis_name)
    chunk_size = _checks.optional_positive_int("chunk_size", chunk_size)
    rows = embeddings.shape[0]
    if rows == 0:
        return _empty(reduction, embeddings.dtype)
    dtype = embeddings.dtype

    def loss(embeddings, labels, temperature, axis):
        acc = engine.accumulation_dtype(embeddings, embeddings)
        unit = _unit_rows(embeddings, acc)
        all_labels = _gathered(labels, axis)
        per_row = _engine_rows(
            NTXentHead(), unit / temperature.astype(acc), _gathered(unit, axis), None, labels,
            all_labels, reduction, chunk_size, axis,
        )  # fmt: skip
        if reduction != "mean":
            return _reduced(per_row, reduction, rows, axis).astype(dtype)
        total = _total(per_row, axis)
        return safe_divide(total, _positive_pairs(all_labels).astype(total.dtype)).astype(dtype)

    return _on_each_device(loss, (embeddings, labels), (temperature,), reduction, axis_name)
