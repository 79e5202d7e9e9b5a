"""Numerical stability: huge logits, -inf and masked classes, 16-bit inputs, empty means."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxloss as jl
from tests import builders as build


def _finite(*arrays):
    return all(bool(jnp.all(jnp.isfinite(a))) for a in arrays)


def test_huge_float32_logits_give_exact_cross_entropy_and_gradient():
    x = jnp.array([[1e4, -1e4, 0.0], [-1e4, 1e4, 1e4]], jnp.float32)
    y = jnp.array([1, 0])
    loss, grad = jax.value_and_grad(jl.cross_entropy)(x, y, reduction="sum")
    np.testing.assert_allclose(loss, 2e4 + 2e4 + np.log(2), rtol=1e-6)
    np.testing.assert_allclose(grad, [[1, -1, 0], [-1, 0.5, 0.5]], atol=1e-6)
    smoothed = jl.cross_entropy(x, y, label_smoothing=0.1, reduction="none")
    # sum_c a_c (lse - x_c) with a = 0.9 onehot + 0.1/3, written out.
    lse = np.array([1e4, 1e4 + np.log(2)])
    want = [
        0.9 * 2e4 + 0.1 / 3 * (0 + 2e4 + 1e4),
        0.9 * (lse[1] + 1e4) + 0.1 / 3 * (lse[1] + 1e4 + 2 * np.log(2)),
    ]
    np.testing.assert_allclose(smoothed, want, rtol=1e-6)


def test_huge_logits_in_the_softmax_family():
    x = jnp.array([1e4, -1e4, 0.0])
    np.testing.assert_allclose(jl.log_softmax(x), [0.0, -2e4, -1e4], rtol=1e-7)
    np.testing.assert_allclose(jl.softmax(x), [1.0, 0.0, 0.0])
    np.testing.assert_allclose(jl.log_sigmoid(x), [0.0, -1e4, -np.log(2)], rtol=1e-7)
    assert _finite(jax.grad(lambda v: jl.log_softmax(v)[1])(x))


@pytest.mark.parametrize(
    "x, t, loss, grad",
    [
        (1e4, 0.0, 1e4, 1.0),
        (1e4, 1.0, 0.0, 0.0),
        (-1e4, 1.0, 1e4, -1.0),
        (-1e4, 0.0, 0.0, 0.0),
    ],
)
def test_bce_with_logits_is_exact_at_1e4(x, t, loss, grad):
    value, g = jax.value_and_grad(jl.binary_cross_entropy_with_logits)(
        jnp.array([x]), jnp.array([t])
    )
    np.testing.assert_allclose(value, loss, rtol=1e-7, atol=0)
    np.testing.assert_allclose(g, [grad], atol=0)


@pytest.mark.exhaustive
@pytest.mark.parametrize("dtype", [jnp.bfloat16, jnp.float16])
def test_low_precision_inputs_accumulate_in_float32(dtype):
    x = (4 * build.normal((4096, 64), 0)).astype(dtype)
    y = build.integers((4096,), 1, 0, 64)
    loss, grad = jax.value_and_grad(jl.cross_entropy)(x, y, label_smoothing=0.1)
    assert loss.dtype == dtype and grad.dtype == dtype
    loss32, grad32 = jax.value_and_grad(jl.cross_entropy)(
        x.astype(jnp.float32), y, label_smoothing=0.1
    )
    # Only the final rounding to the 16-bit dtype separates the two.
    assert loss == loss32.astype(dtype)
    np.testing.assert_allclose(
        grad.astype(jnp.float32), grad32.astype(dtype).astype(jnp.float32), rtol=0, atol=0
    )
    naive = -jnp.mean(jnp.take_along_axis(jax.nn.log_softmax(x), y[:, None], 1))
    # A 16-bit running sum drifts; ours does not.
    assert abs(float(loss) - float(loss32)) <= abs(float(naive) - float(loss32)) + 1e-3


@pytest.mark.exhaustive(quick_cases=2)
@pytest.mark.parametrize(
    "fn, args",
    [
        ("log_softmax", ((jnp.ones((2, 3)),))),
        ("softmax", ((jnp.ones((2, 3)),))),
        ("log_sigmoid", ((jnp.ones((2, 3)),))),
        ("binary_cross_entropy_with_logits", ((jnp.ones((2, 3)), jnp.full((2, 3), 0.3)))),
        ("binary_cross_entropy", ((jnp.full((2, 3), 0.6), jnp.full((2, 3), 0.3)))),
        ("kl_div", ((jnp.full((2, 3), -1.0), jnp.full((2, 3), 0.3)))),
        ("nll_loss", ((jnp.full((2, 3), -1.0), jnp.array([0, 2])))),
    ],
)
@pytest.mark.parametrize("dtype", [jnp.bfloat16, jnp.float16])
def test_every_function_returns_the_input_dtype(fn, args, dtype):
    first = args[0].astype(dtype)
    rest = tuple(a.astype(dtype) if jnp.issubdtype(a.dtype, jnp.floating) else a for a in args[1:])
    out = getattr(jl, fn)(first, *rest)
    assert out.dtype == dtype
    grad = jax.grad(lambda z: jnp.sum(getattr(jl, fn)(z, *rest)).astype(jnp.float32))(first)
    assert grad.dtype == dtype and _finite(grad)


def test_float16_logits_near_the_top_of_the_range_stay_finite():
    x = jnp.array([[6.0e4, 5.9e4, -6.0e4], [-6.0e4, 6.0e4, 6.0e4]], jnp.float16)
    y = jnp.array([1, 0])
    loss, grad = jax.value_and_grad(jl.cross_entropy)(x, y, label_smoothing=0.1)
    assert _finite(loss, grad)
    want = jl.cross_entropy(x.astype(jnp.float32), y, label_smoothing=0.1)
    np.testing.assert_allclose(float(loss), float(want), rtol=1e-3)
    # -1.2e5 is below float16's range: it rounds to -inf, as the float32 result does.
    np.testing.assert_array_equal(
        jl.log_softmax(x), jl.log_softmax(x.astype(jnp.float32)).astype(jnp.float16)
    )
    assert not np.any(np.isnan(np.asarray(jl.softmax(x), np.float32)))


def test_minus_inf_logit_gets_zero_probability_gradient_and_no_smoothing_mass():
    x = jnp.array([[2.0, -jnp.inf, 0.5, 1.0]])
    y = jnp.array([0])
    loss, grad = jax.value_and_grad(jl.cross_entropy)(x, y, label_smoothing=0.2)
    want = jl.cross_entropy(x[:, [0, 2, 3]], y, label_smoothing=0.2)
    assert _finite(loss, grad)
    np.testing.assert_allclose(loss, want, rtol=1e-6)
    assert grad[0, 1] == 0.0


def test_where_masked_classes_with_smoothing_stay_finite():
    x = jnp.array([[2.0, 5.0, 0.5], [0.1, 0.2, 0.3]])
    where = jnp.array([True, False, True])
    loss, grad = jax.value_and_grad(jl.cross_entropy)(
        x, jnp.array([0, 2]), where=where, label_smoothing=0.3
    )
    assert _finite(loss, grad)
    assert np.all(np.asarray(grad[:, 1]) == 0.0)


def test_mean_over_all_ignored_targets_is_zero_with_zero_gradient():
    x = jnp.ones((3, 4))
    y = jnp.full((3,), -100)
    for fn in (jl.cross_entropy, jl.nll_loss):
        loss, grad = jax.value_and_grad(fn)(x, y)
        assert loss == 0.0 and np.all(np.asarray(grad) == 0.0)
    weight = jnp.array([0.0, 1.0, 1.0, 1.0])
    loss, grad = jax.value_and_grad(jl.cross_entropy)(x, jnp.zeros(3, int), weight=weight)
    assert loss == 0.0 and np.all(np.asarray(grad) == 0.0)


def test_out_of_range_index_gives_nan_for_that_element_only():
    x = jnp.zeros((3, 4))
    per = jl.cross_entropy(x, jnp.array([1, 4, -3]), reduction="none")
    assert np.isfinite(per[0]) and np.isnan(per[1]) and np.isnan(per[2])
    assert np.isnan(jl.cross_entropy(x, jnp.array([1, 4, 0])))
    grad = jax.grad(lambda v: jl.cross_entropy(v, jnp.array([1, 7, 0]), reduction="sum"))(x)
    assert np.all(np.isnan(np.asarray(grad[1]))) and _finite(grad[0], grad[2])
    assert np.isnan(jl.nll_loss(x, jnp.array([1, 4, 0]), reduction="none")[1])


def test_binary_cross_entropy_at_zero_and_one_is_clamped_and_finite():
    p = jnp.array([0.0, 1.0, 0.0, 1.0])
    t = jnp.array([1.0, 0.0, 0.0, 1.0])
    loss = jl.binary_cross_entropy(p, t, reduction="none")
    np.testing.assert_allclose(loss, [100.0, 100.0, 0.0, 0.0])
    grad = jax.grad(lambda q: jl.binary_cross_entropy(q, t, reduction="sum"))(p)
    assert _finite(grad)


def test_kl_div_with_zero_targets_is_finite():
    log_q = jnp.array([[-jnp.inf, -0.1, -2.0]])
    t = jnp.array([[0.0, 0.9, 0.1]])
    loss, (g_in, g_t) = jax.value_and_grad(jl.kl_div, argnums=(0, 1))(log_q, t, reduction="sum")
    assert _finite(loss, g_t)
    assert g_in[0, 0] == 0.0 and g_t[0, 0] == 0.0


@pytest.mark.exhaustive
def test_probability_targets_with_masked_classes_stay_finite():
    x = jnp.array([[2.0, -jnp.inf, 0.5, 1.0], [0.1, 0.2, 0.3, 0.4]])
    where = jnp.array([True, True, True, False])
    t = jnp.array([[0.5, 0.0, 0.5, 0.0], [0.2, 0.3, 0.5, 0.0]])
    loss, grad = jax.value_and_grad(jl.cross_entropy)(x, t, where=where, label_smoothing=0.1)
    assert _finite(loss, grad)
    want = jnp.mean(
        jnp.array(
            [
                jl.cross_entropy(
                    x[0, jnp.array([0, 2])], t[0, jnp.array([0, 2])], label_smoothing=0.1
                ),
                jl.cross_entropy(x[1, :3], t[1, :3], label_smoothing=0.1),
            ]
        )
    )
    np.testing.assert_allclose(loss, want, rtol=1e-6)
    assert grad[0, 1] == 0.0 and np.all(np.asarray(grad[:, 3]) == 0.0)
    per_row = jax.vmap(lambda a, b: jl.cross_entropy(a, b, where=where, label_smoothing=0.1))(x, t)
    np.testing.assert_allclose(per_row.mean(), want, rtol=1e-6)


# --- Edges: each has a stated answer (docs/pytorch.md lists where PyTorch differs). ---

EMPTY_CASES = [
    ("cross_entropy, index", lambda r: jl.cross_entropy(jnp.zeros((0, 3)), jnp.zeros(0, int), **r)),
    ("cross_entropy, probs", lambda r: jl.cross_entropy(jnp.zeros((0, 3)), jnp.zeros((0, 3)), **r)),
    ("nll_loss", lambda r: jl.nll_loss(jnp.zeros((0, 3)), jnp.zeros(0, int), **r)),
    (
        "bce with logits",
        lambda r: jl.binary_cross_entropy_with_logits(jnp.zeros(0), jnp.zeros(0), **r),
    ),
    ("bce", lambda r: jl.binary_cross_entropy(jnp.zeros(0), jnp.zeros(0), **r)),
    ("kl_div", lambda r: jl.kl_div(jnp.zeros((0, 3)), jnp.zeros((0, 3)), **r)),
    (
        "linear_cross_entropy",
        lambda r: jl.linear_cross_entropy(
            jnp.zeros((0, 4)), jnp.ones((4, 3)), jnp.zeros(0, int), **r
        ),
    ),
]


@pytest.mark.exhaustive(quick_cases=2)
@pytest.mark.parametrize("call", [c[1] for c in EMPTY_CASES], ids=[c[0] for c in EMPTY_CASES])
def test_a_batch_of_zero_elements_has_mean_and_sum_zero_and_an_empty_none(call):
    assert call({"reduction": "mean"}) == 0.0
    assert call({"reduction": "sum"}) == 0.0
    assert call({"reduction": "none"}).size == 0


def test_an_empty_batch_has_an_empty_gradient_and_kl_batchmean_zero():
    grad = jax.grad(jl.cross_entropy)(jnp.zeros((0, 3)), jnp.zeros(0, int))
    assert grad.shape == (0, 3)
    assert jl.kl_div(jnp.zeros((0, 3)), jnp.zeros((0, 3)), reduction="batchmean") == 0.0
    assert jl.log_softmax(jnp.zeros((0, 3))).shape == (0, 3)


@pytest.mark.exhaustive
def test_a_plus_inf_logit_makes_its_row_nan_in_every_softmax_loss():
    x = jnp.array([[jnp.inf, 0.0, 1.0], [0.5, jnp.inf, 1.0], [0.0, 1.0, 2.0]])
    y = jnp.array([0, 2, 1])
    t = jax.nn.softmax(jnp.ones((3, 3)))
    for per in (
        jl.cross_entropy(x, y, reduction="none"),
        jl.cross_entropy(x, y, label_smoothing=0.1, reduction="none"),
        jl.cross_entropy(x, t, reduction="none"),
        jl.nll_loss(jl.log_softmax(x), y, reduction="none"),
    ):
        np.testing.assert_array_equal(np.isnan(per), [True, True, False])
    grad = jax.grad(lambda v: jl.cross_entropy(v, y, reduction="sum"))(x)
    assert np.all(np.isnan(grad[:2])) and np.all(np.isfinite(grad[2]))
    # logits that overflow inside linear_cross_entropy's matmul do the same
    h = jnp.array([[1e30, 0.0], [0.1, 0.2]])
    w = jnp.array([[1e10, -1e10, 0.0], [1.0, 2.0, 3.0]])
    per = jl.linear_cross_entropy(h, w, jnp.array([0, 1]), reduction="none")
    np.testing.assert_array_equal(np.isnan(per), [True, False])


def test_log_sigmoid_and_bce_with_logits_take_their_limits_at_infinity():
    x = jnp.array([jnp.inf, -jnp.inf, jnp.inf, -jnp.inf])
    np.testing.assert_array_equal(jl.log_sigmoid(x[:2]), [0.0, -jnp.inf])
    per = jl.binary_cross_entropy_with_logits(x, jnp.array([1.0, 0.0, 0.0, 1.0]), reduction="none")
    np.testing.assert_array_equal(per, [0.0, 0.0, jnp.inf, jnp.inf])
    soft = jl.binary_cross_entropy_with_logits(x[:1], jnp.array([0.5]), reduction="none")
    assert soft[0] == jnp.inf


def test_kl_div_of_a_negative_or_nan_target_is_nan():
    log_q = jnp.log(jnp.array([0.2, 0.3, 0.5]))
    per = jl.kl_div(log_q, jnp.array([-0.1, jnp.nan, 0.5]), reduction="none")
    assert np.isnan(per[0]) and np.isnan(per[1]) and np.isfinite(per[2])
    # with log_target any real target is a log-probability
    assert np.all(np.isfinite(jl.kl_div(log_q, jnp.array([-3.0, 0.0, 2.0]), log_target=True)))


def test_binary_cross_entropy_outside_the_unit_interval_is_nan():
    probs = jnp.array([0.3, 0.3, 1.5, -0.5, 0.3])
    targets = jnp.array([1.5, -0.5, 1.0, 0.0, 1.0])
    per = jl.binary_cross_entropy(probs, targets, reduction="none")
    np.testing.assert_array_equal(np.isnan(per), [True, True, True, True, False])
    grad = jax.grad(lambda p: jl.binary_cross_entropy(p, targets, reduction="sum"))(probs)
    np.testing.assert_array_equal(np.isnan(grad), [True, True, True, True, False])


def test_float16_element_losses_beyond_the_range_are_inf_and_the_mean_is_rounded_once():
    x = jnp.array([[6e4, -6e4, 0.0], [0.0, 0.0, 0.0]], jnp.float16)
    y = jnp.array([1, 0])
    per = jl.cross_entropy(x, y, reduction="none")
    assert per.dtype == jnp.float16 and per[0] == jnp.inf and np.isfinite(per[1])
    mean = jl.cross_entropy(x, y)
    np.testing.assert_allclose(float(mean), (1.2e5 + np.log(3)) / 2, rtol=1e-3)
    assert jl.cross_entropy(x, y, reduction="sum") == jnp.inf  # 1.2e5 does not fit


def test_log_softmax_gradient_where_a_finite_input_overflows_to_minus_inf():
    x = jnp.array([3e38, -3e38], jnp.float32)
    assert jl.log_softmax(x)[1] == -jnp.inf
    np.testing.assert_array_equal(jax.grad(lambda v: jl.log_softmax(v)[1])(x), [-1.0, 1.0])
    # a -inf input (a masked class) stays constant: tangent 0
    masked = jnp.array([0.0, -jnp.inf, 1.0])
    assert jax.grad(lambda v: jl.log_softmax(v)[2])(masked)[1] == 0.0


def test_a_row_with_every_class_masked():
    where = jnp.array([[False, False, False], [True, True, True]])
    x = jnp.ones((2, 3))
    # index targets: no class can be predicted, so the element is nan (unless ignored)
    per = jl.cross_entropy(x, jnp.array([0, 1]), where=where, reduction="none")
    assert np.isnan(per[0]) and np.isfinite(per[1])
    ignored = jl.cross_entropy(x, jnp.array([-100, 1]), where=where, reduction="none")
    assert ignored[0] == 0.0
    # probability targets of zeros on such a row add nothing
    t = jnp.array([[0.0, 0.0, 0.0], [0.2, 0.3, 0.5]])
    per = jl.cross_entropy(x, t, where=where, reduction="none")
    assert per[0] == 0.0 and np.isfinite(per[1])


def test_probability_mass_on_a_class_of_probability_zero_is_a_huge_loss():
    x = jnp.array([[-jnp.inf, 0.0, 1.0]])
    per = jl.cross_entropy(x, jnp.array([[0.5, 0.5, 0.0]]), reduction="none")
    assert per[0] >= 0.5 * np.finfo(np.float32).max
