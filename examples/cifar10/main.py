"""Train ResNet-9 on CIFAR-10 with jaxloss: the command line of the example.

    python examples/cifar10/main.py                      # the preset that fits this machine
    python examples/cifar10/main.py --config full --dtype bfloat16 --workdir runs/full

``--config auto`` (the default) takes the ``cpu`` preset when JAX runs on the CPU and
the ``full`` recipe on a GPU or TPU; the other flags override single settings of the
preset. Prints the final test accuracy last.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import pathlib
import sys
import time

import jax

import configs
import input_pipeline as pipeline
from train import train_and_evaluate

# flag -> (Config field, type, help)
OVERRIDES = {
    "--epochs": ("epochs", int, "passes over the training images"),
    "--batch-size": ("batch_size", int, "images per SGD step"),
    "--train-subset": ("train_subset", int, "training images used (all when unset)"),
    "--learning-rate": ("peak_learning_rate", float, "peak of the one-cycle schedule"),
    "--label-smoothing": ("label_smoothing", float, "label smoothing of the training loss"),
    "--width": ("width", int, "channels of ResNet-9's first stage (64 in the original)"),
    "--dtype": ("dtype", str, "compute dtype of the network (parameters stay float32)"),
    "--seed": ("seed", int, "seed of initialization, shuffling and augmentation"),
}


def _dest(flag: str) -> str:
    """The attribute argparse stores ``flag`` under."""
    return flag[2:].replace("-", "_")


def _preset_defaults(field: str) -> str:
    values = {name: getattr(configs.get(name), field) for name in configs.PRESETS}
    if len(set(values.values())) == 1:
        return f"default: {next(iter(values.values()))}"
    return "default: " + ", ".join(f"{v} ({name})" for name, v in values.items())


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python examples/cifar10/main.py",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--config",
        choices=("auto", *configs.PRESETS),
        default="auto",
        help="preset: cpu on a CPU and full on an accelerator when auto (default: auto)",
    )
    parser.add_argument(
        "--data-dir",
        type=pathlib.Path,
        default=pathlib.Path("data"),
        help="folder with cifar-10-batches-py/, downloaded there if absent (default: data)",
    )
    parser.add_argument(
        "--workdir",
        type=pathlib.Path,
        default=pathlib.Path("runs/cifar10"),
        help="where metrics.json and curves.png are written (default: runs/cifar10)",
    )
    for flag, (field, kind, text) in OVERRIDES.items():
        extra = {"choices": ("float32", "bfloat16")} if field == "dtype" else {}
        parser.add_argument(
            flag, type=kind, default=None, help=f"{text} ({_preset_defaults(field)})", **extra
        )
    parser.add_argument(
        "--no-download",
        action="store_true",
        help="fail with instructions instead of downloading when the data is absent",
    )
    parser.add_argument(
        "--download-url",
        default=pipeline.URL,
        help="where to fetch the official archive from (default: %(default)s)",
    )
    parser.add_argument(
        "--no-progress", action="store_true", help="hide the per-epoch progress bars"
    )
    args = parser.parse_args(argv)
    for flag in ("--epochs", "--batch-size", "--train-subset", "--width"):
        value = getattr(args, _dest(flag))
        if value is not None and value < 1:
            parser.error(f"{flag} must be >= 1")
    if args.label_smoothing is not None and not 0.0 <= args.label_smoothing <= 1.0:
        parser.error("--label-smoothing must be in [0, 1]")
    return args


def config_from_args(args: argparse.Namespace) -> tuple[str, configs.Config]:
    """The preset's name and the config of the run: the preset with the flags applied."""
    name = args.config
    if name == "auto":
        name = "cpu" if jax.default_backend() == "cpu" else "full"
    overrides = {
        field: getattr(args, _dest(flag))
        for flag, (field, _, _) in OVERRIDES.items()
        if getattr(args, _dest(flag)) is not None
    }
    config = dataclasses.replace(
        configs.get(name),
        **overrides,
        data_dir=str(args.data_dir),
        download=not args.no_download,
        download_url=args.download_url,
        progress=not args.no_progress,
    )
    return name, config


def main(argv=None) -> int:
    args = parse_args(argv)
    name, config = config_from_args(args)
    preset = configs.get(name)
    changed = ", ".join(
        f"{field}={getattr(config, field)}"
        for field, _, _ in OVERRIDES.values()
        if getattr(config, field) != getattr(preset, field)
    )
    print(f"preset {name}" + (f" with {changed}" if changed else ""), flush=True)
    if config.expected_duration and not changed:
        print(f"expected: {config.expected_duration}", flush=True)
    start = time.perf_counter()
    try:
        history = train_and_evaluate(config, args.workdir)
    except pipeline.DataError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    minutes, seconds = divmod(round(time.perf_counter() - start), 60)
    print(f"finished in {minutes} min {seconds} s")
    print(f"metrics: {args.workdir / 'metrics.json'}, curves: {args.workdir / 'curves.png'}")
    accuracy = history[-1]["test_accuracy"]
    print(f"final test accuracy: {accuracy:.4f} ({100 * accuracy:.2f}%)")
    return 0 if math.isfinite(history[-1]["train_loss"]) else 1


if __name__ == "__main__":
    sys.exit(main())
