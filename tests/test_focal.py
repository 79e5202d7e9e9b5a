"""sigmoid_focal_loss, softmax_focal_loss and poly1_cross_entropy against float64
formulas written here (torchvision's and Keras's), autodiff of those formulas, and finite
differences."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads

import jaxloss as jl
from tests import builders as build
from tests import reference as ref

# --- the formulas, as their libraries write them ---------------------------------------


def torchvision_sigmoid_focal(x, t, alpha=0.25, gamma=2.0, reduction="none"):
    """torchvision.ops.sigmoid_focal_loss, written out (log-sigmoid form for stability)."""
    p = jax.nn.sigmoid(x)
    ce = -(t * jax.nn.log_sigmoid(x) + (1 - t) * jax.nn.log_sigmoid(-x))
    p_t = p * t + (1 - p) * (1 - t)
    loss = ce * (1 - p_t) ** gamma
    if alpha is not None and alpha >= 0:
        loss = (alpha * t + (1 - alpha) * (1 - t)) * loss
    return {"none": loss, "mean": loss.mean(), "sum": loss.sum()}[reduction]


def keras_categorical_focal(x, y_onehot, alpha=1.0, gamma=2.0):
    """Keras's CategoricalFocalCrossentropy per example: -sum alpha (1 - p)^gamma y log p."""
    log_p = ref.log_softmax(x)
    p = jnp.exp(log_p)
    return -jnp.sum(alpha * (1 - p) ** gamma * y_onehot * log_p, axis=-1)


def naive_modulated(x, a, h):
    """sum_c a_c h(p_c), masked entries of a adding nothing."""
    log_p = ref.log_softmax(x)
    return jnp.sum(jnp.where(a != 0, a * h(jnp.exp(log_p), log_p), 0.0), axis=-1)


def focal_h(gamma):
    return lambda p, log_p: (1 - p) ** gamma * -log_p


def poly_h(epsilon):
    return lambda p, log_p: -log_p + epsilon * (1 - p)


def _coefficients(y, num_classes, weight=None, eps=0.0):
    keep = y != -100
    onehot = jax.nn.one_hot(jnp.where(keep, y, 0), num_classes)
    w = jnp.ones(num_classes) if weight is None else weight
    a = (1 - eps) * onehot * w + eps / num_classes * w
    return jnp.where(keep[..., None], a, 0.0)


# --- sigmoid_focal_loss ----------------------------------------------------------------


@functools.partial(jax.jit, static_argnames="gamma")
def sigmoid_focal_mean(x, t, alpha, gamma):
    """An alpha passed in (one compiled program for every alpha) and gamma as users pass
    it: a Python number, whose integer values take the integer-power path."""
    return jl.sigmoid_focal_loss(x, t, alpha=alpha, gamma=gamma)


@pytest.mark.exhaustive(quick_cases=1)
@pytest.mark.parametrize("alpha", [0.25, None, -1.0, 0.9])
@pytest.mark.parametrize("gamma", [0.0, 0.5, 2.0, 3.5])
def test_sigmoid_focal_equals_torchvision_formula(x64, alpha, gamma):
    x = build.logits((5, 7), scale=3.0)
    t = (build.uniform((5, 7), 3) < 0.4).astype(jnp.float64)
    for reduction in ("none", "mean", "sum"):
        want = torchvision_sigmoid_focal(x, t, alpha, gamma, reduction)
        got = jl.sigmoid_focal_loss(x, t, alpha=alpha, gamma=gamma, reduction=reduction)
        np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-15)
    grad = jax.grad(lambda x: jl.sigmoid_focal_loss(x, t, alpha=alpha, gamma=gamma))(x)
    want = jax.grad(lambda x: torchvision_sigmoid_focal(x, t, alpha, gamma, "mean"))(x)
    np.testing.assert_allclose(grad, want, rtol=1e-10, atol=1e-15)
    check_grads(lambda x: sigmoid_focal_mean(x, t, alpha, gamma), (x,), 2)


@pytest.mark.exhaustive
def test_sigmoid_focal_soft_targets_weights_and_k_dims(x64):
    x = build.logits((2, 3, 4, 5))
    t = build.probabilities((2, 3, 4, 5))
    w = jnp.linspace(0.5, 2.0, 5)
    pw = jnp.linspace(1.0, 3.0, 5)

    def naive(x):
        p = jax.nn.sigmoid(x)
        ce = -(pw * t * jax.nn.log_sigmoid(x) + (1 - t) * jax.nn.log_sigmoid(-x))
        q = 1 - (p * t + (1 - p) * (1 - t))
        return jnp.sum(w * (0.3 * t + 0.7 * (1 - t)) * q**1.5 * ce)

    ours = lambda x: jl.sigmoid_focal_loss(  # noqa: E731
        x, t, alpha=0.3, gamma=1.5, weight=w, pos_weight=pw, reduction="sum"
    )
    np.testing.assert_allclose(ours(x), naive(x), rtol=1e-12)
    np.testing.assert_allclose(jax.grad(ours)(x), jax.grad(naive)(x), rtol=1e-10, atol=1e-14)


@pytest.mark.exhaustive
def test_sigmoid_focal_is_finite_at_extreme_logits_for_every_gamma(x64):
    x = jnp.array([1e4, -1e4, 40.0, -40.0, 1e4, -1e4])
    t = jnp.array([1.0, 0.0, 1.0, 0.0, 0.0, 1.0])
    for gamma in (0.0, 0.25, 0.5, 2.0):
        loss, grad = jax.value_and_grad(
            lambda x, g=gamma: jl.sigmoid_focal_loss(x, t, gamma=g, reduction="sum")
        )(x)
        assert np.isfinite(loss) and np.all(np.isfinite(grad)), gamma
        # Confident and right: the exact limits, 0 (q rounds to 0 at 1e4).
        assert grad[0] == 0 and grad[1] == 0
        # Confident and wrong: the loss is alpha_t |x| q^gamma with q = 1, slope alpha_t.
        np.testing.assert_allclose(grad[4:], [0.75, -0.25], rtol=1e-12)
    for dtype in (jnp.float32, jnp.bfloat16):
        assert np.isfinite(jl.sigmoid_focal_loss(x.astype(dtype), t.astype(dtype)))


@pytest.mark.exhaustive
def test_sigmoid_focal_gradient_for_gamma_below_one_near_saturation(x64):
    """gamma in (0, 1): the naive derivative has q^(gamma - 1), unbounded as q -> 0; the
    rule agrees with autodiff of the formula wherever that is finite and stays finite."""
    x = jnp.linspace(5.0, 30.0, 11)
    t = jnp.ones_like(x)
    for gamma in (0.1, 0.5, 0.9):
        ours = jax.grad(lambda x, g=gamma: jl.sigmoid_focal_loss(x, t, gamma=g, reduction="sum"))
        # For t = 1 the formula is 0.25 sigma(-x)^gamma softplus(-x), written so that
        # 1 - p_t does not cancel.
        naive = jax.grad(
            lambda x, g=gamma: jnp.sum(0.25 * jax.nn.sigmoid(-x) ** g * jax.nn.softplus(-x))
        )
        np.testing.assert_allclose(ours(x), naive(x), rtol=1e-10, atol=1e-300)
        far = jax.grad(lambda x, g=gamma: jl.sigmoid_focal_loss(x, jnp.ones(2), gamma=g))
        assert np.all(np.isfinite(far(jnp.array([800.0, 1e4]))))


@pytest.mark.exhaustive
def test_sigmoid_focal_bfloat16_accumulates_in_float32():
    x = build.logits((64,), dtype=jnp.float32)
    t = (x > 0.3).astype(jnp.float32)
    low = jl.sigmoid_focal_loss(x.astype(jnp.bfloat16), t.astype(jnp.bfloat16))
    want = jl.sigmoid_focal_loss(x.astype(jnp.bfloat16).astype(jnp.float32), t)
    assert low.dtype == jnp.bfloat16
    np.testing.assert_allclose(float(low), float(want), rtol=1e-2)


# --- softmax_focal_loss and poly1_cross_entropy ---------------------------------------


@pytest.mark.exhaustive
def test_softmax_focal_equals_keras_formula(x64):
    x, y, c = build.index_problem((6, 5), axis=-1, ignore_frac=0.0)
    onehot = jax.nn.one_hot(y, c)
    for gamma in (0.0, 0.5, 2.0):
        want = keras_categorical_focal(x, onehot, alpha=0.25, gamma=gamma)
        got = jl.softmax_focal_loss(x, y, gamma=gamma, alpha=0.25, reduction="none")
        np.testing.assert_allclose(got, want, rtol=1e-12)
        # Probability targets: Keras takes one-hot (or soft) labels the same way.
        got = jl.softmax_focal_loss(x, onehot, gamma=gamma, alpha=0.25, reduction="none")
        np.testing.assert_allclose(got, want, rtol=1e-12)


OPTIONS = [
    {},
    {"label_smoothing": 0.1},
    {"weight": True},
    {"weight": True, "label_smoothing": 0.2},
]


@pytest.mark.exhaustive(quick_cases=1)
@pytest.mark.parametrize("kind", ["focal", "poly1"])
@pytest.mark.parametrize("options", OPTIONS)
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_softmax_modulated_losses_follow_their_formulas(x64, kind, options, reduction):
    x, y, c = build.index_problem((4, 3, 6), axis=1, ignore_frac=0.25)
    weight = jnp.linspace(0.5, 2.0, c) if options.get("weight") else None
    eps = options.get("label_smoothing", 0.0)
    if kind == "focal":
        fn, h, param = jl.softmax_focal_loss, focal_h(0.7), {"gamma": 0.7, "alpha": weight}
    else:
        fn, h, param = jl.poly1_cross_entropy, poly_h(2.0), {"epsilon": 2.0, "weight": weight}
    moved = jnp.moveaxis(x, 1, -1)
    a = _coefficients(y, c, weight, eps)
    per = naive_modulated(moved, a, h)
    denominator = jnp.sum(_coefficients(y, c, weight)[..., :].sum(-1))
    want = {"none": per, "sum": per.sum(), "mean": per.sum() / denominator}[reduction]

    def ours(x):
        return fn(x, y, axis=1, label_smoothing=eps, reduction=reduction, **param)

    np.testing.assert_allclose(ours(x), want, rtol=1e-12, atol=1e-15)

    def naive(x):
        per = naive_modulated(jnp.moveaxis(x, 1, -1), a, h)
        return {"none": per, "sum": per.sum(), "mean": per.sum() / denominator}[reduction]

    cot = build.logits(np.shape(want), seed=4)
    np.testing.assert_allclose(
        jax.grad(lambda x: jnp.sum(ours(x) * cot))(x),
        jax.grad(lambda x: jnp.sum(naive(x) * cot))(x),
        rtol=1e-10,
        atol=1e-14,
    )
    # Not jitted: the rule's programs are those jax.grad compiled above.
    check_grads(lambda x: jnp.sum(ours(x) * cot), (x,), 1, modes=("fwd", "rev"))


@pytest.mark.exhaustive
def test_gamma_zero_and_epsilon_zero_are_cross_entropy(x64):
    x, y, c = build.index_problem((8, 5), axis=-1)
    w = jnp.linspace(0.5, 2.0, c)
    probs = build.probabilities((8, 5))
    for targets in (y, probs):
        want = jl.cross_entropy(x, targets, weight=w, label_smoothing=0.1)
        got = jl.softmax_focal_loss(x, targets, gamma=0.0, alpha=w, label_smoothing=0.1)
        np.testing.assert_allclose(got, want, rtol=1e-12)
        got = jl.poly1_cross_entropy(x, targets, epsilon=0.0, weight=w, label_smoothing=0.1)
        np.testing.assert_allclose(got, want, rtol=1e-12)
        for fn in (
            lambda x: jl.softmax_focal_loss(x, targets, gamma=0.0, alpha=w),
            lambda x: jl.poly1_cross_entropy(x, targets, epsilon=0.0, weight=w),
        ):
            np.testing.assert_allclose(
                jax.grad(fn)(x), jax.grad(lambda x: jl.cross_entropy(x, targets, weight=w))(x),
                rtol=1e-11, atol=1e-15,
            )  # fmt: skip


@pytest.mark.exhaustive
def test_probability_targets_are_differentiable(x64):
    x = build.logits((4, 5))
    t = build.probabilities((4, 5))
    for fn in (
        lambda x, t: jl.softmax_focal_loss(x, t, gamma=1.5),
        lambda x, t: jl.poly1_cross_entropy(x, t, epsilon=0.5),
    ):
        check_grads(jax.jit(fn), (x, t), 1, modes=("fwd", "rev"))


def test_softmax_focal_gradient_is_finite_for_gamma_below_one_at_certainty(x64):
    x = jnp.array([[60.0, 0.0, -5.0], [1e4, -1e4, 0.0], [-1e4, 1e4, 0.0]])
    y = jnp.array([0, 0, 0])
    for gamma in (0.1, 0.5, 0.9, 2.0):
        loss, grad = jax.value_and_grad(
            lambda x, g=gamma: jl.softmax_focal_loss(x, y, gamma=g, reduction="sum")
        )(x)
        assert np.isfinite(loss) and np.all(np.isfinite(grad)), gamma
        # Certain and right: the loss and its gradient are 0 (the exact limit).
        assert not np.any(grad[1])
        # Certain and wrong: p_y = 0, factor 1: cross-entropy's gradient p - onehot.
        np.testing.assert_allclose(grad[2], [-1.0, 1.0, 0.0], atol=1e-12)
    for fn in (jl.softmax_focal_loss, jl.poly1_cross_entropy):
        assert np.isfinite(fn(x.astype(jnp.float32), y))


@pytest.mark.exhaustive
def test_ignored_and_masked_entries(x64):
    x, y, c = build.index_problem((6, 5), axis=-1, ignore_frac=0.4)
    ignored = np.asarray(y) == -100
    assert ignored.any()
    bad = jnp.where(ignored[:, None], jnp.nan, x)
    where = jnp.arange(c) != 3
    for fn in (jl.softmax_focal_loss, jl.poly1_cross_entropy):
        value, grad = jax.value_and_grad(fn)(bad, y)
        np.testing.assert_allclose(value, fn(x, y), rtol=1e-13)
        assert np.all(np.isfinite(grad)) and not np.any(grad[ignored])
        masked = jax.grad(lambda x, f=fn: f(x, jnp.where(y == 3, 0, y), where=where))(x)
        assert not np.any(masked[:, 3])
        assert np.isnan(fn(x, y.at[0].set(c), reduction="none")[0])


@pytest.mark.exhaustive
def test_bfloat16_softmax_losses_accumulate_in_float32():
    x = build.logits((32, 10), dtype=jnp.float32)
    y = jnp.arange(32) % 10
    for fn in (jl.softmax_focal_loss, jl.poly1_cross_entropy):
        low = fn(x.astype(jnp.bfloat16), y)
        assert low.dtype == jnp.bfloat16
        want = fn(x.astype(jnp.bfloat16).astype(jnp.float32), y)
        np.testing.assert_allclose(float(low), float(want), rtol=1e-2)


def test_errors_name_their_argument():
    x, y = jnp.zeros((4, 3)), jnp.zeros(4, jnp.int32)
    with pytest.raises(ValueError, match="gamma must be >= 0"):
        jl.softmax_focal_loss(x, y, gamma=-1.0)
    with pytest.raises(ValueError, match="gamma must be >= 0"):
        jl.sigmoid_focal_loss(x, x, gamma=-0.5)
    with pytest.raises(ValueError, match="alpha must be"):
        jl.sigmoid_focal_loss(x, x, alpha=1.5)
    with pytest.raises(ValueError, match="^alpha must have shape"):
        jl.softmax_focal_loss(x, y, alpha=jnp.ones(4))
    with pytest.raises(ValueError, match="epsilon must be >= -1"):
        jl.poly1_cross_entropy(x, y, epsilon=-2.0)
    with pytest.raises(TypeError, match="targets must be floating"):
        jl.sigmoid_focal_loss(x, y[:, None] * jnp.ones((4, 3), int))
    with pytest.raises(ValueError, match="reduction must be one of"):
        jl.poly1_cross_entropy(x, y, reduction="batchmean")
    with pytest.raises(ValueError, match="pos_weight of shape"):
        jl.sigmoid_focal_loss(x, x, pos_weight=jnp.ones(5))


@pytest.mark.exhaustive
def test_sigmoid_focal_equals_optax_where_their_options_overlap(x64):
    optax = pytest.importorskip("optax")
    x = build.logits((6, 4), scale=4.0)
    t = (build.uniform((6, 4), 5) < 0.3).astype(jnp.float64)
    for alpha, gamma in ((0.25, 2.0), (None, 0.5)):
        want = optax.sigmoid_focal_loss(x, t, alpha=alpha, gamma=gamma)
        got = jl.sigmoid_focal_loss(x, t, alpha=alpha, gamma=gamma, reduction="none")
        np.testing.assert_allclose(got, want, rtol=1e-10)


def test_a_scalar_alpha_weights_every_class_alike(x64):
    x, y, _ = build.index_problem((6, 5), axis=-1)
    np.testing.assert_allclose(
        jl.softmax_focal_loss(x, y, alpha=0.5), jl.softmax_focal_loss(x, y), rtol=1e-13
    )
    np.testing.assert_allclose(
        jl.softmax_focal_loss(x, y, alpha=0.5, reduction="sum"),
        0.5 * jl.softmax_focal_loss(x, y, reduction="sum"),
        rtol=1e-13,
    )


def test_sigmoid_focal_weight_gets_the_gradient_of_the_formula(x64):
    x, t = jnp.array([0.3, -1.2, 2.0, -0.4]), jnp.array([1.0, 0.0, 1.0, 0.0])
    w = jnp.array([0.5, 1.0, 2.0, 1.5])

    def naive(w):
        p = jax.nn.sigmoid(x)
        q = 1.0 - (p * t + (1.0 - p) * (1.0 - t))
        ce = -(t * jax.nn.log_sigmoid(x) + (1.0 - t) * jax.nn.log_sigmoid(-x))
        return jnp.sum(w * (0.25 * t + 0.75 * (1.0 - t)) * q**2 * ce)

    got = jax.grad(lambda w: jl.sigmoid_focal_loss(x, t, weight=w, reduction="sum"))(w)
    np.testing.assert_allclose(got, jax.grad(naive)(w), rtol=1e-12)
    np.testing.assert_allclose(got, [0.0251, 0.0106, 0.00045, 0.0620], atol=5e-5)


def test_sigmoid_focal_second_derivative_is_finite_at_saturated_logits(x64):
    """At t = 1 and x >= 44, (1 - p_t)^2 underflows float32; the rule never divides
    by it. Reference: the loss written as exp(-gamma softplus(x)) softplus(-x), smooth
    in float64."""
    x = jnp.array([40.0, 44.0, 50.0, 80.0])

    def ours(x):
        return jl.sigmoid_focal_loss(x, jnp.ones_like(x), gamma=0.5, alpha=None, reduction="sum")

    def reference(x):
        return jnp.sum(jnp.exp(-0.5 * jax.nn.softplus(x)) * jax.nn.softplus(-x))

    want = jnp.diag(jax.hessian(reference)(x))
    got32 = jnp.diag(jax.hessian(ours)(x.astype(jnp.float32)))
    assert np.all(np.isfinite(got32))
    np.testing.assert_allclose(got32, want, rtol=1e-5, atol=1e-44)
    np.testing.assert_allclose(jnp.diag(jax.hessian(ours)(x)), want, rtol=1e-10)


def test_sigmoid_focal_infinite_logits_take_their_limits(x64):
    """Value inf where the cross-entropy is (as BCE with logits), a finite gradient:
    the saturated limit, alpha_t times (1 on the wrong side, 0 on the right one)."""
    t = jnp.array([0.0, 1.0, 1.0, 0.0])

    def f(x):
        return jl.sigmoid_focal_loss(x, t, reduction="sum")

    x = jnp.array([jnp.inf, -jnp.inf, jnp.inf, -jnp.inf])
    value, grad = jax.value_and_grad(f)(x)
    assert value == jnp.inf
    np.testing.assert_allclose(grad, jax.grad(f)(jnp.sign(x) * 800.0), atol=0)
    np.testing.assert_array_equal(grad, [0.75, -0.25, 0.0, 0.0])


def test_softmax_focal_with_a_minus_inf_target_logit_has_cross_entropys_gradient(x64):
    x, y = jnp.array([[-jnp.inf, 1.0, 0.5]]), jnp.array([0])
    ce = jax.grad(lambda x: jl.cross_entropy(x, y))(x)
    np.testing.assert_allclose(jax.grad(lambda x: jl.softmax_focal_loss(x, y, gamma=0.0))(x), ce)
    assert np.all(np.isfinite(jax.grad(lambda x: jl.softmax_focal_loss(x, y, gamma=2.0))(x)))
