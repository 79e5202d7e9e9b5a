"""Benchmarks: ``python -m jaxloss.benchmark [losses|linear|lm|ctc|all] [options]``.

``losses``: value-and-gradient time of jaxloss against the same loss written as its
textbook formula and differentiated by JAX's autodiff ("naive autodiff"), optax's (or
``jax.nn``'s) version where one exists, and the copy floor (a jitted ``x * 2``: one
read and one write of the logits), run interleaved in one process so that drift on
a shared machine hits all of them alike, with the bandwidth jaxloss achieves.

``linear``: ``linear_cross_entropy`` (its default, and ``passes=1``) against the
unfused ``cross_entropy(x @ w, t)``: XLA's compiled temporary bytes (deterministic)
beside the floor, the bytes of the gradients dx and dw that every implementation
returns; interleaved median times of value-and-gradient; on CPU the peak growth of
the resident set during one call, sampled from a thread, for each and for a program
that only writes the gradients' bytes; and, at the shapes they publish, the GPU
kernels' own figures (quoted, not measured here).

``lm``: the options of a language model's training loss at one shape, each against
``linear_cross_entropy``'s plain mean measured in the same run: token weights, packed
sequences (``segment_ids`` with ``"sequence_mean"``), a traced ``normalizer``,
``return_aux``, and distillation with ``linear_kl_div`` (a dense teacher of the
student's size, and a top-64 teacher) beside the unfused KL divergence of the two
heads' softmaxes: the matmuls in the program, compiled temporary bytes (at the memory
shape) and interleaved median times (at the time shape).

``ctc``: ``ctc_loss_with_paddings`` and ``ctc_loss`` (PyTorch's time-major layout)
against ``optax.ctc_loss`` on the same batch-major logits (each takes the log-softmax
of unnormalized scores): interleaved median value-and-gradient times and compiled
temporary bytes.

Every ratio is a time (or byte count) of jaxloss divided by the same figure of
its baseline: below 1 means jaxloss is faster (or smaller). Ratios, not absolute
times, are the figures to compare across machines.
"""

from __future__ import annotations

import argparse
import datetime
import functools
import json
import math
import platform
import re
import statistics
import sys
import time
from collections.abc import Callable, Mapping
from functools import partial
from typing import NamedTuple

import jax
import jax.numpy as jnp

import jaxloss as jl

DEFAULT_LOSS_SIZES = ((4096, 32768),)
DEFAULT_LINEAR_SHAPES = (
    (2048, 512, 32768),
    (8192, 512, 65536),
    (8192, 2048, 128256),
    (8192, 2304, 256000),  # a Gemma-2-2B head
    (8192, 4096, 131072),  # a Llama-3-8B-sized head
)
DEFAULT_LM_MEMORY_SHAPE = (8192, 512, 65536)
DEFAULT_LM_TIME_SHAPE = (2048, 512, 32768)
SMOKE_LOSS_SIZES = ((64, 256),)
DEFAULT_CTC_SHAPE = (32, 500, 1000, 100)
SMOKE_CTC_SHAPE = (4, 24, 16, 6)
SMOKE_LINEAR_SHAPES = ((64, 32, 512),)


def _block(tree):
    return jax.tree.map(lambda a: a.block_until_ready(), tree)


def interleaved_medians(fns: Mapping[str, Callable[[], object]], repeats: int) -> dict[str, float]:
    """Median seconds of each thunk, calling them in rotating order ``repeats`` times."""
    for fn in fns.values():  # compile and warm up
        _block(fn())
    samples: dict[str, list[float]] = {name: [] for name in fns}
    names = list(fns)
    for r in range(repeats):
        order = names[r % len(names) :] + names[: r % len(names)]
        for name in order:
            start = time.perf_counter()
            _block(fns[name]())
            samples[name].append(time.perf_counter() - start)
    return {name: statistics.median(values) for name, values in samples.items()}


def _environment() -> dict:
    device = jax.devices()[0]
    return {
        "date": datetime.date.today().isoformat(),
        "backend": jax.default_backend(),
        "device": f"{device.device_kind} x{jax.device_count()}",
        "jax": jax.__version__,
        "python": platform.python_version(),
        "machine": platform.machine(),
    }


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


def run_losses(sizes, dtypes, repeats: int) -> list[dict]:
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


def format_seconds(seconds: float) -> str:
    """A time with a unit that keeps three significant digits (never ``0.000 s``)."""
    unit, scale = next(
        ((u, f) for u, f in (("s", 1.0), ("ms", 1e-3)) if seconds >= f), ("µs", 1e-6)
    )
    value = seconds / scale
    digits = 2 if value < 10 else 1 if value < 100 else 0
    return f"{value:.{digits}f} {unit}"


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


def compiled_temp_bytes(fn, *args) -> int:
    analysis = jax.jit(fn).lower(*args).compile().memory_analysis()
    if analysis is None:  # a backend without memory analysis
        return -1
    return int(analysis.temp_size_in_bytes)


_RSS_SCRIPT = """
import gc, os, sys, threading, time
import jax, jax.numpy as jnp, jaxloss as jl
n, h, v = map(int, sys.argv[1:4])
variant, dtype = sys.argv[4:6]
keys = jax.random.split(jax.random.key(0), 3)
x = jax.random.normal(keys[0], (n, h)).astype(dtype)
w = (jax.random.normal(keys[1], (h, v)) / h**0.5).astype(dtype)
y = jax.random.randint(keys[2], (n,), 0, v)
if variant == "fused":
    step = jax.value_and_grad(lambda x, w: jl.linear_cross_entropy(x, w, y), argnums=(0, 1))
elif variant == "one-pass":
    step = jax.value_and_grad(
        lambda x, w: jl.linear_cross_entropy(x, w, y, passes=1), argnums=(0, 1)
    )
elif variant == "naive":
    step = jax.value_and_grad(
        lambda x, w: jl.cross_entropy(jnp.matmul(x, w, preferred_element_type=jnp.float32), y),
        argnums=(0, 1),
    )
else:  # "floor": only writes arrays of the gradients' shapes
    step = lambda x, w: (jnp.sum(x[0]), (x * 2, w * 2))
step = jax.jit(step).lower(x, w).compile()
page = os.sysconf("SC_PAGE_SIZE")
def rss():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * page
# One call first: the runtime's one-time set-up is not the call's memory.
out = step(x, w); jax.block_until_ready(out); del out; gc.collect()
peak, done = [0], threading.Event()
def sample():
    while not done.is_set():
        peak[0] = max(peak[0], rss())
        time.sleep(0.0002)
before = rss()
sampler = threading.Thread(target=sample)
sampler.start()
# The result is kept until the last reading: its buffers count even if the sampler
# thread did not run while the call did (a loaded machine).
out = jax.block_until_ready(step(x, w))
done.set(); sampler.join()
print(max(peak[0], rss()) - before)
"""

RSS_VARIANTS = ("fused", "one-pass", "naive", "floor")


def peak_rss_growth(n: int, h: int, v: int, variant: str, dtype) -> int | None:
    """Bytes by which one value-and-gradient call grows the resident set of a fresh
    process, sampled from a thread while it runs (inputs made, program compiled and
    called once first). ``variant`` is one of ``RSS_VARIANTS``: ``"floor"`` is a program
    that only writes arrays of the gradients' shapes, the least any call can add."""
    import os
    import subprocess

    # A fixed mmap threshold: every large buffer is mapped when allocated and unmapped
    # when freed. (glibc raises its threshold after such frees, so the set-up call's
    # buffers could otherwise be reused from the heap, unseen by the resident set.)
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_=str(2**16))
    proc = subprocess.run(
        [sys.executable, "-c", _RSS_SCRIPT, str(n), str(h), str(v), variant, jnp.dtype(dtype).name],
        capture_output=True,
        text=True,
        timeout=1800,
        env=env,
    )
    if proc.returncode != 0 or not proc.stdout.strip():
        return None
    return int(proc.stdout.strip().splitlines()[-1])


# Published loss-and-gradient memory of the GPU kernels, quoted beside our rows of the same
# shape, or the nearest one (their figures, their shapes; not measured here).
PUBLISHED = {
    (8192, 2304, 256000, "bfloat16"): (
        "Cut Cross-Entropy: 1164 MB (MiB by its size: dx and dw alone are 1161 MiB) for"
        " loss + gradients on an A100, gradients accumulated in bfloat16; README of"
        " github.com/apple/ml-cross-entropy, Wijmans et al. 2024, arXiv:2411.09009"
    ),
    (8192, 4096, 131072, "bfloat16"): (
        "Liger-Kernel: 4408 MB peak GPU memory for a forward and backward step at"
        " 8192 x 4096 x 128256 bfloat16 on an H100, parameters included;"
        " benchmark/fused_linear_cross_entropy_memory in github.com/linkedin/Liger-Kernel"
    ),
}


def run_linear(
    shapes, dtypes, repeats: int, time_limit_flops: float, measure_rss: bool = True
) -> list[dict]:
    rows = []
    for n, h, v in shapes:
        for dtype in dtypes:
            x = jax.ShapeDtypeStruct((n, h), dtype)
            w = jax.ShapeDtypeStruct((h, v), dtype)
            y = jax.ShapeDtypeStruct((n,), jnp.int32)

            def fused(x, w, y):
                return jl.linear_cross_entropy(x, w, y)

            def one_pass(x, w, y):
                return jl.linear_cross_entropy(x, w, y, passes=1)

            def naive(x, w, y):
                return jl.cross_entropy(jnp.matmul(x, w, preferred_element_type=jnp.float32), y)

            steps = {
                name: jax.value_and_grad(fn, argnums=(0, 1))
                for name, fn in (("fused", fused), ("one_pass", one_pass), ("naive", naive))
            }
            name = jnp.dtype(dtype).name
            row = {
                "benchmark": "linear_cross_entropy",
                "shape": [n, h, v],
                "dtype": name,
                **{f"{k}_temp_bytes": compiled_temp_bytes(f, x, w, y) for k, f in steps.items()},
                "logits_bytes": n * v * 4,
                # dx and dw, the gradients returned: the least any implementation holds.
                "floor_bytes": (n * h + h * v) * jnp.dtype(dtype).itemsize,
            }
            row["temp_ratio"] = row["fused_temp_bytes"] / row["naive_temp_bytes"]
            row["temp_over_floor"] = row["fused_temp_bytes"] / row["floor_bytes"]
            if (n, h, v, name) in PUBLISHED:
                row["published"] = PUBLISHED[(n, h, v, name)]
            flops = 6 * n * h * v
            if flops > time_limit_flops:
                row["not_timed"] = (
                    f"6·N·H·V = {flops / 1e12:.1f} TFLOP per call is above "
                    f"--max-linear-tflop {time_limit_flops / 1e12:g}"
                )
            else:
                keys = jax.random.split(jax.random.key(1), 3)
                xv = jax.random.normal(keys[0], (n, h), jnp.float32).astype(dtype)
                wv = (jax.random.normal(keys[1], (h, v), jnp.float32) / h**0.5).astype(dtype)
                yv = jax.random.randint(keys[2], (n,), 0, v)
                fns = {k: partial(jax.jit(f), xv, wv, yv) for k, f in steps.items()}
                times = interleaved_medians(fns, repeats)
                row.update(
                    fused_s=times["fused"],
                    one_pass_s=times["one_pass"],
                    naive_s=times["naive"],
                    time_ratio=times["fused"] / times["naive"],
                    vs_one_pass=times["fused"] / times["one_pass"],
                    fused_TFLOPs=flops / times["fused"] / 1e12,
                )
                if jax.default_backend() == "cpu" and measure_rss:
                    for variant in RSS_VARIANTS:
                        growth = peak_rss_growth(n, h, v, variant, dtype)
                        row[f"{variant.replace('-', '_')}_rss_growth"] = growth
            rows.append(row)
            _print_linear_row(row)
    return rows


def count_matmuls(fn, *args) -> int:
    """The ``dot_general`` operations in ``fn``'s program (one inside a loop counts once):
    the matmuls each token of a pass goes through."""

    def walk(jaxpr) -> int:
        count = 0
        for eqn in jaxpr.eqns:
            count += eqn.primitive.name == "dot_general"
            for value in eqn.params.values():
                for item in value if isinstance(value, (tuple, list)) else (value,):
                    inner = getattr(item, "jaxpr", item)
                    if hasattr(inner, "eqns"):
                        count += walk(inner)
        return count

    return walk(jax.make_jaxpr(fn)(*args).jaxpr)


_COLLECTIVE = re.compile(
    r"= (\(.*?\)|\S+) (all-reduce|all-gather|reduce-scatter|all-to-all|collective-permute)"
    r"(?:-start)?\("
)
_CALLED = re.compile(
    r"(body|to_apply|calls|condition|branch_computations)=\{?(%[\w.\-]+(?:, %[\w.\-]+)*)"
)
_TRIP_COUNT = re.compile(r'"known_trip_count":\{"n":"(\d+)"\}')


def _elements(shapes: str) -> int:
    total = 0
    for dims in re.findall(r"\w+\[([\d,]*)\]", shapes):
        total += math.prod(int(d) for d in dims.split(",") if d)
    return total


def collective_elements(hlo: str) -> dict[str, int]:
    """Elements of the results of a compiled program's collectives (all-reduce,
    all-gather, reduce-scatter, all-to-all, collective-permute), by kind, each counted as
    often as it runs: a collective in a loop body is multiplied by the loop's trip count
    (and by those of the loops around it). ``hlo`` is ``compiled.as_text()``."""
    calls: dict[str, list[tuple[str, int]]] = {}
    own: dict[str, dict[str, int]] = {}
    current = entry = ""
    for line in hlo.splitlines():
        if line and not line.startswith(" ") and line.rstrip().endswith("{"):
            current = line.split()[1] if line.startswith("ENTRY") else line.split()[0]
            entry = current if line.startswith("ENTRY") else entry
            calls[current], own[current] = [], {}
            continue
        match = _COLLECTIVE.search(line)
        if match and current:
            kind = match.group(2)
            own[current][kind] = own[current].get(kind, 0) + _elements(match.group(1))
        trip = _TRIP_COUNT.search(line)
        for called in _CALLED.finditer(line):
            if called.group(1) == "body" and trip is None:
                raise ValueError(f"a loop in {current} has no known trip count")
            times = int(trip.group(1)) if called.group(1) == "body" and trip else 1
            calls[current] += [(name, times) for name in called.group(2).split(", ")]
    totals: dict[str, int] = {}

    def visit(name: str, weight: int) -> None:
        for kind, count in own.get(name, {}).items():
            totals[kind] = totals.get(kind, 0) + count * weight
        for callee, times in calls.get(name, []):
            visit(callee, weight * times)

    visit(entry, 1)
    return totals


TOP_K = 64


def lm_cases(n: int, v: int):
    """The variants of the ``lm`` benchmark: name -> loss of ``(x, w, y, tx, tw)``, with
    ``x`` of shape ``(8, n // 8, H)`` (8 rows of packed sequences)."""
    rows = 8
    tokens = n // rows
    # Packed rows: sequences of 1/8 to 1/2 of a row, a padded tail.
    bounds = jnp.array([tokens // 8, tokens // 4, tokens // 2, tokens - tokens // 16])
    segments = jnp.searchsorted(bounds, jnp.arange(tokens), side="right") + 1
    segments = jnp.broadcast_to(jnp.where(segments > 4, 0, segments), (rows, tokens))
    token_weight = jnp.linspace(0.5, 1.5, n).reshape(rows, tokens)

    # A top-64 teacher: fixed ids and log-probabilities (their values do not change the cost).
    ids = jnp.broadcast_to((jnp.arange(TOP_K) * 7919) % v, (rows, tokens, TOP_K))
    log_probs = jnp.broadcast_to(jax.nn.log_softmax(-jnp.arange(TOP_K) / 8.0), ids.shape)

    def unfused_kl(x, w, y, tx, tw):
        student = jl.log_softmax(jnp.matmul(x, w, preferred_element_type=jnp.float32) / 2.0)
        teacher = jl.softmax(jnp.matmul(tx, tw, preferred_element_type=jnp.float32) / 2.0)
        return 4.0 * jl.kl_div(student, teacher, reduction="sum") / n

    return {
        "mean": lambda x, w, y, tx, tw: jl.linear_cross_entropy(x, w, y),
        "token_weight": lambda x, w, y, tx, tw: jl.linear_cross_entropy(
            x, w, y, token_weight=token_weight
        ),
        "sequence_mean": lambda x, w, y, tx, tw: jl.linear_cross_entropy(
            x, w, y, segment_ids=segments, reduction="sequence_mean"
        ),
        "normalizer": lambda x, w, y, tx, tw: jl.linear_cross_entropy(
            x, w, y, normalizer=jnp.sum(y >= 0) * 4.0
        ),
        "return_aux": lambda x, w, y, tx, tw: jl.linear_cross_entropy(x, w, y, return_aux=True)[0],
        "kl_dense": lambda x, w, y, tx, tw: jl.linear_kl_div(x, w, tx, tw, temperature=2.0),
        "kl_top64": lambda x, w, y, tx, tw: jl.linear_kl_div(
            x, w, teacher_topk=(ids, log_probs), temperature=2.0
        ),
        "kl_unfused": unfused_kl,
    }


def _lm_inputs(n: int, h: int, v: int, dtype, abstract: bool):
    shapes = [((8, n // 8, h), dtype), ((h, v), dtype), ((8, n // 8), jnp.int32)]
    shapes += [((8, n // 8, h), dtype), ((h, v), dtype)]
    if abstract:
        return [jax.ShapeDtypeStruct(s, d) for s, d in shapes]
    keys = jax.random.split(jax.random.key(2), 5)
    x = jax.random.normal(keys[0], shapes[0][0]).astype(dtype)
    w = (jax.random.normal(keys[1], (h, v)) / h**0.5).astype(dtype)
    y = jax.random.randint(keys[2], shapes[2][0], 0, v)
    tx = jax.random.normal(keys[3], shapes[0][0]).astype(dtype)
    tw = (jax.random.normal(keys[4], (h, v)) / h**0.5).astype(dtype)
    return [x, w, y, tx, tw]


def run_lm(memory_shape, time_shape, dtype, repeats: int) -> list[dict]:
    rows = []
    n, h, v = memory_shape
    steps = {name: jax.value_and_grad(fn, argnums=(0, 1)) for name, fn in lm_cases(n, v).items()}
    abstract = _lm_inputs(n, h, v, dtype, abstract=True)
    floor = (n * h + h * v) * jnp.dtype(dtype).itemsize
    for name, step in steps.items():
        rows.append(
            {
                "benchmark": "lm",
                "variant": name,
                "dtype": jnp.dtype(dtype).name,
                "memory_shape": [n, h, v],
                "matmuls": count_matmuls(step, *abstract),
                "temp_bytes": compiled_temp_bytes(step, *abstract),
                "floor_bytes": floor,
            }
        )
    base = next(r for r in rows if r["variant"] == "mean")
    unfused = next(r for r in rows if r["variant"] == "kl_unfused")
    for r in rows:
        r["temp_vs_mean"] = r["temp_bytes"] / base["temp_bytes"]
        r["temp_vs_unfused_kl"] = r["temp_bytes"] / unfused["temp_bytes"]
    tn, th, tv = time_shape
    values = _lm_inputs(tn, th, tv, dtype, abstract=False)
    timed = {
        name: partial(jax.jit(jax.value_and_grad(fn, argnums=(0, 1))), *values)
        for name, fn in lm_cases(tn, tv).items()
    }
    times = interleaved_medians(timed, repeats)
    for r in rows:
        r["time_shape"] = [tn, th, tv]
        r["time_s"] = times[r["variant"]]
        r["time_vs_mean"] = times[r["variant"]] / times["mean"]
        print(
            f"lm {r['variant']:<14} {r['dtype']:>8} matmuls {r['matmuls']}  temp "
            f"{_mib(r['temp_bytes'])} at {tuple(r['memory_shape'])} ({r['temp_vs_mean']:.2f} "
            f"of mean, {r['temp_vs_unfused_kl']:.4f} of unfused KL)  time "
            f"{format_seconds(r['time_s'])} at {tuple(r['time_shape'])} "
            f"({r['time_vs_mean']:.2f} of mean)",
            flush=True,
        )
    return rows


def lm_table(rows: list[dict]) -> str:
    """The lm rows as the markdown table the docs quote."""
    first = rows[0]
    memory = " × ".join(map(str, first["memory_shape"]))
    timing = " × ".join(map(str, first["time_shape"]))
    lines = [
        f"| variant ({first['dtype']}) | matmuls | temp bytes at {memory} | / mean "
        f"| / unfused KL | time at {timing} | / mean |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['variant']} | {r['matmuls']} | {_mib(r['temp_bytes'])} "
            f"| {r['temp_vs_mean']:.2f} | {r['temp_vs_unfused_kl']:.4f} "
            f"| {format_seconds(r['time_s'])} | {r['time_vs_mean']:.2f} |"
        )
    return "\n".join(lines)


def ctc_inputs(batch: int, frames: int, classes: int, max_length: int, dtype) -> tuple:
    """Batch-major logits, their paddings (the last up to 20 % of the frames of each
    sequence), labels other than the blank 0, and label paddings (up to 20 % of them)."""
    keys = jax.random.split(jax.random.key(3), 4)
    logits = jax.random.normal(keys[0], (batch, frames, classes)).astype(dtype)
    lengths = jax.random.randint(keys[1], (batch,), (4 * frames) // 5, frames + 1)
    labels = jax.random.randint(keys[2], (batch, max_length), 1, classes)
    label_lengths = jax.random.randint(keys[3], (batch,), (4 * max_length) // 5, max_length + 1)
    logit_paddings = (jnp.arange(frames) >= lengths[:, None]).astype(dtype)
    label_paddings = (jnp.arange(max_length) >= label_lengths[:, None]).astype(dtype)
    return logits, logit_paddings, labels, label_paddings


def ctc_cases() -> dict[str, Callable]:
    """The mean CTC loss of ``(logits, logit_paddings, labels, label_paddings)`` by
    each implementation; optax's only where it is installed."""

    def time_major(z, zp, y, yp):
        lengths = jnp.sum(zp == 0, axis=1)
        log_probs = jl.log_softmax(z).transpose(1, 0, 2)
        return jl.ctc_loss(log_probs, y, lengths, jnp.sum(yp == 0, axis=1), reduction="sum")

    cases: dict[str, Callable] = {
        "ctc_loss_with_paddings": lambda *a: jnp.sum(jl.ctc_loss_with_paddings(*a)),
        "ctc_loss (T, B, C)": time_major,
    }
    try:
        import optax  # type: ignore[import-untyped]
    except ImportError:
        return cases
    cases["optax.ctc_loss"] = lambda *a: jnp.sum(optax.ctc_loss(*a))
    return cases


def run_ctc(shape: tuple[int, ...], dtype, repeats: int) -> list[dict]:
    batch, frames, classes, max_length = shape
    inputs = ctc_inputs(batch, frames, classes, max_length, dtype)
    steps = {name: jax.jit(jax.value_and_grad(fn)) for name, fn in ctc_cases().items()}
    times = interleaved_medians({k: partial(f, *inputs) for k, f in steps.items()}, repeats)
    base = times.get("optax.ctc_loss")
    rows = []
    for name, step in steps.items():
        row = {
            "benchmark": "ctc",
            "variant": name,
            "dtype": jnp.dtype(dtype).name,
            "shape": list(shape),
            "time_s": times[name],
            "time_vs_optax": None if base is None else times[name] / base,
            "temp_bytes": compiled_temp_bytes(step, *inputs),
        }
        rows.append(row)
        vs = "" if base is None else f" ({row['time_vs_optax']:.2f} of optax)"
        print(
            f"ctc {name:<24} {row['dtype']:>8} B×T×C×L {tuple(shape)}  time "
            f"{format_seconds(row['time_s'])}{vs}  temp {_mib(row['temp_bytes'])}",
            flush=True,
        )
    return rows


def ctc_table(rows: list[dict]) -> str:
    """The ctc rows as the markdown table the docs quote."""
    first = rows[0]
    lines = [
        f"| implementation ({first['dtype']}, B × T × C × L = "
        f"{' × '.join(map(str, first['shape']))}) | value + gradient | / optax | temp bytes |",
        "|---|---|---|---|",
    ]
    for r in rows:
        vs = "–" if r["time_vs_optax"] is None else f"{r['time_vs_optax']:.2f}"
        lines.append(
            f"| {r['variant']} | {format_seconds(r['time_s'])} | {vs} | {_mib(r['temp_bytes'])} |"
        )
    return "\n".join(lines)


def _print_linear_row(row) -> None:
    mib = 2**20
    print(
        f"linear_cross_entropy {str(tuple(row['shape'])):>22} {row['dtype']:>8}  temp bytes: "
        f"fused {row['fused_temp_bytes'] / mib:.1f} MiB  one pass "
        f"{row['one_pass_temp_bytes'] / mib:.1f} MiB  naive {row['naive_temp_bytes'] / mib:.1f} MiB"
        f"  fused/naive {row['temp_ratio']:.4f}  floor (dx + dw) {row['floor_bytes'] / mib:.1f} MiB"
        f"  fused temp/floor {row['temp_over_floor']:.3f}",
        flush=True,
    )
    if "fused_s" in row:
        print(
            f"    time fused {format_seconds(row['fused_s'])}  one pass "
            f"{format_seconds(row['one_pass_s'])}  naive {format_seconds(row['naive_s'])}  "
            f"fused/one pass {row['vs_one_pass']:.2f}  fused/naive {row['time_ratio']:.2f}",
            flush=True,
        )
    else:
        print(f"    not timed: {row['not_timed']}", flush=True)
    if row.get("fused_rss_growth"):
        growths = "  ".join(
            f"{v} {row[v.replace('-', '_') + '_rss_growth'] / mib:.0f} MiB"
            for v in RSS_VARIANTS
            if row.get(v.replace("-", "_") + "_rss_growth")
        )
        print(
            f"    peak RSS growth: {growths}  fused/floor "
            f"{row['fused_rss_growth'] / row['floor_bytes']:.2f}",
            flush=True,
        )
    if "published" in row:
        total = (row["floor_bytes"] + row["fused_temp_bytes"]) / mib
        print(
            f"    jaxloss: {total:.0f} MiB (gradients + compiled temporaries); "
            f"published: {row['published']}",
            flush=True,
        )


def _mib(count: float) -> str:
    return f"{count / 2**20:.1f} MiB"


def losses_table(rows: list[dict]) -> str:
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


def linear_table(rows: list[dict]) -> str:
    """The linear_cross_entropy rows as the markdown tables the docs quote: memory, then
    time and resident set where measured."""
    lines = [
        "| N × H × V | dtype | floor: dx + dw | temp bytes: fused | one pass | naive "
        "| fused temp / floor | fused / naive (< 1: smaller) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {' × '.join(map(str, r['shape']))} | {r['dtype']} | {_mib(r['floor_bytes'])} "
            f"| {_mib(r['fused_temp_bytes'])} | {_mib(r['one_pass_temp_bytes'])} "
            f"| {_mib(r['naive_temp_bytes'])} | {r['temp_over_floor']:.3f} "
            f"| {r['temp_ratio']:.3f} |"
        )
    timed = [r for r in rows if "fused_s" in r]
    if timed:
        lines += [
            "",
            "| N × H × V | dtype | time: fused | one pass | naive | fused / one pass "
            "| fused / naive (< 1: faster) | peak RSS growth: fused | one pass | naive "
            "| floor program | fused / (dx + dw) |",
            "|---|---|---|---|---|---|---|---|---|---|---|---|",
        ]
        for r in timed:
            rss = [r.get(f"{v.replace('-', '_')}_rss_growth") for v in RSS_VARIANTS]
            shown = " | ".join(f"{g / 2**20:.0f} MiB" if g else "—" for g in rss)
            ratio = f"{rss[0] / r['floor_bytes']:.2f}" if rss[0] else "—"
            lines.append(
                f"| {' × '.join(map(str, r['shape']))} | {r['dtype']} "
                f"| {format_seconds(r['fused_s'])} | {format_seconds(r['one_pass_s'])} "
                f"| {format_seconds(r['naive_s'])} | {r['vs_one_pass']:.2f} "
                f"| {r['time_ratio']:.2f} | {shown} | {ratio} |"
            )
    return "\n".join(lines)


def environment_line(env: dict) -> str:
    return (
        f"{env['date']}, {env['backend']} ({env['device']}, {env['machine']}), "
        f"jax {env['jax']}, Python {env['python']}"
    )


def report(result: dict) -> str:
    """Markdown for a saved result: the environment line and its tables."""
    parts = [environment_line(result["environment"])]
    if result.get("losses"):
        parts.append(losses_table(result["losses"]))
    if result.get("linear"):
        parts.append(linear_table(result["linear"]))
    if result.get("lm"):
        parts.append(lm_table(result["lm"]))
    if result.get("ctc"):
        parts.append(ctc_table(result["ctc"]))
    return "\n\n".join(parts)


def plot(result: dict, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    losses = result.get("losses", [])
    linear = result.get("linear", [])
    fig, axes = plt.subplots(1, 2, figsize=(13, 4.5))
    labels = [f"{r['benchmark']}\n{tuple(r['shape'])} {r['dtype']}" for r in losses]
    positions = range(len(losses))
    axes[0].barh(
        [p - 0.2 for p in positions],
        [r["jaxloss_vs_copy"] for r in losses],
        height=0.4,
        label="jaxloss / copy floor",
    )
    axes[0].barh(
        [p + 0.2 for p in positions],
        [r["naive_s"] / r["copy_s"] for r in losses],
        height=0.4,
        label="naive autodiff / copy floor",
    )
    axes[0].axvline(1.0, color="k", lw=1)
    axes[0].set_yticks(list(positions), labels, fontsize=7)
    axes[0].set_xlabel("time / time of one read + one write of the logits (lower is faster)")
    axes[0].legend(fontsize=8)
    lin_labels = ["×".join(map(str, r["shape"])) + f"\n{r['dtype']}" for r in linear]
    axes[1].bar(range(len(linear)), [r["temp_over_floor"] for r in linear])
    axes[1].set_xticks(range(len(linear)), lin_labels, fontsize=7, rotation=25)
    axes[1].set_ylabel("compiled temp bytes / (dx + dw bytes) (lower: less memory)")
    env = result["environment"]
    fig.suptitle(
        f"jaxloss benchmark, {env['date']}, {env['backend']} ({env['device']}), jax {env['jax']}",
        fontsize=10,
    )
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _parse_shapes(text: str, arity: int):
    shapes = []
    for part in text.split(","):
        dims = tuple(int(d) for d in part.lower().split("x"))
        if len(dims) != arity:
            raise argparse.ArgumentTypeError(f"expected {arity} sizes joined by x, got {part!r}")
        shapes.append(dims)
    return tuple(shapes)


class _HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """The module docstring as written, and each option's default (where it has one) after its
    help."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if action.default not in (None, False, argparse.SUPPRESS) and "default" not in text:
            text += " (default: %(default)s)"
        return text


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m jaxloss.benchmark",
        description=__doc__,
        formatter_class=_HelpFormatter,
    )
    parser.add_argument(
        "which",
        nargs="?",
        default="all",
        choices=["all", "losses", "linear", "lm", "ctc"],
        help="which benchmark to run",
    )
    parser.add_argument(
        "--sizes",
        type=lambda s: _parse_shapes(s, 2),
        default=None,
        help="loss sizes as NxC[,NxC...] (default: "
        + ",".join("x".join(map(str, s)) for s in DEFAULT_LOSS_SIZES)
        + ")",
    )
    parser.add_argument(
        "--shapes",
        type=lambda s: _parse_shapes(s, 3),
        default=None,
        help="linear shapes as NxHxV[,...] (default: "
        + ",".join("x".join(map(str, s)) for s in DEFAULT_LINEAR_SHAPES)
        + ")",
    )
    parser.add_argument(
        "--lm-shapes",
        type=lambda s: _parse_shapes(s, 3),
        default=None,
        help="lm shapes as NxHxV,NxHxV: for compiled memory, then for time (default: "
        + ",".join("x".join(map(str, s)) for s in (DEFAULT_LM_MEMORY_SHAPE, DEFAULT_LM_TIME_SHAPE))
        + ")",
    )
    parser.add_argument(
        "--ctc-shape",
        type=lambda s: _parse_shapes(s, 4)[0],
        default=None,
        help="ctc shape as BxTxCxL (default: " + "x".join(map(str, DEFAULT_CTC_SHAPE)) + ")",
    )
    parser.add_argument(
        "--dtypes", default="float32,bfloat16", help="comma-separated dtypes of the inputs"
    )
    parser.add_argument(
        "--repeats",
        type=int,
        default=7,
        help="timed calls per function, whose median is reported (3 with the smoke sizes)",
    )
    parser.add_argument(
        "--max-linear-tflop",
        type=float,
        default=2.0,
        help="time a linear shape only if 6*N*H*V is below this many TFLOP "
        "(larger shapes get compiled temp bytes only)",
    )
    parser.add_argument(
        "--no-rss",
        action="store_true",
        help="skip the peak-RSS measurement of linear_cross_entropy (CPU only)",
    )
    parser.add_argument(
        "--smoke", action="store_true", help="tiny sizes: checks that the command runs"
    )
    parser.add_argument(
        "--json", dest="json_path", default=None, help="write the results to this file"
    )
    parser.add_argument(
        "--plot", dest="plot_path", default=None, help="draw the ratios to this PNG"
    )
    parser.add_argument(
        "--report",
        metavar="JSON",
        default=None,
        help="print the markdown tables of a saved --json result and exit (runs nothing)",
    )
    args = parser.parse_args(argv)
    if args.report:
        with open(args.report) as f:
            print(report(json.load(f)))
        return 0
    dtypes = [jnp.dtype(d) for d in args.dtypes.split(",")]
    sizes = args.sizes or (SMOKE_LOSS_SIZES if args.smoke else DEFAULT_LOSS_SIZES)
    shapes = args.shapes or (SMOKE_LINEAR_SHAPES if args.smoke else DEFAULT_LINEAR_SHAPES)
    repeats = 3 if args.smoke and args.repeats == 7 else args.repeats
    result: dict[str, object] = {"environment": _environment()}
    print(json.dumps(result["environment"]), flush=True)
    print(
        "each ratio is jaxloss / baseline (time or bytes): below 1 means jaxloss is faster "
        "or smaller",
        flush=True,
    )
    if args.which in ("all", "losses"):
        result["losses"] = run_losses(sizes, dtypes, repeats)
    if args.which in ("all", "linear"):
        result["linear"] = run_linear(
            shapes, dtypes, repeats, args.max_linear_tflop * 1e12, measure_rss=not args.no_rss
        )
    if args.which in ("all", "lm"):
        memory_shape, time_shape = args.lm_shapes or (
            (SMOKE_LINEAR_SHAPES[0],) * 2
            if args.smoke
            else (DEFAULT_LM_MEMORY_SHAPE, DEFAULT_LM_TIME_SHAPE)
        )
        result["lm"] = run_lm(memory_shape, time_shape, dtypes[0], repeats)
    if args.which in ("all", "ctc"):
        ctc_shape = args.ctc_shape or (SMOKE_CTC_SHAPE if args.smoke else DEFAULT_CTC_SHAPE)
        result["ctc"] = run_ctc(ctc_shape, dtypes[0], repeats)
    if args.json_path:
        with open(args.json_path, "w") as f:
            json.dump(result, f, indent=2)
    if args.plot_path:
        plot(result, args.plot_path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
