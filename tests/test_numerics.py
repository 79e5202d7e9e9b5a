"""Numerical stability: huge logits, -inf and masked classes, 16-bit inputs, empty means."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxloss as jl


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


@pytest.mark.parametrize("dtype", [jnp.bfloat16, jnp.float16])
def test_low_precision_inputs_accumulate_in_float32(dtype):
    key = jax.random.key(0)
    x = (4 * jax.random.normal(key, (4096, 64))).astype(dtype)
    y = jax.random.randint(jax.random.key(1), (4096,), 0, 64)
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
