"""linear_kl_div against the unfused KL divergence of the two heads' softmaxes, and
linear_jsd against Liger-Kernel's generalized JSD written from its formula."""

import pathlib
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads

import jaxloss as jl
from tests import builders as build
from tests import reference as ref

N, H, HT, V, K = 40, 8, 6, 32, 5


def _problem(seed=0, dtype=jnp.float64, batch=None):
    x, w, _, y = build.linear_problem(n=N, h=H, v=V, seed=seed, dtype=dtype, batch=batch)
    shape = y.shape
    teacher_x = build.normal((*shape, HT), seed + 1, dtype)
    teacher_w = build.normal((HT, V), seed + 2, dtype)
    return x, w, y, teacher_x, teacher_w


def _topk(teacher_x, teacher_w, k=K):
    log_probs, ids = jax.lax.top_k(jax.nn.log_softmax(teacher_x @ teacher_w), k)
    return ids, log_probs


def _naive_kl(x, w, q, temperature):
    """T^2 KL(q || softmax(x w / T)) per token, from the formula."""
    log_p = ref.log_softmax(x @ w / temperature)
    safe_q = jnp.where(q > 0, q, 1.0)
    return temperature**2 * jnp.sum(jnp.where(q > 0, q * (jnp.log(safe_q) - log_p), 0.0), -1)


def _dense_q(teacher_x, teacher_w, temperature):
    return jax.nn.softmax(teacher_x @ teacher_w / temperature)


def _topk_q(ids, log_probs, temperature):
    q = jax.nn.softmax(log_probs / temperature)
    rows = jnp.zeros((*ids.shape[:-1], V), q.dtype)
    return jax.vmap(lambda r, i, p: r.at[i].set(p))(
        rows.reshape(-1, V), ids.reshape(-1, ids.shape[-1]), q.reshape(-1, q.shape[-1])
    ).reshape(rows.shape)


def _reduce(per, y, reduction):
    keep = y != -100
    per = jnp.where(keep, per, 0.0)
    if reduction == "none":
        return per
    if reduction == "sum":
        return per.sum()
    return per.sum() / keep.sum()


CASES = [
    # (teacher, reduction, temperature, chunk_size)
    ("dense", "mean", 1.0, None),
    ("dense", "sum", 2.0, 7),
    ("dense", "none", 0.5, 8),
    ("topk", "mean", 2.0, 7),
    ("topk", "sum", 1.0, None),
    ("topk", "none", 3.0, 16),
]


@pytest.mark.exhaustive(quick_cases=1)
@pytest.mark.parametrize("teacher,reduction,temperature,chunk_size", CASES)
def test_value_and_gradients_equal_the_unfused_formula(
    x64, teacher, reduction, temperature, chunk_size
):
    x, w, y, teacher_x, teacher_w = _problem()
    if teacher == "dense":
        teacher_args, teacher_kwargs = (teacher_x, teacher_w), {}
        q = _dense_q(teacher_x, teacher_w, temperature)
    else:
        ids, log_probs = _topk(teacher_x, teacher_w)
        teacher_args, teacher_kwargs = (), {"teacher_topk": (ids, log_probs)}
        q = _topk_q(ids, log_probs, temperature)
    cotangent = build.logits((N,), seed=3)

    def fused(x, w):
        out = jl.linear_kl_div(
            x, w, *teacher_args, **teacher_kwargs, temperature=temperature, targets=y,
            reduction=reduction, chunk_size=chunk_size,
        )  # fmt: skip
        return jnp.sum(out * cotangent) if reduction == "none" else out

    def unfused(x, w):
        out = _reduce(_naive_kl(x, w, q, temperature), y, reduction)
        return jnp.sum(out * cotangent) if reduction == "none" else out

    np.testing.assert_allclose(fused(x, w), unfused(x, w), rtol=1e-12)
    for g, h in zip(jax.grad(fused, (0, 1))(x, w), jax.grad(unfused, (0, 1))(x, w), strict=True):
        np.testing.assert_allclose(g, h, rtol=1e-10, atol=1e-13)
    # Not jitted: the rule's programs are those jax.grad compiled above.
    check_grads(fused, (x, w), order=1, modes=("fwd", "rev"))


@pytest.mark.exhaustive
def test_equals_kl_div_of_the_two_softmaxes(x64):
    """The unfused computation with the library's own kl_div, as users would write it."""
    x, w, _, teacher_x, teacher_w = _problem(batch=3)
    for temperature in (1.0, 4.0):
        want = (
            temperature**2
            * jl.kl_div(
                jl.log_softmax(x @ w / temperature),
                jl.softmax(teacher_x @ teacher_w / temperature),
                reduction="sum",
            )
            / (3 * N)
        )
        got = jl.linear_kl_div(x, w, teacher_x, teacher_w, temperature=temperature)
        np.testing.assert_allclose(got, want, rtol=1e-12)


def test_teacher_equal_to_student_gives_zero_loss_and_gradient(x64):
    x, w, y, _, _ = _problem()
    value, grads = jax.value_and_grad(jl.linear_kl_div, (0, 1))(x, w, x, w, targets=y)
    assert abs(float(value)) < 1e-13
    assert all(float(jnp.max(jnp.abs(g))) < 1e-13 for g in grads)


def test_topk_with_the_whole_vocabulary_is_the_dense_loss(x64):
    x, w, y, teacher_x, teacher_w = _problem()
    ids, log_probs = _topk(teacher_x, teacher_w, k=V)
    for temperature in (1.0, 2.5):
        np.testing.assert_allclose(
            jl.linear_kl_div(x, w, teacher_topk=(ids, log_probs), temperature=temperature),
            jl.linear_kl_div(x, w, teacher_x, teacher_w, temperature=temperature),
            rtol=1e-12,
        )


def test_topk_edges(x64):
    x, w, y, teacher_x, teacher_w = _problem()
    ids, log_probs = _topk(teacher_x, teacher_w)
    # A -inf log-probability gives its id no mass: the same as leaving it out.
    padded = (ids.at[:, -1].set(0), log_probs.at[:, -1].set(-jnp.inf))
    shorter = (ids[:, :-1], log_probs[:, :-1])
    np.testing.assert_allclose(
        jl.linear_kl_div(x, w, teacher_topk=padded, reduction="none"),
        jl.linear_kl_div(x, w, teacher_topk=shorter, reduction="none"),
        rtol=1e-12,
    )
    # An id outside the vocabulary makes that token nan, unless it is ignored.
    out = jl.linear_kl_div(x, w, teacher_topk=(ids.at[1, 0].set(V), log_probs), reduction="none")
    assert np.isnan(out[1]) and np.all(np.isfinite(np.delete(np.asarray(out), 1)))
    ignored = jl.linear_kl_div(
        x, w, teacher_topk=(ids.at[1, 0].set(-5), log_probs), targets=y.at[1].set(-100)
    )
    assert np.isfinite(ignored)


def test_ignored_tokens_add_nothing_even_from_nan_states(x64):
    x, w, y, teacher_x, teacher_w = _problem()
    ignored = np.flatnonzero(np.asarray(y) == -100)
    assert ignored.size
    bad_x = x.at[ignored].set(jnp.nan)
    bad_tx = teacher_x.at[ignored].set(jnp.inf)
    value, grads = jax.value_and_grad(jl.linear_kl_div, (0, 1))(
        bad_x, w, bad_tx, teacher_w, targets=y
    )
    np.testing.assert_allclose(value, jl.linear_kl_div(x, w, teacher_x, teacher_w, targets=y))
    assert all(np.all(np.isfinite(g)) for g in grads)
    assert not np.any(grads[0][ignored])


def test_extreme_logits_stay_finite(x64):
    x, w, y, teacher_x, teacher_w = _problem()
    for scale in (1e4, -1e4):
        value, grads = jax.value_and_grad(jl.linear_kl_div, (0, 1))(
            x * scale, w, teacher_x * scale, teacher_w, targets=y
        )
        assert np.isfinite(value) and all(np.all(np.isfinite(g)) for g in grads)


@pytest.mark.exhaustive
def test_token_options_follow_the_token_reductions(x64):
    x, w, _, teacher_x, teacher_w = _problem(batch=3)
    rng = np.random.default_rng(0)
    t = rng.uniform(0, 1, (3, N))
    segments = rng.integers(0, 4, (3, N))
    per = jl.linear_kl_div(x, w, teacher_x, teacher_w, reduction="none")
    np.testing.assert_allclose(
        jl.linear_kl_div(x, w, teacher_x, teacher_w, reduction="none", token_weight=t), per * t
    )
    for reduction in ("mean", "sequence_mean"):
        for normalizer in (None, 7.0):
            kwargs = dict(token_weight=t, segment_ids=segments, normalizer=normalizer)
            want = ref.reduce_tokens(per, np.ones(t.shape), reduction, **kwargs)
            got = jl.linear_kl_div(x, w, teacher_x, teacher_w, reduction=reduction, **kwargs)
            np.testing.assert_allclose(got, want, rtol=1e-12)


def test_teacher_gets_no_gradient(x64):
    x, w, y, teacher_x, teacher_w = _problem()
    grads = jax.grad(jl.linear_kl_div, (2, 3))(x, w, teacher_x, teacher_w)
    assert not any(np.any(g) for g in grads)


@pytest.mark.exhaustive
def test_vmap_jit_and_bfloat16(x64):
    x, w, y, teacher_x, teacher_w = _problem(batch=2)
    batched = jax.jit(jax.vmap(lambda x, t: jl.linear_kl_div(x, w, t, teacher_w)))
    np.testing.assert_allclose(
        batched(x, teacher_x),
        [jl.linear_kl_div(x[i], w, teacher_x[i], teacher_w) for i in range(2)],
        rtol=1e-12,
    )
    low = [a.astype(jnp.bfloat16) for a in (x, w, teacher_x, teacher_w)]
    value, grads = jax.value_and_grad(jl.linear_kl_div, (0, 1))(*low, chunk_size=16)
    assert value.dtype == jnp.bfloat16 and grads[1].dtype == jnp.bfloat16
    exact = [a.astype(jnp.float64) for a in low]
    want, want_grads = jax.value_and_grad(jl.linear_kl_div, (0, 1))(*exact)
    np.testing.assert_allclose(float(value), float(want), rtol=1e-2)
    for g, h in zip(grads, want_grads, strict=True):
        scale = float(jnp.max(jnp.abs(h)))
        np.testing.assert_allclose(np.asarray(g, np.float64), h, atol=2e-2 * scale)


def test_compiled_memory_is_a_fraction_of_the_unfused_loss():
    """Value and gradient: compiled temporaries of the fused loss at most 1/16 of the
    unfused computation's (which holds both heads' N x V logits)."""
    n, h, v = 2048, 64, 8192
    x = jax.ShapeDtypeStruct((n, h), jnp.float32)
    w = jax.ShapeDtypeStruct((h, v), jnp.float32)

    def unfused(x, w, tx, tw):
        return jl.kl_div(jl.log_softmax(x @ w), jl.softmax(tx @ tw), reduction="batchmean")

    def temp_bytes(fn):
        compiled = jax.jit(jax.value_and_grad(fn, (0, 1))).lower(x, w, x, w).compile()
        return compiled.memory_analysis().temp_size_in_bytes

    fused = temp_bytes(lambda x, w, tx, tw: jl.linear_kl_div(x, w, tx, tw, chunk_size=32))
    assert fused * 16 <= temp_bytes(unfused)


def test_errors_name_their_argument():
    x, w = jnp.zeros((4, 3)), jnp.zeros((3, 5))
    with pytest.raises(ValueError, match="either as teacher_x and teacher_w or as teacher_topk"):
        jl.linear_kl_div(x, w)
    with pytest.raises(ValueError, match="teacher_x and teacher_w must be given together"):
        jl.linear_kl_div(x, w, x)
    with pytest.raises(ValueError, match="teacher_w must have shape"):
        jl.linear_kl_div(x, w, x, jnp.zeros((3, 6)))
    with pytest.raises(ValueError, match="teacher_x must have shape"):
        jl.linear_kl_div(x, w, jnp.zeros((5, 3)), w)
    with pytest.raises(ValueError, match="teacher_topk ids and log_probs must both have shape"):
        jl.linear_kl_div(x, w, teacher_topk=(jnp.zeros((4, 2), int), jnp.zeros((4, 3))))
    with pytest.raises(TypeError, match="teacher_topk ids must be integers"):
        jl.linear_kl_div(x, w, teacher_topk=(jnp.zeros((4, 2)), jnp.zeros((4, 2))))
    with pytest.raises(TypeError, match="teacher_topk must be a pair"):
        jl.linear_kl_div(x, w, teacher_topk=jnp.zeros((4, 2)))
    with pytest.raises(ValueError, match="temperature must be > 0"):
        jl.linear_kl_div(x, w, x, w, temperature=0.0)
    with pytest.raises(ValueError, match="targets must have shape"):
        jl.linear_kl_div(x, w, x, w, targets=jnp.zeros(3, int))
    with pytest.raises(ValueError, match="w must have shape"):
        jl.linear_kl_div(x, w.T, x, w)


@pytest.mark.exhaustive
def test_matmul_counts_as_documented():
    """The docstring's count: four matmuls in one pass (three with a top-k teacher), six
    in two (four)."""
    from benchmarks import measure

    x, w, y, teacher_x, teacher_w = _problem()
    ids, log_probs = _topk(teacher_x, teacher_w)
    for passes, dense, topk in [(1, 4, 3), (2, 6, 4)]:
        steps = {
            dense: lambda x, w: jl.linear_kl_div(x, w, teacher_x, teacher_w, passes=passes),
            topk: lambda x, w: jl.linear_kl_div(x, w, teacher_topk=(ids, log_probs), passes=passes),
        }
        for want, loss in steps.items():
            step = jax.value_and_grad(loss, argnums=(0, 1))
            assert measure.count_matmuls(step, x, w) == want, (passes, want)


# --- linear_jsd ------------------------------------------------------------------------


def _liger_jsd(x, w, teacher_x, teacher_w, beta, temperature):
    """Per token, Liger-Kernel's generalized JSD written from its formula: the teacher's
    ``P`` and the student's ``Q`` at the temperature, ``beta = 0`` forward KL(P || Q),
    ``beta = 1`` reverse KL(Q || P), else ``beta KL(P || M) + (1 - beta) KL(Q || M)``."""
    log_q = ref.log_softmax(x @ w / temperature)
    log_p = ref.log_softmax(teacher_x @ teacher_w / temperature)
    q, p = jnp.exp(log_q), jnp.exp(log_p)
    if beta == 0:
        return jnp.sum(p * (log_p - log_q), -1)
    if beta == 1:
        return jnp.sum(q * (log_q - log_p), -1)
    log_m = jnp.log(beta * p + (1 - beta) * q)
    return beta * jnp.sum(p * (log_p - log_m), -1) + (1 - beta) * jnp.sum(q * (log_q - log_m), -1)


JSD_CASES = [
    # (beta, temperature, reduction, passes, chunk_size)
    (0.5, 1.0, "mean", None, None),
    (0.0, 2.0, "sum", 1, 7),
    (1e-3, 0.5, "mean", 2, 8),
    (0.3, 1.0, "none", None, 16),
    (1.0, 3.0, "mean", 2, None),
    (0.7, 2.0, "sequence_mean", 1, 5),
]


@pytest.mark.exhaustive(quick_cases=2)
@pytest.mark.parametrize("beta,temperature,reduction,passes,chunk_size", JSD_CASES)
def test_jsd_equals_the_formula_for_every_beta(
    x64, beta, temperature, reduction, passes, chunk_size
):
    """Values and gradients of x and w against Liger-Kernel's formula in float64, over
    the endpoints, a beta near 0, the middle, temperatures, passes and reductions."""
    x, w, y, teacher_x, teacher_w = _problem(seed=4)
    cotangent = build.logits((N,), seed=5)

    def fused(x, w):
        out = jl.linear_jsd(
            x, w, teacher_x, teacher_w, beta=beta, temperature=temperature, targets=y,
            reduction=reduction, passes=passes, chunk_size=chunk_size, vocab_chunk_size=12,
        )  # fmt: skip
        return jnp.sum(out * cotangent) if reduction == "none" else out

    def unfused(x, w):
        per = _liger_jsd(x, w, teacher_x, teacher_w, beta, temperature)
        if reduction == "sequence_mean":  # one sequence: the mean over kept tokens
            return _reduce(per, y, "mean")
        out = _reduce(per, y, reduction)
        return jnp.sum(out * cotangent) if reduction == "none" else out

    np.testing.assert_allclose(fused(x, w), unfused(x, w), rtol=1e-11)
    for g, h in zip(jax.grad(fused, (0, 1))(x, w), jax.grad(unfused, (0, 1))(x, w), strict=True):
        np.testing.assert_allclose(g, h, rtol=1e-9, atol=1e-13)
    check_grads(fused, (x, w), order=1, modes=("fwd", "rev"))


def test_jsd_endpoints_and_linear_kl_div(x64):
    """beta = 0 is linear_kl_div without its T^2; beta = 1 is the reverse KL, which swaps
    the two heads' roles; the symmetric JSD is symmetric and at most log 2."""
    x, w, y, teacher_x, teacher_w = _problem(seed=6)
    t = 2.5
    forward = jl.linear_jsd(x, w, teacher_x, teacher_w, beta=0.0, temperature=t, targets=y)
    kl = jl.linear_kl_div(x, w, teacher_x, teacher_w, temperature=t, targets=y)
    np.testing.assert_allclose(forward * t**2, kl, rtol=1e-12)
    reverse = jl.linear_jsd(x, w, teacher_x, teacher_w, beta=1.0, targets=y, reduction="none")
    swapped = jl.linear_jsd(teacher_x, teacher_w, x, w, beta=0.0, targets=y, reduction="none")
    np.testing.assert_allclose(reverse, swapped, rtol=1e-12)
    half = jl.linear_jsd(x, w, teacher_x, teacher_w, beta=0.5, reduction="none")
    other = jl.linear_jsd(teacher_x, teacher_w, x, w, beta=0.5, reduction="none")
    np.testing.assert_allclose(half, other, rtol=1e-12)
    assert np.all(half >= 0) and np.all(half <= np.log(2))


def test_jsd_edges(x64):
    """The teacher gets no gradient; a teacher equal to the student gives 0 and no
    gradient for every beta; ignored tokens add nothing even from nan states; a padded
    vocabulary equals the unpadded loss; extreme logits stay finite."""
    x, w, y, teacher_x, teacher_w = _problem(seed=7)
    grads = jax.grad(jl.linear_jsd, (2, 3))(x, w, teacher_x, teacher_w, beta=0.3)
    assert not any(np.any(g) for g in grads)
    for beta in (0.0, 0.4, 1.0):
        value, grads = jax.value_and_grad(jl.linear_jsd, (0, 1))(x, w, x, w, beta=beta)
        np.testing.assert_allclose(value, 0.0, atol=1e-14)
        assert all(np.max(np.abs(g)) < 1e-14 for g in grads), beta
    ignored = np.flatnonzero(np.asarray(y) == -100)
    bad = jax.value_and_grad(jl.linear_jsd, (0, 1))(
        x.at[ignored].set(jnp.nan), w, teacher_x.at[ignored].set(jnp.inf), teacher_w, targets=y
    )
    np.testing.assert_allclose(bad[0], jl.linear_jsd(x, w, teacher_x, teacher_w, targets=y))
    assert all(np.all(np.isfinite(g)) for g in bad[1]) and not np.any(bad[1][0][ignored])
    pad = lambda a: jnp.concatenate([a, jnp.ones((a.shape[0], 9))], -1)  # noqa: E731
    padded = jax.value_and_grad(jl.linear_jsd, (0, 1))(
        x, pad(w), teacher_x, pad(teacher_w), beta=0.3, vocab_size=V, chunk_size=8
    )
    want = jax.value_and_grad(jl.linear_jsd, (0, 1))(x, w, teacher_x, teacher_w, beta=0.3)
    np.testing.assert_allclose(padded[0], want[0], rtol=1e-12)
    np.testing.assert_allclose(padded[1][1][:, :V], want[1][1], rtol=1e-10, atol=1e-14)
    assert not np.any(padded[1][1][:, V:])

    def padded_loss(x, w):
        return jl.linear_jsd(
            x, pad(w), teacher_x[:6], pad(teacher_w), beta=0.3, vocab_size=V, reduction="sum"
        )

    check_grads(padded_loss, (x[:6], w), order=2, modes=("fwd", "rev"))
    for scale in (1e4, -1e4):
        value, grads = jax.value_and_grad(jl.linear_jsd, (0, 1))(
            x * scale, w, teacher_x * scale, teacher_w, beta=0.5
        )
        assert np.isfinite(value) and all(np.all(np.isfinite(g)) for g in grads)


def test_jsd_vmap_and_bfloat16(x64):
    x, w, _, teacher_x, teacher_w = _problem(batch=2, seed=8)
    batched = jax.vmap(lambda x, t: jl.linear_jsd(x, w, t, teacher_w, beta=0.3))(x, teacher_x)
    each = [jl.linear_jsd(x[i], w, teacher_x[i], teacher_w, beta=0.3) for i in range(2)]
    np.testing.assert_allclose(batched, each, rtol=1e-12)
    low = [a.astype(jnp.bfloat16) for a in (x, w, teacher_x, teacher_w)]
    value, grads = jax.value_and_grad(jl.linear_jsd, (0, 1))(*low, beta=0.3, chunk_size=16)
    assert value.dtype == jnp.bfloat16 and grads[1].dtype == jnp.bfloat16
    exact = [a.astype(jnp.float64) for a in low]
    want, want_grads = jax.value_and_grad(jl.linear_jsd, (0, 1))(*exact, beta=0.3)
    np.testing.assert_allclose(float(value), float(want), rtol=1e-2)
    for g, h in zip(grads, want_grads, strict=True):
        scale = float(jnp.max(jnp.abs(h)))
        np.testing.assert_allclose(np.asarray(g, np.float64), h, atol=2e-2 * scale)


@pytest.mark.exhaustive
def test_jsd_compiled_temporaries_at_the_training_shape():
    """docs/large-vocab.md: 8192 x 512 x 65536 float32, a teacher of the student's size,
    beta = 0.5: the value and gradients compile to at most a tenth of the written-out
    program's temporaries (compiles only)."""
    shapes = [jax.ShapeDtypeStruct(s, jnp.float32) for s in ((8192, 512), (512, 65536))] * 2

    def written_out(x, w, tx, tw):
        return jnp.mean(_liger_jsd(x, w, tx, tw, 0.5, 1.0))

    def temp_mib(fn):
        step = jax.jit(jax.value_and_grad(fn, (0, 1))).lower(*shapes).compile()
        return step.memory_analysis().temp_size_in_bytes / 2**20

    fused = temp_mib(lambda x, w, tx, tw: jl.linear_jsd(x, w, tx, tw, beta=0.5))
    written = temp_mib(written_out)
    assert fused * 10 <= written
    page = (pathlib.Path(__file__).parents[1] / "docs" / "large-vocab.md").read_text()
    quoted = re.search(r"`linear_jsd\(beta=0\.5\)` compiles to (\d+) MiB[^.]*?([\d,]+) MiB", page)
    assert quoted, "docs/large-vocab.md quotes the two programs' temporaries"
    documented = float(quoted[1]), float(quoted[2].replace(",", ""))
    np.testing.assert_allclose((fused, written), documented, rtol=0.05)


def test_jsd_errors_name_their_argument():
    x, w = jnp.zeros((4, 3)), jnp.zeros((3, 5))
    with pytest.raises(ValueError, match="beta must be in"):
        jl.linear_jsd(x, w, x, w, beta=1.5)
    with pytest.raises(TypeError, match="beta must be a real number"):
        jl.linear_jsd(x, w, x, w, beta="half")
    with pytest.raises(TypeError, match="beta must be a concrete number"):
        jax.jit(lambda b: jl.linear_jsd(x, w, x, w, beta=b))(0.5)
    with pytest.raises(ValueError, match="teacher_x and teacher_w"):
        jl.linear_jsd(x, w, None, w)
    with pytest.raises(ValueError, match="teacher_w must have shape"):
        jl.linear_jsd(x, w, x, jnp.zeros((3, 6)))
    with pytest.raises(ValueError, match="temperature must be > 0"):
        jl.linear_jsd(x, w, x, w, temperature=-1.0)
