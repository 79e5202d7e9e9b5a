"""Compiled temporary bytes of value-and-gradient: deterministic, so a change of formula
that makes XLA keep an N x C temporary fails here rather than in a benchmark."""

import jax
import jax.numpy as jnp
import pytest

import jaxloss as jl

N, C = 512, 8192
LOGITS = jax.ShapeDtypeStruct((N, C), jnp.float32)
INDEX = jax.ShapeDtypeStruct((N,), jnp.int32)


def temp_fraction(fn, *args) -> float:
    """Temporary bytes as a fraction of one N x C float32 array."""
    compiled = jax.jit(jax.value_and_grad(fn)).lower(*args).compile()
    analysis = compiled.memory_analysis()
    if analysis is None:
        pytest.skip("this backend reports no memory analysis")
    return analysis.temp_size_in_bytes / (N * C * 4)


@pytest.mark.parametrize(
    "targets, options, limit",
    [
        (INDEX, {}, 0.05),
        (LOGITS, {}, 0.05),
        (INDEX, {"weight": jnp.ones(C)}, 0.05),
        # Smoothing keeps one N x C temporary today; this bounds it from growing.
        (INDEX, {"label_smoothing": 0.1}, 1.1),
        (LOGITS, {"label_smoothing": 0.1}, 1.1),
    ],
    ids=["index", "probs", "index weighted", "index smoothed", "probs smoothed"],
)
def test_cross_entropy_keeps_no_logits_sized_temporary(targets, options, limit):
    assert temp_fraction(lambda x, t: jl.cross_entropy(x, t, **options), LOGITS, targets) < limit
