"""linear_log_probs against the log-probabilities and entropies of the written-out
logits, for any cotangents on both outputs."""

import pathlib
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from jax.test_util import check_grads

import jaxloss as jl
from tests import builders as build
from tests import reference as ref


def naive(x, w, y, bias=None, temperature=1.0, vocab_size=None):
    """Both outputs from the formulas, over the N x V logits (float64 in the tests)."""
    z = x @ w if bias is None else x @ w + bias
    columns = jnp.arange(w.shape[1])
    in_use = None if vocab_size is None else columns < vocab_size
    log_p = ref.log_softmax(z / temperature, where=in_use)
    p = jnp.exp(log_p)
    keep = y != -100
    target = jnp.sum(jnp.where(y[..., None] == columns, log_p, 0.0), axis=-1)
    # Inner where: the gradient of p log p at p = 0 would be 0 * inf = nan.
    entropy = -jnp.sum(jnp.where(p > 0, p * jnp.where(p > 0, log_p, 0.0), 0.0), axis=-1)
    return jnp.where(keep, target, 0.0), jnp.where(keep, entropy, 0.0)


def _pairs(fused, want, rtol=1e-10, atol=1e-12):
    for got, expected in zip(fused, want, strict=True):
        np.testing.assert_allclose(got, expected, rtol=rtol, atol=atol)


def _objective(fn, a, e):
    """``sum(a * log_probs + e * entropy)``: a policy-gradient loss's shape."""

    def objective(*args):
        log_probs, entropy = fn(*args)
        return jnp.sum(a * log_probs) + jnp.sum(e * entropy)

    return objective


@pytest.mark.exhaustive
@settings(max_examples=12, deadline=None, derandomize=True)
@given(
    n=st.integers(1, 40),
    v=st.integers(2, 300),
    temperature=st.sampled_from([0.5, 1.0, 2.5]),
    chunk_size=st.sampled_from([None, 1, 8]),
    vocab_chunk_size=st.sampled_from([None, 7, 128]),
    seed=st.integers(0, 2**16),
)
def test_values_and_gradients_for_random_cotangents(
    n, v, temperature, chunk_size, vocab_chunk_size, seed
):
    """Any token count, vocabulary, temperature, chunking (with a vocabulary tail):
    the values, and the gradients of x, w and bias for random cotangents on both."""
    with jax.enable_x64(True):
        _check_random_cotangents(n, v, temperature, chunk_size, vocab_chunk_size, seed)


@pytest.mark.parametrize("v,vocab_chunk_size", [(40, None), (300, 128)])
def test_values_and_gradients_for_two_cotangents(x64, v, vocab_chunk_size):
    """The quick tier's two cases of the property: one vocabulary step, and two steps
    of 128 columns with a tail of 44."""
    _check_random_cotangents(17, v, 1.5, 4, vocab_chunk_size, 11)


def _check_random_cotangents(n, v, temperature, chunk_size, vocab_chunk_size, seed):
    x, w, b, y = build.linear_problem(n=n, h=5, v=v, seed=seed)
    a, e = build.normal((n,), seed + 1), build.normal((n,), seed + 2)

    def fused(x, w, b):
        return jl.linear_log_probs(
            x, w, y, bias=b, temperature=temperature, chunk_size=chunk_size,
            vocab_chunk_size=vocab_chunk_size,
        )  # fmt: skip

    def written_out(x, w, b):
        return naive(x, w, y, b, temperature)

    _pairs(fused(x, w, b), written_out(x, w, b))
    grads = jax.grad(_objective(fused, a, e), argnums=(0, 1, 2))(x, w, b)
    want = jax.grad(_objective(written_out, a, e), argnums=(0, 1, 2))(x, w, b)
    _pairs(grads, want)


def test_forward_mode_and_second_order(x64):
    x, w, b, y = build.linear_problem(n=12, h=4, v=40, seed=3)
    tangents = (build.normal(x.shape, 4), build.normal(w.shape, 5), build.normal(b.shape, 6))

    def fused(x, w, b):
        return jl.linear_log_probs(x, w, y, bias=b, temperature=1.5, chunk_size=4)

    got = jax.jvp(fused, (x, w, b), tangents)
    want = jax.jvp(lambda x, w, b: naive(x, w, y, b, 1.5), (x, w, b), tangents)
    _pairs(got[0], want[0])
    _pairs(got[1], want[1])
    check_grads(fused, (x, w, b), order=2, modes=("fwd", "rev"))


def test_the_worked_example_of_the_docstring(x64):
    """Both outputs by hand for one token: logits (1, 2, 0) at T = 1."""
    log_probs, entropy = jl.linear_log_probs(
        jnp.array([[1.0, 0.0]]), jnp.array([[1.0, 2.0, 0.0], [0.0, 0.0, 0.0]]), jnp.array([1])
    )
    total = np.exp(1.0) + np.exp(2.0) + 1.0
    p = np.array([np.exp(1.0), np.exp(2.0), 1.0]) / total
    np.testing.assert_allclose(log_probs, [2.0 - np.log(total)], rtol=1e-14)
    np.testing.assert_allclose(entropy, [-np.sum(p * np.log(p))], rtol=1e-14)


def test_ignored_and_out_of_range_tokens(x64):
    """An ignored token: 0 for both, and no gradient even from a nan hidden state. A
    target outside the vocabulary: nan for both, and a nan gradient in its row only."""
    x, w, b, _ = build.linear_problem(n=6, h=4, v=9, seed=1)
    y = jnp.array([-100, 9, 2, 0, 8, 3])
    x = x.at[0].set(jnp.nan)
    log_probs, entropy = jl.linear_log_probs(x, w, y, bias=b)
    assert log_probs[0] == 0 and entropy[0] == 0
    assert np.isnan(log_probs[1]) and np.isnan(entropy[1])
    assert np.all(np.isfinite(log_probs[2:])) and np.all(np.isfinite(entropy[2:]))
    for a, e in [(1.0, 0.5), (0.0, 1.0)]:  # the entropy's gradient alone too
        objective = _objective(lambda x: jl.linear_log_probs(x, w, y, bias=b), a, e)
        grad = jax.grad(objective)(x)
        assert np.all(grad[0] == 0)
        assert np.all(np.isnan(grad[1])) and np.all(np.isfinite(grad[2:]))


def test_minus_infinite_bias_columns_and_a_padded_vocabulary(x64):
    """Columns of probability 0 (a -inf bias, or past vocab_size) add nothing to the
    entropy and get no gradient; the values equal the written-out ones."""
    x, w, b, y = build.linear_problem(n=10, h=4, v=12, seed=2)
    y = jnp.where(y >= 9, 0, y)
    b = b.at[9:].set(-jnp.inf)
    a, e = build.normal((10,), 3), build.normal((10,), 4)
    cases = {
        "bias": (lambda x, w: jl.linear_log_probs(x, w, y, bias=b), lambda x, w: naive(x, w, y, b)),
        "vocab_size": (
            lambda x, w: jl.linear_log_probs(x, w, y, vocab_size=9),
            lambda x, w: naive(x, w, y, vocab_size=9),
        ),
    }
    for name, (fused, written_out) in cases.items():
        _pairs(fused(x, w), written_out(x, w))
        check_grads(fused, (x, w), order=2, modes=("fwd", "rev"))
        grads = jax.grad(_objective(fused, a, e), argnums=(0, 1))(x, w)
        want = jax.grad(_objective(written_out, a, e), argnums=(0, 1))(x, w)
        _pairs(grads, want)
        assert np.all(grads[1][:, 9:] == 0), name


def test_bfloat16_weights_accumulate_in_float32(x64):
    """bfloat16 inputs: outputs in bfloat16, equal to the float64 values of the same
    rounded inputs to bfloat16's precision; gradients likewise."""
    x, w, b, y = build.linear_problem(n=16, h=8, v=50, seed=4, dtype=jnp.bfloat16)
    log_probs, entropy = jl.linear_log_probs(x, w, y, bias=b)
    assert log_probs.dtype == entropy.dtype == jnp.bfloat16
    exact = [a.astype(jnp.float64) for a in (x, w, b)]
    want = naive(*exact[:2], y, exact[2])
    _pairs([log_probs.astype(jnp.float64), entropy.astype(jnp.float64)], want, 2e-2, 2e-2)
    a = build.normal((16,), 5)
    grad = jax.grad(_objective(lambda w: jl.linear_log_probs(x, w, y, bias=b), a, 0.1))(w)
    want_grad = jax.grad(_objective(lambda w: naive(exact[0], w, y, exact[2]), a, 0.1))(exact[1])
    assert grad.dtype == jnp.bfloat16
    scale = float(jnp.max(jnp.abs(want_grad)))
    np.testing.assert_allclose(grad.astype(jnp.float64), want_grad, atol=3e-2 * scale)


def test_vmap_equals_each_example(x64):
    x, w, b, y = build.linear_problem(n=10, h=4, v=30, seed=6, batch=3)
    a = build.normal(y.shape, 7)

    def one(x, y, a):
        return _objective(lambda x, w: jl.linear_log_probs(x, w, y, chunk_size=4), a, 0.2)(x, w)

    batched = jax.vmap(jax.value_and_grad(one))(x, y, a)
    for i in range(3):
        value, grad = jax.value_and_grad(one)(x[i], y[i], a[i])
        np.testing.assert_allclose(batched[0][i], value, rtol=1e-12)
        np.testing.assert_allclose(batched[1][i], grad, rtol=1e-12, atol=1e-14)


def _temp_bytes(fn, *shapes):
    return jax.jit(fn).lower(*shapes).compile().memory_analysis().temp_size_in_bytes


def _grad_programs(n, h, v):
    """The value and gradients of ``sum(a log_probs) + 0.01 sum(entropy)``, fused and
    written out, and their argument shapes."""
    y, a = jnp.zeros((n,), jnp.int32), jnp.ones((n,), jnp.float32)

    def written_out(x, w):
        log_p = jax.nn.log_softmax(x @ w)
        target = jnp.sum(jnp.where(y[:, None] == jnp.arange(v), log_p, 0.0), axis=-1)
        return jnp.sum(a * target) - 0.01 * jnp.sum(jnp.exp(log_p) * log_p)

    def fused(x, w):
        log_probs, entropy = jl.linear_log_probs(x, w, y)
        return jnp.sum(a * log_probs) + 0.01 * jnp.sum(entropy)

    shapes = [jax.ShapeDtypeStruct(s, jnp.float32) for s in ((n, h), (h, v))]
    return [jax.value_and_grad(f, argnums=(0, 1)) for f in (fused, written_out)], shapes


@pytest.mark.exhaustive
def test_compiled_temporaries_at_the_training_shape():
    """docs/large-vocab.md: 8192 x 512 x 65536 float32, value and gradients of
    ``sum(a log_probs) + 0.01 sum(entropy)``: at most a tenth of the written-out
    program's compiled temporaries (compiles only)."""
    (fused, written_out), shapes = _grad_programs(8192, 512, 65536)
    fused_mib, written_mib = (_temp_bytes(f, *shapes) / 2**20 for f in (fused, written_out))
    assert fused_mib * 10 <= written_mib
    page = (pathlib.Path(__file__).parents[1] / "docs" / "large-vocab.md").read_text()
    quoted = re.search(r"compile to (\d+) MiB\s+of temporaries, against ([\d,]+) MiB", page)
    assert quoted, "docs/large-vocab.md quotes the two programs' temporaries"
    documented = float(quoted[1]), float(quoted[2].replace(",", ""))
    np.testing.assert_allclose((fused_mib, written_mib), documented, rtol=0.05)


def test_no_logits_in_either_direction():
    """2048 tokens, V = 16384: the fused program's temporaries are less than one N x V
    float32 array (the written-out one holds several)."""
    n, v = 2048, 16384
    (fused, written_out), shapes = _grad_programs(n, 64, v)
    logits = n * v * 4
    assert _temp_bytes(fused, *shapes) < logits <= _temp_bytes(written_out, *shapes) / 2


@pytest.mark.exhaustive
def test_matmul_count_as_documented():
    """The docstring's five matmuls for the value and gradients: the logits and the two
    per-token hidden rows in the token pass, then the logits again and the weight
    gradient in the vocabulary scan."""
    from benchmarks import measure

    x, w, _, y = build.linear_problem(n=32, h=4, v=300, seed=8, dtype=jnp.float32)
    step = jax.value_and_grad(
        _objective(lambda x, w: jl.linear_log_probs(x, w, y, chunk_size=8), 1.0, 0.1), (0, 1)
    )
    assert measure.count_matmuls(step, x, w) == 5


def test_errors_name_their_argument():
    x, w, y = jnp.zeros((4, 3)), jnp.zeros((3, 5)), jnp.zeros((4,), jnp.int32)
    with pytest.raises(ValueError, match="bias must have shape"):
        jl.linear_log_probs(x, w, y, bias=jnp.zeros(4))
    with pytest.raises(ValueError, match="temperature must be > 0"):
        jl.linear_log_probs(x, w, y, temperature=0.0)
    with pytest.raises(ValueError, match="targets must have shape"):
        jl.linear_log_probs(x, w, jnp.zeros(3, jnp.int32))
    with pytest.raises(TypeError, match="targets must be integer"):
        jl.linear_log_probs(x, w, jnp.zeros(4))
    with pytest.raises(ValueError, match="w must have shape"):
        jl.linear_log_probs(x, w.T, y)
    with pytest.raises(ValueError, match="chunk_size"):
        jl.linear_log_probs(x, w, y, chunk_size=0)
