"""Benchmarks: ``python -m jaxloss.benchmark [losses|linear|lm|all] [options]``.

``losses``: value-and-gradient time of jaxloss against optax's equivalent and the
copy floor (a jitted ``x * 2``: one read and one write of the logits), run
interleaved A/B/C in one process so that drift on a shared machine hits all
three alike, with the bandwidth each achieves.

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

Every ratio is a time (or byte count) of jaxloss divided by the same figure of
its baseline: below 1 means jaxloss is faster (or smaller). Ratios, not absolute
times, are the figures to compare across machines.
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import platform
import re
import statistics
import sys
import time
from collections.abc import Callable, Mapping
from functools import partial

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


def _loss_cases(n: int, c: int, dtype):
    """(name, jaxloss fn, baseline fn, baseline name, operands, bytes that must move)."""
    try:
        import optax  # type: ignore[import-untyped]
    except ImportError:  # the core package does not depend on optax
        optax = None
    keys = jax.random.split(jax.random.key(0), 3)
    logits = jax.random.normal(keys[0], (n, c), jnp.float32).astype(dtype)
    labels = jax.random.randint(keys[1], (n,), 0, c)
    probs = jax.nn.softmax(jax.random.normal(keys[2], (n, c), jnp.float32)).astype(dtype)
    binary = (jax.random.uniform(keys[2], (n, c)) < 0.5).astype(dtype)
    cotangent = jnp.ones((n, c), dtype)
    item = jnp.dtype(dtype).itemsize
    size = n * c * item

    def vg(fn):
        return jax.jit(jax.value_and_grad(fn))

    def vjp(fn):
        def run(x, ct):
            y, pullback = jax.vjp(fn, x)
            return y, pullback(ct)[0]

        return jax.jit(run)

    def optax_mean(name):
        return None if optax is None else lambda a, b: jnp.mean(getattr(optax, name)(a, b))

    table = [
        # name, jaxloss, baseline, baseline's name, operands, arrays of N x C moved
        (
            "cross_entropy (index)",
            jl.cross_entropy,
            optax_mean("softmax_cross_entropy_with_integer_labels"),
            "optax int-label CE",
            (logits, labels),
            2,
        ),
        (
            "cross_entropy (probs)",
            jl.cross_entropy,
            optax_mean("softmax_cross_entropy"),
            "optax softmax CE",
            (logits, probs),
            3,
        ),
        (
            "bce_with_logits",
            jl.binary_cross_entropy_with_logits,
            optax_mean("sigmoid_binary_cross_entropy"),
            "optax sigmoid BCE",
            (logits, binary),
            3,
        ),
        (
            "sigmoid_focal_loss",
            jl.sigmoid_focal_loss,
            None
            if optax is None
            else lambda a, b: jnp.mean(optax.sigmoid_focal_loss(a, b, alpha=0.25, gamma=2.0)),
            "optax sigmoid focal",
            (logits, binary),
            3,
        ),
    ]
    cases = [
        (name, vg(ours), None if base is None else vg(base), base_name, operands, k * size)
        for name, ours, base, base_name, operands, k in table
    ]
    cases.append(
        (
            "log_softmax (fwd+vjp)",
            vjp(jl.log_softmax),
            vjp(jax.nn.log_softmax),
            "jax.nn.log_softmax",
            (logits, cotangent),
            4 * size,
        )
    )
    return cases, logits


def run_losses(sizes, dtypes, repeats: int) -> list[dict]:
    rows = []
    copy = jax.jit(lambda x: x * 2)
    for n, c in sizes:
        for dtype in dtypes:
            cases, logits = _loss_cases(n, c, dtype)
            floor_bytes = 2 * n * c * jnp.dtype(dtype).itemsize
            for name, ours, baseline, baseline_name, operands, moved in cases:
                fns = {"jaxloss": partial(ours, *operands), "copy": partial(copy, logits)}
                if baseline is not None:
                    fns["baseline"] = partial(baseline, *operands)
                times = interleaved_medians(fns, repeats)
                row = {
                    "benchmark": name,
                    "shape": [n, c],
                    "dtype": jnp.dtype(dtype).name,
                    "jaxloss_s": times["jaxloss"],
                    "copy_s": times["copy"],
                    "baseline": baseline_name,
                    "baseline_s": times.get("baseline"),
                    "jaxloss_vs_copy": times["jaxloss"] / times["copy"],
                    "jaxloss_vs_baseline": (
                        times["jaxloss"] / times["baseline"] if "baseline" in times else None
                    ),
                    "jaxloss_GBps": moved / times["jaxloss"] / 1e9,
                    "copy_GBps": floor_bytes / times["copy"] / 1e9,
                    "bytes_moved": moved,
                }
                rows.append(row)
                _print_loss_row(row)
    return rows


def format_seconds(seconds: float) -> str:
    """A time with a unit that keeps three significant digits (never ``0.000 s``)."""
    unit, scale = next(
        ((u, f) for u, f in (("s", 1.0), ("ms", 1e-3)) if seconds >= f), ("µs", 1e-6)
    )
    value = seconds / scale
    digits = 2 if value < 10 else 1 if value < 100 else 0
    return f"{value:.{digits}f} {unit}"


def _print_loss_row(row) -> None:
    base = (
        f"{format_seconds(row['baseline_s'])} (jaxloss/baseline {row['jaxloss_vs_baseline']:.2f})"
        if row["baseline_s"]
        else "n/a"
    )
    print(
        f"{row['benchmark']:<24} {str(tuple(row['shape'])):>15} {row['dtype']:>8}  "
        f"jaxloss {format_seconds(row['jaxloss_s'])}  {row['baseline']}: {base}  "
        f"copy {format_seconds(row['copy_s'])}  jaxloss/copy {row['jaxloss_vs_copy']:.2f}  "
        f"{row['jaxloss_GBps']:.1f} GB/s (copy {row['copy_GBps']:.1f})",
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
        "| benchmark | shape | dtype | jaxloss | baseline | jaxloss / baseline (< 1: faster) "
        "| copy floor | jaxloss / copy | jaxloss GB/s | copy GB/s |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        base = f"{r['baseline']}: {format_seconds(r['baseline_s'])}" if r["baseline_s"] else "n/a"
        ratio = f"{r['jaxloss_vs_baseline']:.2f}" if r["baseline_s"] else "n/a"
        lines.append(
            f"| {r['benchmark']} | {'×'.join(map(str, r['shape']))} | {r['dtype']} "
            f"| {format_seconds(r['jaxloss_s'])} | {base} | {ratio} "
            f"| {format_seconds(r['copy_s'])} "
            f"| {r['jaxloss_vs_copy']:.2f} | {r['jaxloss_GBps']:.1f} | {r['copy_GBps']:.1f} |"
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
        [r["baseline_s"] / r["copy_s"] if r["baseline_s"] else 0 for r in losses],
        height=0.4,
        label="baseline / copy floor",
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
        choices=["all", "losses", "linear", "lm"],
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
    if args.json_path:
        with open(args.json_path, "w") as f:
            json.dump(result, f, indent=2)
    if args.plot_path:
        plot(result, args.plot_path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
