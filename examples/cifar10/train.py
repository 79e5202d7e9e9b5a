"""Train ResNet-9 on CIFAR-10 with Flax NNX, optax and jaxloss.

    python examples/cifar10/train.py --data-dir data --epochs 24 --workdir runs/cifar10

Reads the official "python version" batches from ``--data-dir`` (downloading
them if absent), trains with label-smoothed ``jaxloss.cross_entropy``, SGD with
Nesterov momentum and a one-cycle learning rate, random-crop + flip augmentation
on device, evaluates test accuracy after every epoch, and writes
``WORKDIR/metrics.json`` and ``WORKDIR/curves.png``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import pathlib
import sys
import time

import jax
import jax.numpy as jnp
import optax
from flax import nnx
from tqdm import tqdm

import jaxloss as jl

import input_pipeline as pipeline
from models import ResNet9


@dataclasses.dataclass(frozen=True)
class Config:
    epochs: int = 24
    batch_size: int = 512
    peak_learning_rate: float = 0.4
    warmup_fraction: float = 0.2
    momentum: float = 0.9
    weight_decay: float = 5e-4
    label_smoothing: float = 0.2
    width: int = 64
    dtype: str = "float32"
    seed: int = 0


def create_train_state(config: Config, steps_per_epoch: int):
    """The model and its optimizer (SGD + Nesterov, weight decay, one-cycle schedule)."""
    model = ResNet9(width=config.width, dtype=jnp.dtype(config.dtype), rngs=nnx.Rngs(config.seed))
    total = max(1, config.epochs * steps_per_epoch)
    warmup = max(1, int(config.warmup_fraction * total))
    schedule = optax.join_schedules(
        [
            optax.linear_schedule(0.0, config.peak_learning_rate, warmup),
            optax.linear_schedule(config.peak_learning_rate, 0.0, max(1, total - warmup)),
        ],
        [warmup],
    )
    tx = optax.chain(
        optax.add_decayed_weights(config.weight_decay),
        optax.sgd(schedule, momentum=config.momentum, nesterov=True),
    )
    return model, nnx.Optimizer(model, tx, wrt=nnx.Param)


@nnx.jit
def train_step(model, optimizer, images, labels, key, label_smoothing):
    """One SGD step on a batch of uint8 images; returns the batch's mean loss."""
    inputs = pipeline.normalize(pipeline.augment(key, images))

    def loss_fn(model):
        logits = model(inputs)
        return jl.cross_entropy(logits, labels, label_smoothing=label_smoothing)

    loss, grads = nnx.value_and_grad(loss_fn)(model)
    optimizer.update(model, grads)
    return loss


@nnx.jit
def eval_step(model, images, labels):
    """Summed loss and number correct; labels of padding rows are ``-100`` and count for nothing."""
    logits = model(pipeline.normalize(images))
    loss_sum = jl.cross_entropy(logits, labels, reduction="sum", ignore_index=-100)
    correct = jnp.sum(jnp.argmax(logits, axis=-1) == labels)
    return loss_sum, correct


def evaluate(model, images: jax.Array, labels: jax.Array, batch_size: int):
    model.eval()
    n = images.shape[0]
    loss_sum, correct = 0.0, 0
    for start in range(0, n, batch_size):
        batch_images = images[start : start + batch_size]
        batch_labels = labels[start : start + batch_size]
        short = batch_size - batch_images.shape[0]
        if short:  # pad the last batch to the compiled shape; -100 rows are ignored
            batch_images = jnp.pad(batch_images, ((0, short), (0, 0), (0, 0), (0, 0)))
            batch_labels = jnp.pad(batch_labels, (0, short), constant_values=-100)
        batch_loss, batch_correct = eval_step(model, batch_images, batch_labels)
        loss_sum += float(batch_loss)
        correct += int(batch_correct)
    model.train()
    return loss_sum / n, correct / n


def train_and_evaluate(config: Config, data, workdir: pathlib.Path, progress: bool = True):
    train_images, train_labels, test_images, test_labels, _ = data
    steps_per_epoch = len(train_images) // config.batch_size
    if steps_per_epoch == 0:
        raise ValueError(
            f"--batch-size {config.batch_size} exceeds the {len(train_images)} training images"
        )
    model, optimizer = create_train_state(config, steps_per_epoch)
    model.train()
    train_images, train_labels = jnp.asarray(train_images), jnp.asarray(train_labels)
    test_images, test_labels = jnp.asarray(test_images), jnp.asarray(test_labels)
    key = jax.random.key(config.seed)
    history = []
    for epoch in range(1, config.epochs + 1):
        key, perm_key = jax.random.split(key)
        order = jax.random.permutation(perm_key, len(train_images))
        losses = []
        bar = tqdm(
            range(steps_per_epoch),
            desc=f"epoch {epoch}/{config.epochs}",
            unit="batch",
            disable=not progress,
            file=sys.stderr,
        )
        start = time.perf_counter()
        for step in bar:
            idx = order[step * config.batch_size : (step + 1) * config.batch_size]
            key, step_key = jax.random.split(key)
            losses.append(
                train_step(
                    model,
                    optimizer,
                    train_images[idx],
                    train_labels[idx],
                    step_key,
                    config.label_smoothing,
                )
            )
            if step % 10 == 9 or step == steps_per_epoch - 1:
                seen = (step + 1) * config.batch_size
                rate = seen / (time.perf_counter() - start)
                bar.set_postfix(loss=f"{float(losses[-1]):.3f}", img_s=f"{rate:,.0f}")
        train_loss = float(jnp.mean(jnp.stack(losses)))
        seconds = time.perf_counter() - start
        test_loss, test_accuracy = evaluate(model, test_images, test_labels, config.batch_size)
        record = {
            "epoch": epoch,
            "train_loss": train_loss,
            "test_loss": test_loss,
            "test_accuracy": test_accuracy,
            "images_per_second": steps_per_epoch * config.batch_size / seconds,
            "step_seconds": seconds / steps_per_epoch,
        }
        history.append(record)
        print(
            f"epoch {epoch}: train loss {train_loss:.4f}, test loss {test_loss:.4f}, "
            f"test accuracy {test_accuracy:.4f}, {record['images_per_second']:,.0f} images/s",
            flush=True,
        )
    write_outputs(workdir, config, history)
    return history


def write_outputs(workdir: pathlib.Path, config: Config, history: list[dict]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    workdir.mkdir(parents=True, exist_ok=True)
    metrics = {
        "config": dataclasses.asdict(config),
        "backend": jax.default_backend(),
        "device": str(jax.devices()[0].device_kind),
        "epochs": history,
    }
    (workdir / "metrics.json").write_text(json.dumps(metrics, indent=2))
    epochs = [h["epoch"] for h in history]
    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(10, 4))
    ax_loss.plot(epochs, [h["train_loss"] for h in history], "o-", label="train")
    ax_loss.plot(epochs, [h["test_loss"] for h in history], "s-", label="test")
    ax_loss.set(xlabel="epoch", ylabel="cross-entropy", title="loss")
    ax_loss.legend()
    ax_acc.plot(epochs, [100 * h["test_accuracy"] for h in history], "o-", color="C2")
    ax_acc.set(xlabel="epoch", ylabel="%", title="test accuracy")
    for ax in (ax_loss, ax_acc):
        ax.grid(alpha=0.3)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    fig.tight_layout()
    fig.savefig(workdir / "curves.png", dpi=100)
    plt.close(fig)


def parse_args(argv=None) -> argparse.Namespace:
    defaults = Config()
    parser = argparse.ArgumentParser(
        description="Train ResNet-9 on CIFAR-10 with jaxloss.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument(
        "--data-dir",
        type=pathlib.Path,
        default=pathlib.Path("data"),
        help="folder with cifar-10-batches-py/ (downloaded there if absent)",
    )
    parser.add_argument(
        "--workdir",
        type=pathlib.Path,
        default=pathlib.Path("runs/cifar10"),
        help="where metrics.json and curves.png are written",
    )
    parser.add_argument("--epochs", type=int, default=defaults.epochs)
    parser.add_argument("--batch-size", type=int, default=defaults.batch_size)
    parser.add_argument(
        "--learning-rate",
        type=float,
        default=defaults.peak_learning_rate,
        help="peak of the one-cycle schedule",
    )
    parser.add_argument("--label-smoothing", type=float, default=defaults.label_smoothing)
    parser.add_argument(
        "--width",
        type=int,
        default=defaults.width,
        help="channels of the first stage (64 in ResNet-9)",
    )
    parser.add_argument(
        "--dtype",
        choices=["float32", "bfloat16"],
        default=defaults.dtype,
        help="compute dtype of the network (parameters stay float32)",
    )
    parser.add_argument("--seed", type=int, default=defaults.seed)
    parser.add_argument(
        "--no-download",
        action="store_true",
        help="fail instead of downloading when the data is absent",
    )
    parser.add_argument("--download-url", default=pipeline.URL, help=argparse.SUPPRESS)
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bars")
    args = parser.parse_args(argv)
    for name in ("epochs", "batch_size", "width"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be >= 1")
    if not 0.0 <= args.label_smoothing <= 1.0:
        parser.error("--label-smoothing must be in [0, 1]")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    config = Config(
        epochs=args.epochs,
        batch_size=args.batch_size,
        peak_learning_rate=args.learning_rate,
        label_smoothing=args.label_smoothing,
        width=args.width,
        dtype=args.dtype,
        seed=args.seed,
    )
    try:
        data = pipeline.load(
            args.data_dir, allow_download=not args.no_download, url=args.download_url
        )
    except pipeline.DataError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(
        f"CIFAR-10: {len(data[0])} training and {len(data[2])} test images; "
        f"backend {jax.default_backend()}, {jax.devices()[0].device_kind}",
        flush=True,
    )
    history = train_and_evaluate(config, data, args.workdir, progress=not args.no_progress)
    print(f"metrics: {args.workdir / 'metrics.json'}, curves: {args.workdir / 'curves.png'}")
    accuracy = history[-1]["test_accuracy"]
    print(f"final test accuracy: {accuracy:.4f} ({100 * accuracy:.2f}%)")
    return 0 if math.isfinite(history[-1]["train_loss"]) else 1


if __name__ == "__main__":
    sys.exit(main())
