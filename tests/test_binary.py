"""binary_cross_entropy_with_logits and binary_cross_entropy (jaxloss/_binary.py) against
float64 references and their closed-form gradients."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxloss as jl
from tests import builders as build
from tests import reference as ref


def close(a, b, rtol=1e-10, atol=1e-12):
    np.testing.assert_allclose(a, b, rtol=rtol, atol=atol)


@pytest.mark.exhaustive(quick_cases=3)
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("shape", [(7,), (4, 3), (2, 3, 5)])
def test_bce_with_logits_matches_reference(x64, shape, reduction):
    x = build.logits(shape, scale=4.0)
    t = build.uniform(shape, 3, jnp.float64)
    w = build.uniform(shape, 4, jnp.float64, 0.2, 2.0)
    pw = build.uniform(shape[-1:], 5, jnp.float64, 0.5, 3.0)
    for weight, pos_weight in [(None, None), (w, None), (None, pw), (w, pw)]:
        close(
            jl.binary_cross_entropy_with_logits(
                x, t, weight=weight, pos_weight=pos_weight, reduction=reduction
            ),
            ref.bce_with_logits(x, t, weight, pos_weight, reduction),
        )


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_binary_cross_entropy_matches_reference(x64, reduction):
    p = build.uniform((3, 6), 5, jnp.float64, 0.01, 0.99)
    t = build.uniform((3, 6), 6, jnp.float64)
    w = build.uniform((3, 6), 7, jnp.float64, 0.2, 2.0)
    for weight in (None, w):
        close(
            jl.binary_cross_entropy(p, t, weight=weight, reduction=reduction),
            ref.bce(p, t, weight, reduction),
        )


def test_binary_cross_entropy_is_bce_with_logits_of_the_logit(x64):
    x = build.logits((5, 4), scale=3.0)
    t = build.uniform((5, 4), 8, jnp.float64)
    close(
        jl.binary_cross_entropy(jax.nn.sigmoid(x), t, reduction="none"),
        jl.binary_cross_entropy_with_logits(x, t, reduction="none"),
        rtol=1e-9,
    )


def test_bce_with_logits_gradient_closed_form(x64):
    x = build.logits((4, 3), scale=4.0)
    t = build.uniform((4, 3), 3, jnp.float64)
    w = build.uniform((4, 3), 4, jnp.float64)
    pw = jnp.array([0.5, 2.0, 3.0])
    got = jax.grad(jl.binary_cross_entropy_with_logits)(
        x, t, weight=w, pos_weight=pw, reduction="sum"
    )
    sig = 1 / (1 + jnp.exp(-x))
    close(got, w * ((1 + (pw - 1) * t) * sig - pw * t))


def test_binary_cross_entropy_gradient_closed_form(x64):
    p = build.uniform((10,), 5, jnp.float64, 0.01, 0.99)
    t = build.uniform((10,), 6, jnp.float64)
    got = jax.grad(jl.binary_cross_entropy)(p, t, reduction="sum")
    close(got, (p - t) / (p * (1 - p)))
