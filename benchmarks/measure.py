"""What the benchmarks, the tests and the examples measure, in one place: interleaved
median times, compiled temporary bytes, the matmuls of a program and the elements its
collectives move (loops weighted by their trip counts).

Run from the repository root (``python -m benchmarks``); not part of the installed
package, and nothing here is jaxloss's API.
"""

from __future__ import annotations

import datetime
import math
import platform
import re
import statistics
import time
from collections.abc import Callable, Mapping

import jax


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


def environment() -> dict:
    device = jax.devices()[0]
    return {
        "date": datetime.date.today().isoformat(),
        "backend": jax.default_backend(),
        "device": f"{device.device_kind} x{jax.device_count()}",
        "jax": jax.__version__,
        "python": platform.python_version(),
        "machine": platform.machine(),
    }


def format_seconds(seconds: float) -> str:
    """A time with a unit that keeps three significant digits (never ``0.000 s``)."""
    unit, scale = next(
        ((u, f) for u, f in (("s", 1.0), ("ms", 1e-3)) if seconds >= f), ("µs", 1e-6)
    )
    value = seconds / scale
    digits = 2 if value < 10 else 1 if value < 100 else 0
    return f"{value:.{digits}f} {unit}"


def compiled_temp_bytes(fn, *args) -> int:
    analysis = jax.jit(fn).lower(*args).compile().memory_analysis()
    if analysis is None:  # a backend without memory analysis
        return -1
    return int(analysis.temp_size_in_bytes)


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


def mib(count: float) -> str:
    return f"{count / 2**20:.1f} MiB"
