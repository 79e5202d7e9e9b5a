"""Every worked example of ../shared/cases/seed_examples.json (PyTorch's printed results)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxloss as jl
from tests.conftest import SHARED, seed_cases

CASES = seed_cases()
TOL = 1e-4


def test_seed_file_is_present_and_nonempty():
    assert (SHARED / "cases" / "seed_examples.json").exists()
    assert len(CASES) >= 10


def _call(case):
    fn = getattr(jl, case["fn"])
    kwargs = case.get("kwargs", {})
    if case["fn"] in ("softmax", "log_softmax"):
        return fn(jnp.array(case["x"])), None
    targets = jnp.array(case["targets"])
    if "logits" in case:
        first = jnp.array(case["logits"])
    elif "log_probs_of" in case:
        first = jl.log_softmax(jnp.array(case["log_probs_of"]))
    else:
        first = jax.nn.sigmoid(jnp.array(case["probs_of"]))
    loss_fn = lambda z: fn(z, targets, **kwargs)  # noqa: E731
    if case.get("grad") is not None:
        return jax.value_and_grad(loss_fn)(first)
    return loss_fn(first), None


@pytest.mark.parametrize("case", CASES, ids=[f"{i}-{c['fn']}" for i, c in enumerate(CASES)])
def test_seed_case(case):
    out, grad = _call(case)
    expected = case.get("loss", case.get("out"))
    np.testing.assert_allclose(np.asarray(out), np.asarray(expected), atol=TOL, rtol=0)
    if case.get("grad") is not None:
        np.testing.assert_allclose(np.asarray(grad), np.asarray(case["grad"]), atol=TOL, rtol=0)
