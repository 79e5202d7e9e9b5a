"""The peak growth of the resident set during one value-and-gradient call of a linear
head, printed in bytes: ``python benchmarks/rss_probe.py N H V VARIANT DTYPE [CHUNK]``
(``CHUNK``: the fused variants' ``chunk_size``; their default otherwise).

A fresh process per measurement: inputs made, program compiled and called once (the
runtime's one-time set-up is not the call's memory), then one call with a thread
sampling ``/proc/self/statm``. Variants: ``fused``, ``one-pass``, ``naive`` (the unfused
``cross_entropy(x @ w, y)``) and ``floor``, a program that only writes arrays of the
gradients' shapes, the least any call can add.
"""

import gc
import os
import sys
import threading
import time

import jax
import jax.numpy as jnp

import jaxloss as jl

VARIANTS = ("fused", "one-pass", "naive", "floor")
PAGE = os.sysconf("SC_PAGE_SIZE")


def resident_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * PAGE


def step_of(variant: str, y, chunk_size: int | None = None):
    if variant == "fused":
        loss = lambda x, w: jl.linear_cross_entropy(x, w, y, chunk_size=chunk_size)  # noqa: E731
    elif variant == "one-pass":
        loss = lambda x, w: jl.linear_cross_entropy(  # noqa: E731
            x, w, y, passes=1, chunk_size=chunk_size
        )
    elif variant == "naive":
        loss = lambda x, w: jl.cross_entropy(  # noqa: E731
            jnp.matmul(x, w, preferred_element_type=jnp.float32), y
        )
    else:
        return lambda x, w: (jnp.sum(x[0]), (x * 2, w * 2))
    return jax.value_and_grad(loss, argnums=(0, 1))


def peak_growth(step, x, w) -> int:
    out = step(x, w)
    jax.block_until_ready(out)
    del out
    gc.collect()
    peak, done = [0], threading.Event()

    def sample():
        while not done.is_set():
            peak[0] = max(peak[0], resident_bytes())
            time.sleep(0.0002)

    before = resident_bytes()
    sampler = threading.Thread(target=sample)
    sampler.start()
    # The result is kept until the last reading: its buffers count even if the sampler
    # thread did not run while the call did (a loaded machine).
    out = jax.block_until_ready(step(x, w))
    done.set()
    sampler.join()
    growth = max(peak[0], resident_bytes()) - before
    del out
    return growth


def main(argv: list[str]) -> None:
    n, h, v = map(int, argv[:3])
    variant, dtype = argv[3:5]
    if variant not in VARIANTS:
        raise SystemExit(f"VARIANT must be one of {VARIANTS}, got {variant!r}")
    keys = jax.random.split(jax.random.key(0), 3)
    x = jax.random.normal(keys[0], (n, h)).astype(dtype)
    w = (jax.random.normal(keys[1], (h, v)) / h**0.5).astype(dtype)
    y = jax.random.randint(keys[2], (n,), 0, v)
    chunk_size = int(argv[5]) if len(argv) > 5 else None
    step = jax.jit(step_of(variant, y, chunk_size)).lower(x, w).compile()
    print(peak_growth(step, x, w))


if __name__ == "__main__":
    main(sys.argv[1:])
