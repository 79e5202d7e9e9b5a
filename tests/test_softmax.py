"""log_softmax, softmax and log_sigmoid (jaxloss/_softmax.py) against float64 references."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxloss as jl
from tests import builders as build
from tests import reference as ref


def test_log_softmax_and_softmax_match_reference(x64):
    x = 5 * build.normal((4, 7, 3), 1, jnp.float64)
    where = build.uniform((4, 7, 3), 2) < 0.7
    where = where.at[:, 0, :].set(True)
    for axis in (0, 1, -1):
        np.testing.assert_allclose(
            jl.log_softmax(x, axis=axis),
            jnp.moveaxis(ref.log_softmax(jnp.moveaxis(x, axis, -1)), -1, axis),
            rtol=1e-12,
        )
        np.testing.assert_allclose(jl.softmax(x, axis=axis).sum(axis), 1.0, rtol=1e-12)
    masked = jl.log_softmax(x, axis=1, where=where)
    want = jnp.moveaxis(ref.log_softmax(jnp.moveaxis(x, 1, -1), jnp.moveaxis(where, 1, -1)), -1, 1)
    np.testing.assert_array_equal(np.isneginf(masked), ~np.asarray(where))
    np.testing.assert_allclose(masked, want, rtol=1e-12)
    np.testing.assert_allclose(jl.softmax(x, axis=1, where=where), jnp.exp(want), rtol=1e-12)


def test_log_sigmoid_matches_reference(x64):
    x = jnp.linspace(-30, 30, 101)
    np.testing.assert_allclose(jl.log_sigmoid(x), -jnp.log1p(jnp.exp(-x)), rtol=1e-12)


def test_softmax_rows_are_the_exponential_of_log_softmax_and_are_invariant_to_shifts(x64):
    x = build.logits((6, 9), scale=5.0)
    np.testing.assert_allclose(jl.softmax(x), jnp.exp(jl.log_softmax(x)), rtol=1e-14)
    shift = 1e3 * build.logits((6, 1), seed=4)
    np.testing.assert_allclose(jl.log_softmax(x + shift), jl.log_softmax(x), atol=1e-9)
    np.testing.assert_allclose(jl.softmax(x + shift), jl.softmax(x), atol=1e-12)


@pytest.mark.parametrize("axis", [0, 1, 2, -1])
def test_softmax_gradients_are_their_closed_forms(x64, axis):
    x = build.logits((3, 4, 5), seed=3)
    cotangent = build.logits((3, 4, 5), seed=5)
    p = jl.softmax(x, axis=axis)
    _, vjp = jax.vjp(lambda v: jl.log_softmax(v, axis=axis), x)
    np.testing.assert_allclose(
        vjp(cotangent)[0], cotangent - p * cotangent.sum(axis, keepdims=True), rtol=1e-12
    )
    _, vjp = jax.vjp(lambda v: jl.softmax(v, axis=axis), x)
    np.testing.assert_allclose(
        vjp(cotangent)[0], p * (cotangent - (p * cotangent).sum(axis, keepdims=True)), rtol=1e-12
    )


def test_log_sigmoid_gradient_is_the_sigmoid_of_minus_x(x64):
    x = jnp.linspace(-40.0, 40.0, 81)
    np.testing.assert_allclose(
        jax.vmap(jax.grad(jl.log_sigmoid))(x), 1 / (1 + jnp.exp(x)), rtol=1e-12
    )


def test_zero_d_input_is_one_class_as_in_pytorch():
    torch = pytest.importorskip("torch")
    for ours, theirs in ((jl.softmax, torch.softmax), (jl.log_softmax, torch.log_softmax)):
        for value in (2.0, -jnp.inf, jnp.nan):
            got = ours(jnp.array(value))
            want = theirs(torch.tensor(value), 0).item()
            assert got.shape == ()
            np.testing.assert_array_equal(got, want)
        assert jax.grad(ours)(jnp.array(3.0)) == 0.0
