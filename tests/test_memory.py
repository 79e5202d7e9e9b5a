"""Compiled temporary bytes of value-and-gradient: deterministic, so a change of formula
that makes XLA keep an N x C temporary fails here rather than in a benchmark."""

import re

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


def _passes_over_logits(fn, *args) -> tuple[int, int, int]:
    """(reads, writes, exponentials) of N x C arrays in the compiled value-and-gradient:
    the entry computation's instructions with an N x C operand or result, and the
    exponentials of N x C values anywhere in the program (fused ones included)."""
    hlo = jax.jit(jax.value_and_grad(fn)).lower(*args).compile().as_text()
    big = f"[{N},{C}]"
    shapes, reads, writes = {}, 0, 0
    entry = hlo[hlo.index("ENTRY") :].split("\n}", 1)[0]
    for line in entry.splitlines()[1:]:
        match = re.match(r"\s*(?:ROOT )?(%\S+) = (\S+) (\S+?)\(", line)
        if not match:
            continue
        name, shape, op = match.groups()
        shapes[name] = shape
        if op in ("parameter", "tuple", "get-tuple-element", "bitcast", "constant"):
            continue
        operands = re.findall(r"%[\w.\-]+", line.split("(", 1)[1].split("), ", 1)[0])
        reads += any(big in shapes.get(o, "") for o in operands)
        writes += big in shape
    exponentials = len(re.findall(rf"f32\[{N},{C}\]\S* exponential\(", hlo))
    return reads, writes, exponentials


def test_index_cross_entropy_passes_over_the_logits_no_more_than_autodiff():
    """Value and gradient of index-target cross-entropy read and write the N x C array
    no more often, and evaluate no more exponentials of it, than jax.grad of the naive
    logsumexp(x) - x[y]: the hand-written rule costs nothing over autodiff."""

    def naive(x, y):
        picked = jnp.take_along_axis(x, y[:, None], -1)[:, 0]
        return jnp.mean(jax.nn.logsumexp(x, -1) - picked)

    ours = _passes_over_logits(lambda x, y: jl.cross_entropy(x, y), LOGITS, INDEX)
    theirs = _passes_over_logits(naive, LOGITS, INDEX)
    assert theirs[2] >= 1  # the count sees the naive version's exponential
    assert all(a <= b for a, b in zip(ours, theirs, strict=True)), (ours, theirs)
