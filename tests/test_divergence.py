"""kl_div (jaxloss/_divergence.py) against float64 references and its closed-form gradients."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxloss as jl
from tests import builders as build
from tests import reference as ref


def close(a, b, rtol=1e-10, atol=1e-12):
    np.testing.assert_allclose(a, b, rtol=rtol, atol=atol)


@pytest.mark.exhaustive(quick_cases=4)
@pytest.mark.parametrize("reduction", ["mean", "sum", "none", "batchmean"])
@pytest.mark.parametrize("log_target", [False, True])
@pytest.mark.parametrize("shape", [(3, 4), (2, 3, 5)])
def test_kl_div_matches_reference(x64, shape, reduction, log_target):
    log_q = jl.log_softmax(build.logits(shape))
    t = build.probabilities(shape)
    target = jnp.log(t) if log_target else t
    close(
        jl.kl_div(log_q, target, reduction=reduction, log_target=log_target),
        ref.kl_div(log_q, target, reduction, log_target),
    )


def test_kl_div_of_a_distribution_with_itself_is_zero_and_otherwise_positive(x64):
    t = build.probabilities((4, 6))
    close(jl.kl_div(jnp.log(t), t, reduction="none"), jnp.zeros((4, 6)), atol=1e-15)
    log_q = jl.log_softmax(build.logits((4, 6)))
    per_row = jl.kl_div(log_q, t, reduction="none").sum(-1)
    assert np.all(np.asarray(per_row) > 0)


def test_kl_div_gradients_closed_form(x64):
    log_q = jl.log_softmax(build.logits((3, 4)))
    t = build.probabilities((3, 4))
    g_in, g_t = jax.grad(jl.kl_div, argnums=(0, 1))(log_q, t, reduction="sum")
    close(g_in, -t)
    close(g_t, jnp.log(t) + 1 - log_q)
