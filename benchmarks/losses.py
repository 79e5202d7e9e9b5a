"""The ``losses`` suite: value-and-gradient time of each jaxloss loss against the same
loss written as its textbook formula and differentiated by JAX's autodiff ("naive
autodiff"), optax's (or ``jax.nn``'s) version where one exists, and the copy floor (a
jitted ``x * 2``: one read and one write of the logits), interleaved in one process.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from functools import partial
from typing import NamedTuple

import jax
import jax.numpy as jnp

import jaxloss as jl
from benchmarks.measure import format_seconds, interleaved_medians

DEFAULT_SIZES = ((4096, 32768),)
SMOKE_SIZES = ((64, 256),)


def _f32(a):
    """At least float32: the naive formulas accumulate low-precision inputs in float32, as
    jaxloss does, so that both compute the same numbers."""
    return a.astype(jnp.promote_types(a.dtype, jnp.float32))


def _returns_input_dtype(fn):
    """The loss in the first input's dtype, as jaxloss returns it."""

    @functools.wraps(fn)
    def wrapped(x, *args):
        return fn(x, *args).astype(x.dtype)

    return wrapped


def _pick(a, labels):
    return jnp.take_along_axis(a, labels[:, None], axis=-1)[:, 0]


@_returns_input_dtype
def naive_cross_entropy(x, labels):
    x = _f32(x)
    return jnp.mean(jax.nn.logsumexp(x, axis=-1) - _pick(x, labels))


@_returns_input_dtype
def naive_soft_cross_entropy(x, probs):
    return jnp.mean(-jnp.sum(_f32(probs) * jax.nn.log_softmax(_f32(x), axis=-1), axis=-1))


@_returns_input_dtype
def naive_log_softmax(x):
    return jax.nn.log_softmax(_f32(x), axis=-1)


@_returns_input_dtype
def naive_nll_loss(log_probs, labels):
    return -jnp.mean(_pick(_f32(log_probs), labels))


@_returns_input_dtype
def naive_bce_with_logits(x, targets):
    x, targets = _f32(x), _f32(targets)
    return jnp.mean(jax.nn.softplus(x) - x * targets)


@_returns_input_dtype
def naive_bce(probs, targets):
    probs, targets = _f32(probs), _f32(targets)
    log_p = jnp.maximum(jnp.log(probs), -100.0)  # PyTorch's clamp
    log_q = jnp.maximum(jnp.log1p(-probs), -100.0)
    return -jnp.mean(targets * log_p + (1 - targets) * log_q)


@_returns_input_dtype
def naive_sigmoid_focal_loss(x, targets, alpha=0.25, gamma=2.0):
    x, targets = _f32(x), _f32(targets)
    p = jax.nn.sigmoid(x)
    p_t = p * targets + (1 - p) * (1 - targets)
    alpha_t = alpha * targets + (1 - alpha) * (1 - targets)
    return jnp.mean(alpha_t * (jax.nn.softplus(x) - x * targets) * (1 - p_t) ** gamma)


@_returns_input_dtype
def naive_softmax_focal_loss(x, labels, gamma=2.0):
    log_p = _pick(jax.nn.log_softmax(_f32(x), axis=-1), labels)
    return jnp.mean(-((1 - jnp.exp(log_p)) ** gamma) * log_p)


@_returns_input_dtype
def naive_kl_div(log_input, target):
    log_input, target = _f32(log_input), _f32(target)
    terms = jax.scipy.special.xlogy(target, target) - target * log_input
    return jnp.sum(terms) / log_input.shape[0]


class LossCase(NamedTuple):
    """A row of the ``losses`` benchmark: jaxloss, the same loss written naively and
    differentiated by autodiff, and a library's version where one exists."""

    name: str
    jaxloss: Callable
    naive: Callable
    library: Callable | None
    library_name: str
    operands: str  # which inputs: "index", "probs", "binary", "log_probs", "sigmoid", ...
    moved: int  # arrays of N x C that a fused value and gradient must read or write


def loss_cases() -> list[LossCase]:
    try:
        import optax  # type: ignore[import-untyped]
    except ImportError:  # the core package does not depend on optax
        optax = None

    def lib(fn):
        return None if optax is None else lambda a, b: jnp.mean(fn(optax)(a, b))

    return [
        LossCase("cross_entropy (index)", jl.cross_entropy, naive_cross_entropy,
                 lib(lambda o: o.softmax_cross_entropy_with_integer_labels),
                 "optax int-label CE", "index", 2),
        LossCase("cross_entropy (probs)", jl.cross_entropy, naive_soft_cross_entropy,
                 lib(lambda o: o.softmax_cross_entropy), "optax softmax CE", "probs", 3),
        LossCase("log_softmax (fwd+vjp)", jl.log_softmax, naive_log_softmax,
                 jax.nn.log_softmax, "jax.nn.log_softmax", "vjp", 4),
        LossCase("nll_loss", jl.nll_loss, naive_nll_loss, None, "", "log_probs", 2),
        LossCase("bce_with_logits", jl.binary_cross_entropy_with_logits,
                 naive_bce_with_logits, lib(lambda o: o.sigmoid_binary_cross_entropy),
                 "optax sigmoid BCE", "binary", 3),
        LossCase("binary_cross_entropy", jl.binary_cross_entropy, naive_bce, None, "",
                 "sigmoid", 3),
        LossCase("sigmoid_focal_loss", jl.sigmoid_focal_loss, naive_sigmoid_focal_loss,
                 lib(lambda o: partial(o.sigmoid_focal_loss, alpha=0.25, gamma=2.0)),
                 "optax sigmoid focal", "binary", 3),
        LossCase("softmax_focal_loss", jl.softmax_focal_loss, naive_softmax_focal_loss, None,
                 "", "index", 2),
        LossCase("kl_div (batchmean)", partial(jl.kl_div, reduction="batchmean"),
                 naive_kl_div,
                 None if optax is None else
                 lambda a, b: jnp.mean(optax.kl_divergence(a, b)),
                 "optax kl_divergence", "kl", 3),
    ]  # fmt: skip


def loss_operands(n: int, c: int, dtype) -> dict[str, tuple]:
    """The inputs of each kind of ``LossCase.operands``, at N x C in ``dtype``."""
    keys = jax.random.split(jax.random.key(0), 4)
    logits = jax.random.normal(keys[0], (n, c), jnp.float32)
    labels = jax.random.randint(keys[1], (n,), 0, c)
    probs = jax.nn.softmax(jax.random.normal(keys[2], (n, c), jnp.float32))
    binary = (jax.random.uniform(keys[3], (n, c)) < 0.5).astype(dtype)
    cast = partial(jnp.asarray, dtype=dtype)
    return {
        "index": (cast(logits), labels),
        "probs": (cast(logits), cast(probs)),
        "vjp": (cast(logits), jnp.ones((n, c), dtype)),
        "log_probs": (cast(jax.nn.log_softmax(logits)), labels),
        "binary": (cast(logits), binary),
        "sigmoid": (cast(jax.nn.sigmoid(logits)), binary),
        "kl": (cast(jax.nn.log_softmax(logits)), cast(probs)),
    }


def value_and_gradient(fn, operands: str):
    """The jitted call a row times: the mean loss's value and gradient with respect to
    the first argument, or for ``"vjp"`` the forward output and its VJP."""
    if operands != "vjp":
        return jax.jit(jax.value_and_grad(fn))

    def forward_and_vjp(x, cotangent):
        y, pullback = jax.vjp(fn, x)
        return y, pullback(cotangent)[0]

    return jax.jit(forward_and_vjp)


def run(sizes, dtypes, repeats: int) -> list[dict]:
    rows = []
    copy = jax.jit(lambda x: x * 2)
    for n, c in sizes:
        for dtype in dtypes:
            inputs = loss_operands(n, c, dtype)
            size = n * c * jnp.dtype(dtype).itemsize
            for case in loss_cases():
                operands = inputs[case.operands]
                fns = {
                    "jaxloss": partial(value_and_gradient(case.jaxloss, case.operands), *operands),
                    "naive": partial(value_and_gradient(case.naive, case.operands), *operands),
                    "copy": partial(copy, operands[0]),
                }
                if case.library is not None:
                    library = value_and_gradient(case.library, case.operands)
                    fns["library"] = partial(library, *operands)
                times = interleaved_medians(fns, repeats)
                row = _loss_row(case, times, (n, c), dtype, size)
                rows.append(row)
                _print_loss_row(row)
    return rows


def _loss_row(case: LossCase, times: dict, shape, dtype, size: int) -> dict:
    ours, library = times["jaxloss"], times.get("library")
    fastest = min(times["naive"], math.inf if library is None else library)
    return {
        "benchmark": case.name,
        "shape": list(shape),
        "dtype": jnp.dtype(dtype).name,
        "jaxloss_s": ours,
        "naive_s": times["naive"],
        "library": None if library is None else case.library_name,
        "library_s": library,
        "copy_s": times["copy"],
        "jaxloss_vs_naive": ours / times["naive"],
        "jaxloss_vs_library": None if library is None else ours / library,
        "jaxloss_vs_fastest": ours / fastest,
        "jaxloss_vs_copy": ours / times["copy"],
        "jaxloss_GBps": case.moved * size / ours / 1e9,
        "copy_GBps": 2 * size / times["copy"] / 1e9,
        "bytes_moved": case.moved * size,
    }


def _print_loss_row(row) -> None:
    library = (
        f"{row['library']} {format_seconds(row['library_s'])} "
        f"(jaxloss/library {row['jaxloss_vs_library']:.2f})  "
        if row["library_s"] is not None
        else ""
    )
    print(
        f"{row['benchmark']:<24} {str(tuple(row['shape'])):>15} {row['dtype']:>8}  "
        f"jaxloss {format_seconds(row['jaxloss_s'])}  naive autodiff "
        f"{format_seconds(row['naive_s'])} (jaxloss/naive {row['jaxloss_vs_naive']:.2f})  "
        f"{library}copy {format_seconds(row['copy_s'])} "
        f"(jaxloss/copy {row['jaxloss_vs_copy']:.2f})  {row['jaxloss_GBps']:.1f} GB/s",
        flush=True,
    )


def table(rows: list[dict]) -> str:
    """The losses rows as the markdown table the docs quote."""
    lines = [
        "| benchmark | shape | dtype | jaxloss | naive autodiff | jaxloss / naive "
        "| library | jaxloss / library | copy floor | jaxloss / copy | jaxloss GB/s |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        has_library = r["library_s"] is not None
        library = f"{r['library']}: {format_seconds(r['library_s'])}" if has_library else "none"
        vs_library = f"{r['jaxloss_vs_library']:.2f}" if has_library else "–"
        lines.append(
            f"| {r['benchmark']} | {'×'.join(map(str, r['shape']))} | {r['dtype']} "
            f"| {format_seconds(r['jaxloss_s'])} | {format_seconds(r['naive_s'])} "
            f"| {r['jaxloss_vs_naive']:.2f} | {library} | {vs_library} "
            f"| {format_seconds(r['copy_s'])} | {r['jaxloss_vs_copy']:.2f} "
            f"| {r['jaxloss_GBps']:.1f} |"
        )
    return "\n".join(lines)
