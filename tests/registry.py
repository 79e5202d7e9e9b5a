"""The registry of the public functions: each with a small problem and the roles of its
arguments, which tests/test_registry.py runs through the checks every function owes.

A function is not done until it is here: a test fails when a name in
``jaxloss.__all__`` is missing. An entry says

- ``make(n, seed)``: the keyword arguments of a problem with ``n`` elements (float64
  NumPy arrays for the floating ones), the element axis of each in ``batch_axes``
  (0 unless said; an argument without it, such as a class weight, is shared);
- ``call(**arrays, reduction=...)``: the function on them;
- ``scores``: the argument each element reads, where a nan or an extreme value goes;
- ``differentiable``: the floating arguments with a gradient (checked against finite
  differences); ``constant``: those the function holds constant, whose gradient must
  be exactly 0 and whose docstring must say so; together they are every floating
  argument of the problem;
- ``index``: the integer class-index argument and its class count, if any;
- ``drop``: how element 0 is left out (ignored, zero weight, padded): it must then
  add exactly 0 to the value and the gradient whatever its scores hold;
- ``smooth``: the math has continuous second derivatives (checked to second order);
- ``coupled``: the elements share weights drawn from every element's targets
  (generalized Dice), so one bad target makes every element nan;
- ``pairwise``: every element is compared with every other (the contrastive losses'
  softmax over the batch), so a nan score makes every element nan;
- ``domain``: ``"logits"`` (any real), ``"log_probs"`` (at most 0) or
  ``"probs"`` (in [0, 1]): which extreme values make sense.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import jax.numpy as jnp
import numpy as np

import jaxloss as jl

C = 5  # classes
T = 6  # CTC frames
H, V = 4, 7  # the fused losses' hidden size and vocabulary


@dataclasses.dataclass(frozen=True)
class Entry:
    name: str
    call: Callable[..., Any]
    make: Callable[[int, int], dict[str, Any]]
    scores: str
    differentiable: tuple[str, ...]
    constant: tuple[str, ...] = ()
    batch_axes: dict[str, int | None] = dataclasses.field(default_factory=dict)
    index: tuple[str, int] | None = None
    drop: Callable[[dict[str, Any]], dict[str, Any]] | None = None
    smooth: bool = True
    domain: str = "logits"
    reductions: tuple[str, ...] = ("mean", "sum", "none")
    coupled: bool = False  # the elements share weights drawn from all of their targets
    pairwise: bool = False  # each element's loss reads every element's scores

    def axis(self, arg: str) -> int | None:
        return self.batch_axes.get(arg, 0)


def _rng(seed):
    return np.random.default_rng(seed)


def _logits(n, seed, classes=C):
    return {"x": 2.0 * _rng(seed).standard_normal((n, classes))}


def _labels(n, seed, classes=C):
    return _rng(seed + 1).integers(0, classes, (n,))


def _probs(shape, seed):
    return _rng(seed).uniform(0.05, 0.95, shape)


def _elementwise(name, fn, targets, **more):
    """A loss of one score and one target per entry; weight 0 drops element 0 when the
    function takes a weight."""

    def make(n, seed):
        args = {"x": 2.0 * _rng(seed).standard_normal((n, 3)), "t": targets((n, 3), seed)}
        if "weight" in more.get("differentiable", ()):
            args["weight"] = _rng(seed + 2).uniform(0.5, 2.0, (n, 3))
        return args

    def call(x, t, weight=None, reduction="mean"):
        kwargs = {} if weight is None else {"weight": weight}
        return fn(x, t, reduction=reduction, **kwargs)

    def drop(args):
        return {**args, "weight": np.concatenate([0 * args["weight"][:1], args["weight"][1:]])}

    has_weight = "weight" in more.get("differentiable", ())
    more.setdefault("differentiable", ("x",))
    return Entry(name, call, make, "x", drop=drop if has_weight else None, **more)


def _signs(shape, seed):
    return np.where(_rng(seed + 1).uniform(size=shape) < 0.5, -1.0, 1.0)


def _bits(shape, seed):
    return (_rng(seed + 1).uniform(size=shape) < 0.5).astype(np.float64)


# --- the softmax family and the index losses -------------------------------------------


def _normalizer(fn):
    def call(x, reduction="mean"):
        del reduction
        return fn(x)

    return Entry(fn.__name__, call, _logits, "x", ("x",), reductions=("none",))


def _index_loss(name, fn, domain="logits", weight="weight", **options):
    """An index-target loss with class weights: ignore_index drops element 0."""

    def make(n, seed):
        args = _logits(n, seed)
        if domain == "log_probs":
            args["x"] = args["x"] - np.log(np.exp(args["x"]).sum(-1, keepdims=True))
        return {**args, "y": _labels(n, seed), "w": _rng(seed + 2).uniform(0.5, 2.0, C)}

    def call(x, y, w, reduction="mean"):
        return fn(x, y, reduction=reduction, **{weight: w}, **options)

    def drop(args):
        return {**args, "y": np.concatenate([[-100], args["y"][1:]])}

    return Entry(name, call, make, "x", ("x", "w"), batch_axes={"w": None}, index=("y", C),
                 drop=drop, domain=domain)  # fmt: skip


def _cross_entropy(x, y, w, smoothing, reduction="mean"):
    return jl.cross_entropy(x, y, weight=w, label_smoothing=smoothing, reduction=reduction)


def _cross_entropy_make(n, seed):
    return {"x": _logits(n, seed)["x"], "y": _labels(n, seed),
            "w": _rng(seed + 2).uniform(0.5, 2.0, C), "smoothing": np.float64(0.1)}  # fmt: skip


def _cross_entropy_drop(args):
    return {**args, "y": np.concatenate([[-100], args["y"][1:]])}


def _focal(x, y, gamma, alpha, reduction="mean"):
    return jl.softmax_focal_loss(x, y, gamma=gamma, alpha=alpha, reduction=reduction)


def _focal_make(n, seed):
    return {**_logits(n, seed), "y": _labels(n, seed), "gamma": np.float64(1.5),
            "alpha": _rng(seed + 2).uniform(0.5, 2.0, C)}  # fmt: skip


def _poly1(x, y, w, epsilon, smoothing, reduction="mean"):
    return jl.poly1_cross_entropy(
        x, y, weight=w, epsilon=epsilon, label_smoothing=smoothing, reduction=reduction
    )


# --- margin and sparsemax --------------------------------------------------------------


def _class_score_entry(fn, make=None):
    """A loss of class scores and class indices (or lists) without options: piecewise
    linear, so not checked to second order."""

    def call(x, y, reduction="mean"):
        return fn(x, y, reduction=reduction)

    def logits_and_labels(n, seed):
        return {**_logits(n, seed), "y": _labels(n, seed)}

    return Entry(fn.__name__, call, make or logits_and_labels, "x", ("x",), index=("y", C),
                 smooth=False)  # fmt: skip


def _multi_margin(x, y, w, margin, reduction="mean"):
    return jl.multi_margin_loss(x, y, weight=w, margin=margin, reduction=reduction)


def _multi_margin_make(n, seed):
    return {**_logits(n, seed), "y": _labels(n, seed), "margin": np.float64(1.0),
            "w": _rng(seed + 2).uniform(0.5, 2.0, C)}  # fmt: skip


def _multi_margin_drop(args):
    """Element 0's class weighted 0 (and no other element of that class)."""
    y = np.array(args["y"])
    y[1:] = np.where(y[1:] == y[0], (y[0] + 1) % C, y[1:])
    w = np.array(args["w"])
    w[y[0]] = 0.0
    return {**args, "y": y, "w": w}


def _multilabel_make(n, seed):
    """Two target classes per element (distinct), the list ended by -1."""
    rng = _rng(seed + 1)
    lists = np.full((n, C), -1)
    for row in lists:
        row[:2] = rng.choice(C, 2, replace=False)
    return {**_logits(n, seed), "y": lists}


def _multilabel_soft(x, t, w, reduction="mean"):
    return jl.multilabel_soft_margin_loss(x, t, weight=w, reduction=reduction)


def _multilabel_soft_make(n, seed):
    return {**_logits(n, seed), "t": _bits((n, C), seed), "w": _rng(seed + 2).uniform(0.5, 2, C)}


def _hinge_embedding(x, t, margin, reduction="mean"):
    return jl.hinge_embedding_loss(x, t, margin=margin, reduction=reduction)


def _hinge_embedding_make(n, seed):
    return {"x": 2.0 * _rng(seed).standard_normal((n, 3)), "t": _signs((n, 3), seed),
            "margin": np.float64(1.5)}  # fmt: skip


# --- BCE, KL, focal --------------------------------------------------------------------


def _bce_logits(x, t, weight, pos_weight, reduction="mean"):
    return jl.binary_cross_entropy_with_logits(
        x, t, weight=weight, pos_weight=pos_weight, reduction=reduction
    )


def _bce_logits_make(n, seed):
    rng = _rng(seed + 2)
    return {"x": 2.0 * _rng(seed).standard_normal((n, 3)), "t": _probs((n, 3), seed + 1),
            "weight": rng.uniform(0.5, 2, (n, 3)),
            "pos_weight": rng.uniform(0.5, 2, 3)}  # fmt: skip


def _weight_drop(args):
    return {**args, "weight": np.concatenate([0 * args["weight"][:1], args["weight"][1:]])}


def _bce(p, t, weight, reduction="mean"):
    return jl.binary_cross_entropy(p, t, weight=weight, reduction=reduction)


def _bce_make(n, seed):
    return {"p": _probs((n, 3), seed), "t": _probs((n, 3), seed + 1),
            "weight": _rng(seed + 2).uniform(0.5, 2, (n, 3))}  # fmt: skip


def _kl(q, t, reduction="mean"):
    return jl.kl_div(q, t, reduction=reduction)


def _kl_make(n, seed):
    return {"q": np.log(_probs((n, C), seed)), "t": _probs((n, C), seed + 1)}


def _sigmoid_focal(x, t, weight, reduction="mean"):
    return jl.sigmoid_focal_loss(x, t, weight=weight, alpha=0.25, gamma=1.5, reduction=reduction)


def _sigmoid_focal_make(n, seed):
    return {"x": 2.0 * _rng(seed).standard_normal((n, 3)), "t": _probs((n, 3), seed + 1),
            "weight": _rng(seed + 2).uniform(0.5, 2, (n, 3))}  # fmt: skip


# --- CTC -------------------------------------------------------------------------------


def _ctc(lp, y, input_lengths, target_lengths, reduction="mean"):
    return jl.ctc_loss(lp, y, input_lengths, target_lengths, reduction=reduction)


def _ctc_make(n, seed):
    z = _rng(seed).standard_normal((T, n, C))
    lp = z - np.log(np.exp(z).sum(-1, keepdims=True))
    return {"lp": lp, "y": _rng(seed + 1).integers(1, C, (n, 2)),
            "input_lengths": np.full(n, T), "target_lengths": np.full(n, 2)}  # fmt: skip


def _ctc_drop(args):
    """Element 0 with no frames and no labels: its loss is 0 whatever its frames hold."""
    lengths = {k: np.concatenate([[0], args[k][1:]]) for k in ("input_lengths", "target_lengths")}
    return {**args, **lengths}


def _ctc_paddings(z, zp, y, yp, reduction="none"):
    return jl.ctc_loss_with_paddings(z, zp, y, yp, reduction=reduction)


def _ctc_paddings_make(n, seed):
    return {"z": _rng(seed).standard_normal((n, T, C)), "zp": np.zeros((n, T)),
            "y": _rng(seed + 1).integers(1, C, (n, 2)), "yp": np.zeros((n, 2))}  # fmt: skip


def _ctc_paddings_drop(args):
    return {**args, "zp": np.concatenate([np.ones((1, T)), args["zp"][1:]]),
            "yp": np.concatenate([np.ones((1, 2)), args["yp"][1:]])}  # fmt: skip


# --- overlap ---------------------------------------------------------------------------


def _overlap(fn, **options):
    def call(x, y, reduction="mean"):
        return fn(x, y, reduction=reduction, **options)

    return call


def _overlap_make(n, seed):
    return {"x": 2.0 * _rng(seed).standard_normal((n, 4, C)),
            "y": _rng(seed + 1).integers(0, C, (n, 4))}  # fmt: skip


def _tversky(x, t, alpha, beta, smooth, reduction="mean"):
    return jl.tversky_loss(x, t, alpha=alpha, beta=beta, smooth=smooth, reduction=reduction)


def _tversky_make(n, seed):
    return {"x": 2.0 * _rng(seed).standard_normal((n, 4, C)), "t": _probs((n, 4, C), seed + 1),
            "alpha": np.float64(0.3), "beta": np.float64(0.7),
            "smooth": np.float64(0.5)}  # fmt: skip


# --- fused -----------------------------------------------------------------------------


def _linear(x, w, y, bias, reduction="mean"):
    return jl.linear_cross_entropy(x, w, y, bias=bias, reduction=reduction, chunk_size=2)


def _linear_make(n, seed):
    rng = _rng(seed)
    return {"x": rng.standard_normal((n, H)), "w": rng.standard_normal((H, V)),
            "y": rng.integers(0, V, n), "bias": 0.5 * rng.standard_normal(V)}  # fmt: skip


def _linear_kl(x, w, tx, tw, y, reduction="mean"):
    return jl.linear_kl_div(x, w, tx, tw, targets=y, reduction=reduction, chunk_size=2)


def _linear_kl_make(n, seed):
    rng = _rng(seed)
    return {"x": rng.standard_normal((n, H)), "w": rng.standard_normal((H, V)),
            "tx": rng.standard_normal((n, H)), "tw": rng.standard_normal((H, V)),
            "y": rng.integers(0, V, n)}  # fmt: skip


def _linear_jsd(x, w, tx, tw, y, reduction="mean"):
    return jl.linear_jsd(
        x, w, tx, tw, beta=0.3, temperature=1.5, targets=y, reduction=reduction, chunk_size=2
    )


def _linear_log_probs(x, w, y, bias, reduction="none"):
    log_probs, entropy = jl.linear_log_probs(x, w, y, bias=bias, temperature=1.5, chunk_size=2)
    per_token = log_probs - 0.3 * entropy  # both outputs, under different cotangents
    return per_token if reduction == "none" else jnp.sum(per_token)


# --- contrastive -----------------------------------------------------------------------


def _pairs_make(n, seed):
    rng = _rng(seed)
    return {"x": rng.standard_normal((n, 3)), "y": rng.standard_normal((n, 3)),
            "scale": np.float64(1.7), "bias": np.float64(-0.4)}  # fmt: skip


def _contrastive(x, y, scale, bias, reduction="mean"):
    return jl.contrastive_loss(x, y, logit_scale=scale, logit_bias=bias, reduction=reduction,
                               label_smoothing=0.1, chunk_size=2)  # fmt: skip


def _sigmoid_contrastive(x, y, scale, bias, reduction="mean"):
    return jl.sigmoid_contrastive_loss(x, y, logit_scale=scale, logit_bias=bias,
                                       reduction=reduction, chunk_size=2)  # fmt: skip


def _ntxent_make(n, seed):
    rng = _rng(seed)
    return {"e": rng.standard_normal((n, 3)), "labels": rng.permutation(np.arange(n) // 2),
            "t": np.float64(0.5)}  # fmt: skip


def _ntxent(e, labels, t, reduction="mean"):
    return jl.ntxent_loss(e, labels, t, reduction=reduction, chunk_size=2)


PAIR_SCALARS = {"scale": None, "bias": None}


def _ignore_first(args):
    return {**args, "y": np.concatenate([[-100], args["y"][1:]])}


SHARED = {"w": None, "bias": None, "tw": None}

ENTRIES = [
    _normalizer(jl.log_softmax),
    _normalizer(jl.softmax),
    dataclasses.replace(_normalizer(jl.sparsemax), smooth=False),
    Entry(
        "log_sigmoid",
        lambda x, reduction="mean": jl.log_sigmoid(x),
        _logits,
        "x",
        ("x",),
        reductions=("none",),
    ),
    _index_loss("nll_loss", jl.nll_loss, domain="log_probs"),
    Entry(
        "cross_entropy",
        _cross_entropy,
        _cross_entropy_make,
        "x",
        ("x", "w", "smoothing"),
        batch_axes={"w": None, "smoothing": None},
        index=("y", C),
        drop=_cross_entropy_drop,
    ),
    Entry(
        "softmax_focal_loss",
        _focal,
        _focal_make,
        "x",
        ("x", "alpha"),
        constant=("gamma",),
        batch_axes={"gamma": None, "alpha": None},
        index=("y", C),
        drop=_ignore_first,
    ),
    Entry(
        "poly1_cross_entropy",
        _poly1,
        lambda n, s: {**_cross_entropy_make(n, s), "epsilon": np.float64(0.7)},
        "x",
        ("x", "w", "smoothing"),
        constant=("epsilon",),
        batch_axes={"w": None, "epsilon": None, "smoothing": None},
        index=("y", C),
        drop=_ignore_first,
    ),
    Entry(
        "multi_margin_loss",
        _multi_margin,
        _multi_margin_make,
        "x",
        ("x", "w", "margin"),
        batch_axes={"w": None, "margin": None},
        index=("y", C),
        drop=_multi_margin_drop,
        smooth=False,
    ),
    _class_score_entry(jl.multiclass_hinge_loss),
    _class_score_entry(jl.multiclass_perceptron_loss),
    _class_score_entry(jl.multiclass_sparsemax_loss),
    _class_score_entry(jl.multilabel_margin_loss, _multilabel_make),
    Entry(
        "multilabel_soft_margin_loss",
        _multilabel_soft,
        _multilabel_soft_make,
        "x",
        ("x", "t", "w"),
        batch_axes={"w": None},
    ),
    _elementwise("soft_margin_loss", jl.soft_margin_loss, _signs, differentiable=("x", "t")),
    Entry(
        "hinge_embedding_loss",
        _hinge_embedding,
        _hinge_embedding_make,
        "x",
        ("x", "t", "margin"),
        batch_axes={"margin": None},
        smooth=False,
    ),
    _elementwise("hinge_loss", jl.hinge_loss, _signs, differentiable=("x", "t"), smooth=False),
    _elementwise(
        "perceptron_loss", jl.perceptron_loss, _signs, differentiable=("x", "t"), smooth=False
    ),
    _elementwise(
        "sparsemax_loss", jl.sparsemax_loss, _probs, differentiable=("x", "t"), smooth=False
    ),
    Entry(
        "binary_cross_entropy_with_logits",
        _bce_logits,
        _bce_logits_make,
        "x",
        ("x", "t", "weight", "pos_weight"),
        batch_axes={"pos_weight": None},
        drop=_weight_drop,
    ),
    Entry(
        "binary_cross_entropy",
        _bce,
        _bce_make,
        "p",
        ("p", "t", "weight"),
        drop=_weight_drop,
        domain="probs",
    ),
    Entry("kl_div", _kl, _kl_make, "q", ("q", "t"), domain="log_probs"),
    Entry(
        "sigmoid_focal_loss",
        _sigmoid_focal,
        _sigmoid_focal_make,
        "x",
        ("x", "weight"),
        constant=("t",),
        drop=_weight_drop,
    ),
    Entry(
        "ctc_loss",
        _ctc,
        _ctc_make,
        "lp",
        ("lp",),
        index=("y", C),
        drop=_ctc_drop,
        batch_axes={"lp": 1},
        domain="log_probs",
    ),
    Entry(
        "ctc_loss_with_paddings",
        _ctc_paddings,
        _ctc_paddings_make,
        "z",
        ("z",),
        constant=("zp", "yp"),
        index=("y", C),
        drop=_ctc_paddings_drop,
    ),
    Entry("dice_loss", _overlap(jl.dice_loss), _overlap_make, "x", ("x",), index=("y", C)),
    Entry(
        "generalized_dice_loss",
        _overlap(jl.generalized_dice_loss),
        _overlap_make,
        "x",
        ("x",),
        index=("y", C),
        coupled=True,
    ),
    Entry(
        "tversky_loss",
        _tversky,
        _tversky_make,
        "x",
        ("x", "t", "alpha", "beta", "smooth"),
        batch_axes={"alpha": None, "beta": None, "smooth": None},
    ),
    Entry(
        "linear_cross_entropy",
        _linear,
        _linear_make,
        "x",
        ("x", "w", "bias"),
        batch_axes=SHARED,
        index=("y", V),
        drop=_ignore_first,
    ),
    Entry(
        "linear_kl_div",
        _linear_kl,
        _linear_kl_make,
        "x",
        ("x", "w"),
        constant=("tx", "tw"),
        batch_axes={**SHARED, "tx": 0},
        index=("y", V),
        drop=_ignore_first,
    ),
    Entry(
        "linear_jsd",
        _linear_jsd,
        _linear_kl_make,
        "x",
        ("x", "w"),
        constant=("tx", "tw"),
        batch_axes={**SHARED, "tx": 0},
        index=("y", V),
        drop=_ignore_first,
    ),
    Entry(
        "linear_log_probs",
        _linear_log_probs,
        _linear_make,
        "x",
        ("x", "w", "bias"),
        batch_axes=SHARED,
        index=("y", V),
        drop=_ignore_first,
        reductions=("none", "sum"),
    ),
    Entry(
        "contrastive_loss",
        _contrastive,
        _pairs_make,
        "x",
        ("x", "y", "scale", "bias"),
        batch_axes=PAIR_SCALARS,
        pairwise=True,
    ),
    Entry(
        "sigmoid_contrastive_loss",
        _sigmoid_contrastive,
        _pairs_make,
        "x",
        ("x", "y", "scale", "bias"),
        batch_axes=PAIR_SCALARS,
    ),
    Entry(
        "ntxent_loss",
        _ntxent,
        _ntxent_make,
        "e",
        ("e", "t"),
        batch_axes={"t": None},
        pairwise=True,
    ),
]

REGISTRY = {entry.name: entry for entry in ENTRIES}
