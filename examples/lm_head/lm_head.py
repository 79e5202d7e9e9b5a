"""A byte-level language-model head trained with ``linear_cross_entropy``, data-parallel
over tokens and model-parallel over the vocabulary, in one process or several.

The model predicts each byte of a text from the ``--context`` bytes before it: their
embeddings, concatenated, go through one tanh layer to a hidden state ``h``, and the
loss is ``linear_cross_entropy(h, w, next_byte)`` with the output projection ``w``
(``hidden x 256``) sharded over the mesh's ``"vocab"`` axis and the tokens over its
``"data"`` axis. The corpus is the repository's own documentation (README and docs/),
read as bytes: nothing is downloaded.

One process, every local device::

    python examples/lm_head/lm_head.py --steps 300

Two processes on one machine, 4 CPU devices each (one line per process; on a cluster
run one per host with the coordinator's address)::

    python examples/lm_head/lm_head.py --num-processes 2 --process-id 0 \\
        --coordinator localhost:12355 --cpu-devices 4 &
    python examples/lm_head/lm_head.py --num-processes 2 --process-id 1 \\
        --coordinator localhost:12355 --cpu-devices 4

``--explicit`` runs the same step with explicit axis types under ``jax.set_mesh``.

It prints the loss curve, tokens per second, each device's memory for the step (XLA's
compiled sizes) and what the step communicates next to the same step with the unfused
loss ``cross_entropy(h @ w, next_byte)``, and writes them to ``--json``.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import os
import pathlib
import platform
import sys
import time

ROOT = pathlib.Path(__file__).resolve().parents[2]
VOCAB = 256  # bytes


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=300, help="optimizer steps")
    parser.add_argument("--batch", type=int, default=32, help="rows per step (whole mesh)")
    parser.add_argument("--length", type=int, default=128, help="predicted bytes per row")
    parser.add_argument("--context", type=int, default=8, help="bytes the model sees")
    parser.add_argument("--embed", type=int, default=32, help="embedding size")
    parser.add_argument("--hidden", type=int, default=256, help="hidden size H")
    parser.add_argument("--learning-rate", type=float, default=3e-3)
    parser.add_argument("--log-every", type=int, default=25, help="steps between loss lines")
    parser.add_argument(
        "--vocab-parallel", type=int, default=None,
        help="devices along the vocabulary axis (default: 2 if the device count is even)",
    )  # fmt: skip
    parser.add_argument("--json", default=None, help="write the results to this file")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--coordinator", default=None, help="host:port of process 0")
    parser.add_argument("--num-processes", type=int, default=1)
    parser.add_argument("--process-id", type=int, default=0)
    parser.add_argument(
        "--cpu-devices", type=int, default=None,
        help="on CPU, the devices this process simulates (XLA's host platform device count)",
    )  # fmt: skip
    parser.add_argument(
        "--explicit", action="store_true",
        help="explicit axis types under jax.set_mesh (default: automatic sharding)",
    )  # fmt: skip
    return parser.parse_args(argv)


def corpus() -> bytes:
    """The repository's documentation as one byte string."""
    files = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
    return b"\n".join(f.read_bytes() for f in files)


def main(argv=None) -> dict:
    args = parse_args(argv)
    if args.cpu_devices:  # before JAX starts
        os.environ["XLA_FLAGS"] = (
            os.environ.get("XLA_FLAGS", "")
            + f" --xla_force_host_platform_device_count={args.cpu_devices}"
        )
    import jax
    import jax.numpy as jnp
    import numpy as np
    import optax
    from jax.sharding import NamedSharding
    from jax.sharding import PartitionSpec as P

    import jaxloss as jl

    # The communication count is the benchmarks' own (benchmarks/measure.py, at the top of
    # the repository): the same count the tests compare.
    sys.path.insert(0, str(ROOT))
    from benchmarks.measure import collective_elements

    if args.num_processes > 1:
        # Collectives between processes' CPU devices (no effect on GPU or TPU devices).
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
        jax.distributed.initialize(
            coordinator_address=args.coordinator,
            num_processes=args.num_processes,
            process_id=args.process_id,
        )
    devices = jax.device_count()
    vocab_parallel = args.vocab_parallel or (2 if devices % 2 == 0 else 1)
    if devices % vocab_parallel or VOCAB % vocab_parallel:
        raise SystemExit(f"--vocab-parallel {vocab_parallel} must divide {devices} and {VOCAB}")
    data_parallel = devices // vocab_parallel
    if args.batch % data_parallel:
        raise SystemExit(f"--batch {args.batch} must be a multiple of {data_parallel}")
    mesh = jax.make_mesh(
        (data_parallel, vocab_parallel),
        ("data", "vocab"),
        axis_types=(
            jax.sharding.AxisType.Explicit if args.explicit else jax.sharding.AxisType.Auto,
        )
        * 2,
    )
    leader = jax.process_index() == 0

    def say(*parts):
        if leader:
            print(*parts, flush=True)

    text = np.frombuffer(corpus(), np.uint8)
    say(
        f"{jax.process_count()} process(es), {devices} devices ({jax.default_backend()}), "
        f"mesh data={data_parallel} x vocab={vocab_parallel}, corpus {text.size} bytes"
    )

    def put(array, *spec):
        """A global array from data every process can build (here: the same seed); each
        process materializes only its own devices' slices of it."""
        array = np.asarray(array)
        sharding = NamedSharding(mesh, P(*spec))
        return jax.make_array_from_callback(array.shape, sharding, lambda index: array[index])

    rng = np.random.default_rng(args.seed)
    params = {
        "embed": rng.normal(size=(VOCAB, args.embed)).astype(np.float32) * 0.1,
        "dense": (
            rng.normal(size=(args.context * args.embed, args.hidden))
            / np.sqrt(args.context * args.embed)
        ).astype(np.float32),
        "bias": np.zeros(args.hidden, np.float32),
        "w": (rng.normal(size=(args.hidden, VOCAB)) / np.sqrt(args.hidden)).astype(np.float32),
    }
    params = {k: put(v, *((None, "vocab") if k == "w" else ())) for k, v in params.items()}
    optimizer = optax.adam(args.learning_rate)
    opt_state = optimizer.init(params)

    def loss_fn(params, windows, fused=True):
        # windows: [rows, length + context] bytes; predict byte t from the context before it.
        rows, span = windows.shape
        length = span - args.context
        index = jnp.arange(length)[:, None] + jnp.arange(args.context)[None, :]
        contexts = windows[:, index]  # [rows, length, context]
        by_row = NamedSharding(mesh, P("data")) if args.explicit else None
        features = params["embed"].at[contexts].get(out_sharding=by_row).reshape(rows, length, -1)
        hidden = jnp.tanh(features @ params["dense"] + params["bias"])
        targets = windows[:, args.context :]
        if fused:
            return jl.linear_cross_entropy(hidden, params["w"], targets)
        return jl.cross_entropy(hidden @ params["w"], targets)

    def make_step(fused):
        @jax.jit
        def step(params, opt_state, windows):
            loss, grads = jax.value_and_grad(loss_fn)(params, windows, fused)
            updates, opt_state = optimizer.update(grads, opt_state, params)
            return optax.apply_updates(params, updates), opt_state, loss

        return step

    span = args.length + args.context

    def batch(step_index):
        starts = np.random.default_rng([args.seed, step_index]).integers(
            0, text.size - span, args.batch
        )
        windows = text[starts[:, None] + np.arange(span)].astype(np.int32)
        return put(windows, "data", None)

    with jax.set_mesh(mesh) if args.explicit else contextlib.nullcontext():
        compiled = make_step(True).lower(params, opt_state, batch(0)).compile()
        unfused = make_step(False).lower(params, opt_state, batch(0)).compile()
    communication = {
        "fused": sum(collective_elements(compiled.as_text()).values()),
        "unfused": sum(collective_elements(unfused.as_text()).values()),
    }
    say(
        "per-step communication (elements of every collective's result, loops times their "
        f"trip counts): {communication['fused']:,} with linear_cross_entropy, "
        f"{communication['unfused']:,} with the unfused loss"
    )
    analysis = compiled.memory_analysis()
    memory = {
        "temp_bytes": int(analysis.temp_size_in_bytes),
        "argument_bytes": int(analysis.argument_size_in_bytes),
        "output_bytes": int(analysis.output_size_in_bytes),
    }
    say(
        "per-device memory of the step (XLA's compiled sizes): "
        + ", ".join(f"{k.replace('_bytes', '')} {v / 2**20:.2f} MiB" for k, v in memory.items())
    )
    curve = []
    tokens_per_step = args.batch * args.length
    start = None
    for i in range(args.steps):
        if i == 1:  # the first step includes start-up; time the rest
            start = time.perf_counter()
        params, opt_state, loss = compiled(params, opt_state, batch(i))
        if i % args.log_every == 0 or i == args.steps - 1:
            value = float(loss.addressable_data(0))
            curve.append([i, value])
            say(f"step {i:5d}  loss {value:.4f} nats/byte")
    jax.block_until_ready(params)
    elapsed = time.perf_counter() - start if start is not None else float("nan")
    tokens_per_second = tokens_per_step * (args.steps - 1) / elapsed if args.steps > 1 else None
    if tokens_per_second:
        say(f"{tokens_per_second:,.0f} tokens/s over steps 1..{args.steps - 1}")
    result = {
        "processes": jax.process_count(),
        "devices": devices,
        "backend": jax.default_backend(),
        "mesh": {"data": data_parallel, "vocab": vocab_parallel},
        "tokens_per_step": tokens_per_step,
        "loss_curve": curve,
        "tokens_per_second": tokens_per_second,
        "memory_per_device": memory,
        "communication_per_step": communication,
        "sharding": "explicit" if args.explicit else "auto",
        "jax": jax.__version__,
        "date": datetime.date.today().isoformat(),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores",
    }
    if args.json and leader:
        pathlib.Path(args.json).write_text(json.dumps(result, indent=2))
    if args.num_processes > 1:
        jax.distributed.shutdown()
    return result


if __name__ == "__main__":
    main(sys.argv[1:])
