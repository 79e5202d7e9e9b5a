"""cross_entropy and nll_loss (jaxloss/_classification.py) against float64 references."""

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxloss as jl
from tests import builders as build
from tests import reference as ref

REDUCTIONS = ("mean", "sum", "none")
# (logits shape, class axis)
LAYOUTS = [((7, 5), -1), ((5,), 0), ((3, 4, 6), 1), ((2, 3, 4, 5), -1), ((2, 5, 3, 2), 1)]


def _last(x, axis):
    return jnp.moveaxis(x, axis, -1)


def _cases(eps):
    """Every layout with every reduction; weights and smoothing rotate so that each
    reduction meets all four of (no) weights x (no) smoothing."""
    variants = [(False, 0.0), (True, 0.0), (False, eps), (True, eps)]
    return [
        (layout, reduction, *variants[(i + j) % 4])
        for i, layout in enumerate(LAYOUTS)
        for j, reduction in enumerate(REDUCTIONS)
    ]


@pytest.mark.exhaustive(quick_cases=4)
@pytest.mark.parametrize("layout, reduction, use_weight, eps", _cases(0.2))
def test_cross_entropy_index_targets_match_reference(x64, layout, reduction, use_weight, eps):
    shape, axis = layout
    logits, targets, num_classes = build.index_problem(shape, axis)
    weight = jnp.linspace(0.5, 2.0, num_classes) if use_weight else None
    got = jl.cross_entropy(
        logits, targets, weight=weight, reduction=reduction, label_smoothing=eps, axis=axis
    )
    want = ref.cross_entropy_index(
        _last(logits, axis), targets, weight, reduction=reduction, eps=eps
    )
    assert got.dtype == jnp.float64
    np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-12)


@pytest.mark.exhaustive(quick_cases=4)
@pytest.mark.parametrize("layout, reduction, use_weight, eps", _cases(0.3))
def test_cross_entropy_probability_targets_match_reference(x64, layout, reduction, use_weight, eps):
    shape, axis = layout
    logits, _, num_classes = build.index_problem(shape, axis)
    targets = jl.softmax(build.normal(shape, 9, jnp.float64), axis=axis)
    weight = jnp.linspace(0.5, 2.0, num_classes) if use_weight else None
    got = jl.cross_entropy(
        logits, targets, weight=weight, reduction=reduction, label_smoothing=eps, axis=axis
    )
    want = ref.cross_entropy_probs(
        _last(logits, axis), _last(targets, axis), weight, reduction=reduction, eps=eps
    )
    if reduction == "none":
        want = want.reshape(got.shape)
    np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-12)


def test_mean_divides_by_weight_of_kept_targets(x64):
    # PyTorch: sum_n w[y_n] l_n / sum_{n kept} w[y_n], smoothing term included.
    logits = jnp.array([[1.0, 2.0, 0.5], [0.3, -1.0, 2.0], [0.0, 0.0, 0.0]])
    targets = jnp.array([1, 2, -100])
    weight = jnp.array([1.0, 3.0, 0.5])
    per = jl.cross_entropy(logits, targets, weight=weight, label_smoothing=0.1, reduction="none")
    mean = jl.cross_entropy(logits, targets, weight=weight, label_smoothing=0.1)
    assert per[2] == 0.0
    np.testing.assert_allclose(mean, per.sum() / (3.0 + 0.5), rtol=1e-12)


def test_index_and_onehot_probability_targets_agree_without_weights(x64):
    logits, targets, num_classes = build.index_problem((6, 4), -1, ignore_frac=0.0)
    onehot = jax.nn.one_hot(targets, num_classes, dtype=jnp.float64)
    for eps in (0.0, 0.25):
        a = jl.cross_entropy(logits, targets, label_smoothing=eps)
        b = jl.cross_entropy(logits, onehot, label_smoothing=eps)
        np.testing.assert_allclose(a, b, rtol=1e-12)


def test_where_excludes_classes_from_softmax_and_smoothing(x64):
    logits, targets, _ = build.index_problem((5, 6), -1, ignore_frac=0.0)
    where = jnp.arange(6) < 4
    targets = targets % 4
    got = jl.cross_entropy(logits, targets, where=where, label_smoothing=0.2, reduction="none")
    want = jl.cross_entropy(logits[:, :4], targets, label_smoothing=0.2, reduction="none")
    np.testing.assert_allclose(got, want, rtol=1e-12)
    np.testing.assert_allclose(
        got, ref.cross_entropy_index(logits, targets, eps=0.2, where=where, reduction="none")
    )


@pytest.mark.exhaustive
def test_nll_loss_matches_reference_and_cross_entropy(x64):
    # Every layout with every reduction; with and without weights alternate.
    for i, ((shape, axis), reduction) in enumerate(itertools.product(LAYOUTS, REDUCTIONS)):
        logits, targets, num_classes = build.index_problem(shape, axis)
        weight = jnp.linspace(2.0, 0.5, num_classes) if i % 2 else None

        @jax.jit
        def compare(logits, targets, weight, axis=axis, reduction=reduction):
            log_probs = jl.log_softmax(logits, axis=axis)
            got = jl.nll_loss(log_probs, targets, weight=weight, reduction=reduction, axis=axis)
            want = ref.nll_loss(_last(log_probs, axis), targets, weight, reduction=reduction)
            ce = jl.cross_entropy(logits, targets, weight=weight, reduction=reduction, axis=axis)
            return got, want, ce

        got, want, ce = compare(logits, targets, weight)
        np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-12)
        np.testing.assert_allclose(got, ce, rtol=1e-12, atol=1e-12)


def test_custom_ignore_index(x64):
    logits, targets, _ = build.index_problem((8, 3), -1, ignore_frac=0.0)
    targets = targets.at[::2].set(7)
    per = jl.cross_entropy(logits, targets, ignore_index=7, reduction="none")
    assert np.all(np.asarray(per[::2]) == 0.0)
    np.testing.assert_allclose(
        jl.cross_entropy(logits, targets, ignore_index=7), per.sum() / 4, rtol=1e-12
    )


def test_results_are_the_same_under_an_outer_jit():
    logits, targets, _ = build.index_problem((6, 5), -1, dtype=jnp.float32)
    eager = jl.cross_entropy(logits, targets, label_smoothing=0.1)
    jitted = jax.jit(lambda x, t: jl.cross_entropy(x, t, label_smoothing=0.1))(logits, targets)
    np.testing.assert_allclose(eager, jitted, rtol=1e-6)


def test_traced_label_smoothing_and_weight_do_not_retrace():
    traces = []

    @jax.jit
    def loss(logits, targets, eps, weight):
        traces.append(1)
        return jl.cross_entropy(logits, targets, label_smoothing=eps, weight=weight)

    logits = jnp.ones((4, 3))
    targets = jnp.array([0, 1, 2, 0])
    values = [
        loss(logits.at[0, 0].set(2.0), targets, e, jnp.array([1.0, w, 1.0]))
        for e, w in ((0.0, 1.0), (0.1, 2.0), (0.3, 0.5))
    ]
    assert len(traces) == 1
    assert len({float(v) for v in values}) == 3


@pytest.mark.exhaustive
@pytest.mark.parametrize(
    "loss, weight_name",
    [
        (jl.nll_loss, "weight"),
        (jl.softmax_focal_loss, "alpha"),
        (jl.poly1_cross_entropy, "weight"),
    ],
    ids=["nll_loss", "softmax_focal_loss", "poly1_cross_entropy"],
)
def test_out_of_range_and_impossible_targets_pass_no_gradient_to_class_weights(
    x64, loss, weight_name
):
    """A target outside [0, C) has a nan loss and logit gradient but is no class, so its
    weight gets nothing from it; a target at a -inf logit (0 * log 0) gets nothing
    either. The class-weight gradient is that of the other rows alone."""
    x = build.normal((5, 4), 3, jnp.float64)
    x = x.at[3, 1].set(-jnp.inf)
    y = jnp.array([0, 4, 2, 1, 3])  # row 1 out of range, row 3 at its -inf logit
    w = jnp.array([0.5, 1.5, 2.0, 0.7], jnp.float64)
    good = jnp.array([0, 2, 4])

    def total(w, rows):
        per_row = loss(x[rows], y[rows], reduction="none", **{weight_name: w})
        return jnp.sum(per_row[jnp.isfinite(per_row)])

    per_row = loss(x, y, reduction="none", **{weight_name: w})
    assert np.isnan(per_row[1]) and per_row[3] == jnp.inf
    every = jax.grad(total)(w, jnp.arange(5))
    assert np.all(np.isfinite(np.asarray(every)))
    np.testing.assert_allclose(every, jax.grad(total)(w, good), rtol=1e-12)
