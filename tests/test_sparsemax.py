"""``sparsemax`` and its losses: float64 against a bisection reference, optax's
projection and losses, the Jacobian formula, finite differences to second order, edges
(-inf, nan, +inf, extreme scores), low precision and errors."""

import re

import hypothesis
import hypothesis.strategies as st
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads

import jaxloss as jl

SETTINGS = hypothesis.settings(max_examples=10, deadline=None, derandomize=True)


def _bisection_sparsemax(x):
    """The projection of each row of ``x`` (classes last) by bisection on the threshold:
    sum(max(x - tau, 0)) = 1 is decreasing in tau."""
    low = x.max(-1, keepdims=True) - 1.0
    high = x.max(-1, keepdims=True)
    for _ in range(200):
        mid = (low + high) / 2
        above = np.maximum(x - mid, 0).sum(-1, keepdims=True) > 1
        low, high = np.where(above, mid, low), np.where(above, high, mid)
    return np.maximum(x - (low + high) / 2, 0)


def _scores(rng, shape):
    # Distinct scores on a grid, so that none sits within rounding of the threshold.
    return rng.permutation(int(np.prod(shape))).reshape(shape) * 0.173 + 0.0117


@pytest.mark.exhaustive
@SETTINGS
@hypothesis.given(
    seed=st.integers(0, 2**16),
    shape=st.sampled_from([(5,), (3, 4), (2, 3, 6), (1, 1)]),
    axis=st.integers(-3, 2),
    scale=st.sampled_from([0.01, 0.3, 3.0]),
)
def test_sparsemax_is_the_projection_onto_the_simplex(seed, shape, axis, scale):
    hypothesis.assume(-len(shape) <= axis < len(shape))
    rng = np.random.default_rng(seed)
    x = _scores(rng, shape) * scale
    with jax.enable_x64(True):
        got = np.asarray(jl.sparsemax(jnp.asarray(x), axis=axis))
        shifted = np.asarray(jl.sparsemax(jnp.asarray(x + 1e3), axis=axis))
    want = np.moveaxis(_bisection_sparsemax(np.moveaxis(x, axis, -1)), -1, axis)
    np.testing.assert_allclose(got, want, atol=1e-12)
    np.testing.assert_allclose(shifted, got, atol=1e-11)  # offset invariance
    np.testing.assert_allclose(got.sum(axis), 1.0, rtol=1e-13)


def test_sparsemax_matches_optax_and_its_jacobian_the_formula(x64):
    optax = pytest.importorskip("optax")
    x = jnp.asarray(_scores(np.random.default_rng(0), (4, 6)) * 0.2)
    p = jl.sparsemax(x)
    np.testing.assert_allclose(p, jax.vmap(optax.projections.projection_simplex)(x), atol=1e-12)
    for row in range(4):
        support = np.asarray(p[row] > 0)
        want = np.diag(support * 1.0) - np.outer(support, support) / support.sum()
        np.testing.assert_allclose(jax.jacobian(jl.sparsemax)(x[row]), want, atol=1e-14)
        np.testing.assert_allclose(jax.jacfwd(jl.sparsemax)(x[row]), want, atol=1e-14)


@pytest.mark.exhaustive
@pytest.mark.parametrize(
    "name",
    ["sparsemax", "sparsemax_loss", "sparsemax_loss soft", "multiclass_sparsemax_loss"],
)
def test_second_derivatives_against_finite_differences(x64, name):
    rng = np.random.default_rng(1)
    x = jnp.asarray(_scores(rng, (3, 5)) * 0.2 - 1.3)
    t = jnp.asarray(rng.uniform(size=(3, 5)))
    fns = {
        "sparsemax": lambda x: jl.sparsemax(x) * jnp.arange(1.0, 6.0),
        "sparsemax_loss": lambda x: jl.sparsemax_loss(x, t > 0.5),
        "sparsemax_loss soft": lambda x: jl.sparsemax_loss(x, t),
        "multiclass_sparsemax_loss": lambda x: jl.multiclass_sparsemax_loss(
            x, jnp.array([0, 4, 2])
        ),
    }
    check_grads(jax.jit(fns[name]), (x,), order=2, modes=("fwd", "rev"), eps=1e-5)


@pytest.mark.exhaustive(quick_cases=1)
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_losses_match_optax(x64, seed):
    optax = pytest.importorskip("optax")
    rng = np.random.default_rng(seed)
    x = jnp.asarray(_scores(rng, (6, 5)) * 0.3 - 4.0)
    labels = jnp.asarray(rng.integers(0, 5, size=6))
    binary = jnp.asarray(rng.integers(0, 2, size=(6, 5)))
    pairs = [
        (lambda x: jl.sparsemax_loss(x, binary, reduction="none"),
         lambda x: optax.losses.sparsemax_loss(x, binary)),
        (lambda x: jl.multiclass_sparsemax_loss(x, labels, reduction="none"),
         lambda x: optax.losses.multiclass_sparsemax_loss(x, labels)),
    ]  # fmt: skip
    for ours, theirs in pairs:
        np.testing.assert_allclose(ours(x), theirs(x), atol=1e-12)
        got, want = jax.grad(_weighted(ours))(x), jax.grad(_weighted(theirs))(x)
        np.testing.assert_allclose(got, want, atol=1e-12)


def _weighted(loss):
    """The sum of ``loss``'s outputs, each with its own weight (a cotangent that differs
    per element)."""

    def total(x):
        values = loss(x)
        return jnp.sum(values * jnp.arange(1.0, 1.0 + values.size).reshape(values.shape))

    return total


def test_loss_gradients_are_the_fenchel_young_residuals(x64):
    rng = np.random.default_rng(3)
    x = jnp.asarray(_scores(rng, (4, 5)) * 0.3 - 3.0)
    labels, t = jnp.array([0, 1, 4, 2]), jnp.asarray(rng.uniform(size=(4, 5)))
    grad = jax.grad(lambda x: jl.multiclass_sparsemax_loss(x, labels, reduction="sum"))(x)
    np.testing.assert_allclose(grad, jl.sparsemax(x) - jax.nn.one_hot(labels, 5), atol=1e-14)
    grad = jax.grad(lambda x: jl.sparsemax_loss(x, t, reduction="sum"))(x)
    np.testing.assert_allclose(grad, jnp.clip((x + 1) / 2, 0, 1) - t, atol=1e-14)
    # The loss is 0 when the target leads by at least 1, and positive otherwise.
    lead = jnp.array([[3.0, 1.5, 2.0], [3.0, 2.5, 0.0]])
    np.testing.assert_allclose(
        jl.multiclass_sparsemax_loss(lead, jnp.array([0, 0]), reduction="none")[0], 0.0
    )
    assert jl.multiclass_sparsemax_loss(lead, jnp.array([0, 0]), reduction="none")[1] > 0


@pytest.mark.exhaustive
def test_edges_minus_inf_nan_and_extreme_scores():
    rows = jnp.array(
        [[-jnp.inf, 0.0, 1.0], [jnp.nan, 0.0, 1.0], [-jnp.inf] * 3, [jnp.inf, 0.0, 1.0]]
    )
    p = jl.sparsemax(rows)
    np.testing.assert_array_equal(p[0], [0.0, 0.0, 1.0])
    assert np.all(np.isnan(p[1:]))
    grad = jax.grad(lambda x: jnp.sum(jl.sparsemax(x) * jnp.arange(3.0)))(rows[:1])
    np.testing.assert_array_equal(grad, [[0.0, 0.0, 0.0]])
    x = jnp.array([[1e4, -1e4, 1e4 - 0.5], [-1e4, -1e4, -1e4]])
    np.testing.assert_allclose(jl.sparsemax(x), [[0.75, 0.0, 0.25], [1 / 3] * 3], rtol=1e-6)
    for fn, target in [
        (jl.multiclass_sparsemax_loss, jnp.array([1, 0])),
        (jl.sparsemax_loss, x > 0),
    ]:
        value, grad = jax.value_and_grad(fn)(x, target)
        assert np.isfinite(value) and np.all(np.isfinite(grad))
    loss = jl.multiclass_sparsemax_loss(x, jnp.array([3, -1]), reduction="none")
    assert np.all(np.isnan(loss))


@pytest.mark.exhaustive
@pytest.mark.parametrize("dtype", [jnp.bfloat16, jnp.float16])
def test_low_precision_is_computed_in_float32(dtype):
    rng = np.random.default_rng(4)
    x = jnp.asarray(_scores(rng, (3, 5)) * 0.3 - 2.0, dtype)
    labels = jnp.array([0, 2, 4])
    cases = [
        lambda x: jnp.sum(jl.sparsemax(x) * jnp.arange(5.0, dtype=x.dtype)),
        lambda x: jl.sparsemax_loss(x, labels[:, None] == jnp.arange(5)),
        lambda x: jl.multiclass_sparsemax_loss(x, labels),
    ]
    for fn in cases:
        value, grad = jax.value_and_grad(fn)(x)
        want, want_grad = jax.value_and_grad(fn)(x.astype(jnp.float32))
        assert grad.dtype == dtype
        eps = float(jnp.finfo(dtype).eps)
        np.testing.assert_allclose(np.float32(value), want, rtol=2 * eps, atol=eps)
        np.testing.assert_allclose(np.float32(grad), want_grad, atol=eps)


X = np.zeros((2, 3), np.float32)
BAD_CALLS = [
    (lambda: jl.sparsemax(X.astype(int)), TypeError, "x must have a floating"),
    (lambda: jl.sparsemax(X, axis=2), ValueError, "axis 2 is out of bounds"),
    (lambda: jl.sparsemax(X[:, :0]), ValueError, "x must have at least one class"),
    (lambda: jl.sparsemax_loss(X, X[0]), ValueError, "targets must have the logits' shape"),
    (lambda: jl.multiclass_sparsemax_loss(X, X[:, 0]), TypeError, "labels must hold integer"),
    (
        lambda: jl.multiclass_sparsemax_loss(X, np.zeros(3, int)),
        ValueError,
        "labels must have shape (2,)",
    ),
    (
        lambda: jl.multiclass_sparsemax_loss(X, np.zeros(2, int), reduction="x"),
        ValueError,
        "reduction",
    ),
]


@pytest.mark.parametrize("index", range(len(BAD_CALLS)))
def test_bad_arguments_raise_naming_them(index):
    call, error, message = BAD_CALLS[index]
    with pytest.raises(error, match=re.escape(message)):
        call()


def test_sparsemax_loss_at_infinite_logits_matches_optax(x64):
    optax = pytest.importorskip("optax")
    x, t = jnp.array([jnp.inf, -jnp.inf]), jnp.array([1.0, 0.0])
    value, grad = jax.value_and_grad(lambda x: jl.sparsemax_loss(x, t, reduction="sum"))(x)
    np.testing.assert_array_equal(value, jnp.sum(optax.losses.sparsemax_loss(x, t)))
    np.testing.assert_array_equal(grad, [0.0, 0.0])


def test_sparsemax_of_a_nan_row_has_a_nan_jacobian():
    # Forward mode: in reverse mode a nan block of the Jacobian times a zero cotangent
    # is nan (IEEE), which reaches the other rows as it does for any nan Jacobian.
    jacobian = jax.jacfwd(jl.sparsemax)(jnp.array([[jnp.nan, 0.5, 0.2], [1.0, 0.8, -1.0]]))
    assert np.all(np.isnan(jacobian[0, :, 0, :]))
    np.testing.assert_allclose(jacobian[1, :, 1, :], [[0.5, -0.5, 0], [-0.5, 0.5, 0], [0, 0, 0]])
    assert np.all(jacobian[1, :, 0, :] == 0)
