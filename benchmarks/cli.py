"""Benchmarks, run from the repository root:
``python -m benchmarks [losses|linear|lm|matmuls|memory|ctc|contrastive|all] [options]``.

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

``matmuls``: ``linear_cross_entropy`` (by default, with one pass and with two) and the
unfused loss against the three matmuls of a linear head's value and gradients alone:
interleaved median times of value + dX + dW, each as a multiple of the three matmuls'
and of the unfused loss's.

``memory``: where the resident memory of ``linear_cross_entropy``'s value and gradients
goes, on CPU, in the first of ``--dtypes``: the peak growth of the resident set during
one call (fresh processes) of the floor program, of the default, of half its chunk
size, and of the default with XLA's own matmuls in place of its YNNPACK fusions, beside
the compiled temporary bytes.

``ctc``: ``ctc_loss_with_paddings`` and ``ctc_loss`` (PyTorch's time-major layout)
against ``optax.ctc_loss`` on the same batch-major logits (each takes the log-softmax
of unnormalized scores): interleaved median value-and-gradient times and compiled
temporary bytes.

``contrastive``: ``contrastive_loss`` and ``sigmoid_contrastive_loss`` against the
written-out ``B x B`` logits (optax's cross-entropy for CLIP): value and every
gradient, interleaved median times and compiled temporary bytes.

Every ratio is a time (or byte count) of jaxloss divided by the same figure of
its baseline: below 1 means jaxloss is faster (or smaller). Ratios, not absolute
times, are the figures to compare across machines.
"""

from __future__ import annotations

import argparse
import json

import jax
import jax.numpy as jnp

from benchmarks import contrastive, ctc, linear, lm, losses, matmuls, memory
from benchmarks.measure import environment
from benchmarks.report import plot, report


def parse_shapes(text: str, arity: int) -> tuple[tuple[int, ...], ...]:
    """``"2x3,4x5"`` as ``((2, 3), (4, 5))``, each of ``arity`` sizes."""
    shapes = []
    for part in text.split(","):
        dims = tuple(int(d) for d in part.lower().split("x"))
        if len(dims) != arity:
            raise argparse.ArgumentTypeError(f"expected {arity} sizes joined by x, got {part!r}")
        shapes.append(dims)
    return tuple(shapes)


def _shown(*shapes) -> str:
    return ",".join("x".join(map(str, s)) for s in shapes)


class _HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """The module docstring as written, and each option's default (where it has one) after its
    help."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if action.default not in (None, False, argparse.SUPPRESS) and "default" not in text:
            text += " (default: %(default)s)"
        return text


def _add_shape_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--sizes",
        type=lambda s: parse_shapes(s, 2),
        help=f"loss sizes as NxC[,NxC...] (default: {_shown(*losses.DEFAULT_SIZES)})",
    )
    parser.add_argument(
        "--shapes",
        type=lambda s: parse_shapes(s, 3),
        help=f"linear shapes as NxHxV[,...] (default: {_shown(*linear.DEFAULT_SHAPES)})",
    )
    parser.add_argument(
        "--lm-shapes",
        type=lambda s: parse_shapes(s, 3),
        help="lm shapes as NxHxV,NxHxV: for compiled memory, then for time (default: "
        f"{_shown(lm.DEFAULT_MEMORY_SHAPE, lm.DEFAULT_TIME_SHAPE)})",
    )
    parser.add_argument(
        "--matmul-shape",
        type=lambda s: parse_shapes(s, 3)[0],
        help=f"matmuls shape as NxHxV (default: {_shown(matmuls.DEFAULT_SHAPE)})",
    )
    parser.add_argument(
        "--memory-shape",
        type=lambda s: parse_shapes(s, 3)[0],
        help=f"memory shape as NxHxV (default: {_shown(memory.DEFAULT_SHAPE)})",
    )
    parser.add_argument(
        "--ctc-shape",
        type=lambda s: parse_shapes(s, 4)[0],
        help=f"ctc shape as BxTxCxL (default: {_shown(ctc.DEFAULT_SHAPE)})",
    )
    parser.add_argument(
        "--contrastive-shape",
        type=lambda s: parse_shapes(s, 2)[0],
        help=f"contrastive shape as BxD (default: {_shown(contrastive.DEFAULT_SHAPE)})",
    )
    parser.add_argument(
        "--dtypes", default="float32,bfloat16", help="comma-separated dtypes of the inputs"
    )


def _add_run_options(parser: argparse.ArgumentParser) -> None:
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
        help="skip the peak-RSS measurements (the memory suite and the linear suite's; CPU only)",
    )
    parser.add_argument(
        "--smoke", action="store_true", help="tiny sizes: checks that the command runs"
    )
    parser.add_argument("--json", dest="json_path", help="write the results to this file")
    parser.add_argument("--plot", dest="plot_path", help="draw the ratios to this PNG")
    parser.add_argument(
        "--report",
        metavar="JSON",
        help="print the markdown tables of a saved --json result and exit (runs nothing)",
    )


def parser() -> argparse.ArgumentParser:
    result = argparse.ArgumentParser(
        prog="python -m benchmarks", description=__doc__, formatter_class=_HelpFormatter
    )
    result.add_argument(
        "which",
        nargs="?",
        default="all",
        choices=["all", "losses", "linear", "lm", "matmuls", "memory", "ctc", "contrastive"],
        help="which benchmark to run",
    )
    _add_shape_options(result)
    _add_run_options(result)
    return result


def run(args: argparse.Namespace) -> dict:
    """The suites ``args.which`` names, printed as they run; their rows by suite."""
    dtypes = [jnp.dtype(d) for d in args.dtypes.split(",")]
    smoke = args.smoke
    repeats = 3 if smoke and args.repeats == 7 else args.repeats
    result: dict[str, object] = {"environment": environment()}
    print(json.dumps(result["environment"]), flush=True)
    print(
        "each ratio is jaxloss / baseline (time or bytes): below 1 means jaxloss is faster "
        "or smaller",
        flush=True,
    )
    if args.which in ("all", "losses"):
        sizes = args.sizes or (losses.SMOKE_SIZES if smoke else losses.DEFAULT_SIZES)
        result["losses"] = losses.run(sizes, dtypes, repeats)
    if args.which in ("all", "linear"):
        shapes = args.shapes or (linear.SMOKE_SHAPES if smoke else linear.DEFAULT_SHAPES)
        flops = args.max_linear_tflop * 1e12
        result["linear"] = linear.run(shapes, dtypes, repeats, flops, not args.no_rss)
    if args.which in ("all", "lm"):
        defaults = (lm.DEFAULT_MEMORY_SHAPE, lm.DEFAULT_TIME_SHAPE)
        memory_shape, time_shape = args.lm_shapes or ((lm.SMOKE_SHAPE,) * 2 if smoke else defaults)
        result["lm"] = lm.run(memory_shape, time_shape, dtypes[0], repeats)
    if args.which in ("all", "matmuls"):
        shape = args.matmul_shape or (matmuls.SMOKE_SHAPE if smoke else matmuls.DEFAULT_SHAPE)
        result["matmuls"] = matmuls.run(shape, dtypes, repeats)
    if args.which in ("all", "memory") and jax.default_backend() == "cpu" and not args.no_rss:
        shape = args.memory_shape or (memory.SMOKE_SHAPE if smoke else memory.DEFAULT_SHAPE)
        result["memory"] = memory.run(shape, dtypes[0])
    if args.which in ("all", "ctc"):
        shape = args.ctc_shape or (ctc.SMOKE_SHAPE if smoke else ctc.DEFAULT_SHAPE)
        result["ctc"] = ctc.run(shape, dtypes[0], repeats)
    if args.which in ("all", "contrastive"):
        default = contrastive.SMOKE_SHAPE if smoke else contrastive.DEFAULT_SHAPE
        result["contrastive"] = contrastive.run(
            args.contrastive_shape or default, dtypes[0], repeats
        )
    return result


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    if args.report:
        with open(args.report) as f:
            print(report(json.load(f)))
        return 0
    result = run(args)
    if args.json_path:
        with open(args.json_path, "w") as f:
            json.dump(result, f, indent=2)
    if args.plot_path:
        plot(result, args.plot_path)
    return 0
