"""Every worked example of tests/data/seed_examples.json: PyTorch's printed results."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxloss as jl
from tests.conftest import SEED_CASES, seed_cases

CASES = seed_cases()
TOL = 1e-4


def test_seed_file_names_its_source():
    assert len(CASES) >= 10
    assert "PyTorch" in json.loads(SEED_CASES.read_text())["source"]


def _inputs(case):
    if case["fn"] in ("softmax", "log_softmax"):
        return np.asarray(case["x"], np.float32), None
    targets = np.asarray(case["targets"])
    if "logits" in case:
        first = np.asarray(case["logits"], np.float32)
    elif "log_probs_of" in case:
        first = np.asarray(jl.log_softmax(jnp.array(case["log_probs_of"])))
    else:
        first = np.asarray(jax.nn.sigmoid(jnp.array(case["probs_of"])))
    return first, targets


def _call(case):
    fn = getattr(jl, case["fn"])
    first, targets = _inputs(case)
    if targets is None:
        return fn(jnp.asarray(first)), None
    kwargs = case.get("kwargs", {})
    loss_fn = lambda z: fn(z, jnp.asarray(targets), **kwargs)  # noqa: E731
    if case.get("grad") is not None:
        return jax.value_and_grad(loss_fn)(jnp.asarray(first))
    return loss_fn(jnp.asarray(first)), None


def _expected(case):
    return case.get("loss", case.get("out"))


@pytest.mark.parametrize("case", CASES, ids=[f"{i}-{c['fn']}" for i, c in enumerate(CASES)])
def test_seed_case(case):
    out, grad = _call(case)
    np.testing.assert_allclose(np.asarray(out), np.asarray(_expected(case)), atol=TOL, rtol=0)
    if case.get("grad") is not None:
        np.testing.assert_allclose(np.asarray(grad), np.asarray(case["grad"]), atol=TOL, rtol=0)


TORCH_NAMES = {"log_sigmoid": "logsigmoid"}


@pytest.mark.parametrize("case", CASES, ids=[f"{i}-{c['fn']}" for i, c in enumerate(CASES)])
def test_seed_case_is_what_pytorch_returns(case):
    """The source of the numbers: PyTorch 2.13 reproduces each printed result."""
    torch = pytest.importorskip("torch")
    fn = getattr(torch.nn.functional, TORCH_NAMES.get(case["fn"], case["fn"]))
    first, targets = _inputs(case)
    x = torch.tensor(first, requires_grad=True)
    if targets is None:
        out = fn(x, dim=-1)
    else:
        t = torch.tensor(targets)
        t = t.float() if t.is_floating_point() else t.long()
        out = fn(x, t, **case.get("kwargs", {}))
    np.testing.assert_allclose(out.detach().numpy(), np.asarray(_expected(case)), atol=TOL, rtol=0)
    if case.get("grad") is not None:
        out.backward()
        np.testing.assert_allclose(x.grad.numpy(), np.asarray(case["grad"]), atol=TOL, rtol=0)
