"""``hidden_whole`` is the identity wherever its partitioning rule does not apply: eagerly,
under ``jit`` on one device, under ``vmap`` and in its derivatives. What it does on many
devices is in ``tests/test_sharding.py``."""

import jax
import jax.numpy as jnp
import numpy as np

from jaxloss._fused.hidden_whole import hidden_whole


def w():
    return jnp.arange(12.0).reshape(3, 4) / 7


def test_it_returns_its_input_eagerly_and_under_jit():
    np.testing.assert_array_equal(hidden_whole(w()), w())
    np.testing.assert_array_equal(jax.jit(hidden_whole)(w()), w())
    # On one device nothing is partitioned: no custom call reaches XLA.
    assert "custom_call" not in jax.jit(hidden_whole).lower(w()).as_text()


def test_it_is_the_identity_under_vmap():
    batch = jnp.stack([w(), 2 * w()])
    np.testing.assert_array_equal(jax.vmap(hidden_whole)(batch), batch)
    np.testing.assert_array_equal(jax.vmap(hidden_whole, in_axes=1, out_axes=1)(batch), batch)


def test_its_derivatives_are_those_of_the_identity():
    f = lambda a: jnp.sum(jnp.sin(hidden_whole(a)))  # noqa: E731
    np.testing.assert_allclose(jax.grad(f)(w()), jnp.cos(w()), rtol=1e-6)
    tangent = jnp.ones_like(w())
    _, out = jax.jvp(hidden_whole, (w(),), (tangent,))
    np.testing.assert_array_equal(out, tangent)
    hessian_diag = jax.grad(lambda a: jnp.sum(jax.grad(f)(a)))(w())
    np.testing.assert_allclose(hessian_diag, -jnp.sin(w()), rtol=1e-6)
