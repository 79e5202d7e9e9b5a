"""Training and evaluation of ResNet-9 on CIFAR-10 with Flax NNX, optax and jaxloss.

``train_and_evaluate(config, workdir)`` is the whole run: it reads the data set
named by ``config.data_dir``, trains with label-smoothed ``jaxloss.cross_entropy``,
SGD with Nesterov momentum and a one-cycle learning rate, and random-crop + flip
augmentation on device, evaluates test accuracy after every epoch, and writes
``workdir/metrics.json`` and ``workdir/curves.png``. ``main.py`` is its command line.
"""

from __future__ import annotations

import dataclasses
import json
import pathlib
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx
from tqdm import tqdm

import jaxloss as jl

import input_pipeline as pipeline
from configs import Config
from models import ResNet9

# Steps between two reads of the losses in the progress bar: each read waits for the
# device, so the running mean and the throughput it shows are of finished work.
REPORT_EVERY = 10


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
    """One SGD step on a batch of uint8 images.

    Returns the batch's mean cross-entropy twice: label-smoothed (the objective whose
    gradient is taken) and plain (the quantity the test loss reports).
    """
    inputs = pipeline.normalize(pipeline.augment(key, images))

    def loss_fn(model):
        logits = model(inputs)
        objective = jl.cross_entropy(logits, labels, label_smoothing=label_smoothing)
        return objective, jl.cross_entropy(logits, labels)

    (objective, plain), grads = nnx.value_and_grad(loss_fn, has_aux=True)(model)
    optimizer.update(model, grads)
    return objective, plain


@nnx.jit
def eval_step(model, images, labels):
    """Summed loss and number correct; labels of padding rows are ``-100`` and count for nothing."""
    logits = model(pipeline.normalize(images))
    loss_sum = jl.cross_entropy(logits, labels, reduction="sum", ignore_index=-100)
    correct = jnp.sum(jnp.argmax(logits, axis=-1) == labels)
    return loss_sum, correct


def evaluate(model, images: jax.Array, labels: jax.Array, batch_size: int) -> tuple[float, float]:
    """Mean test cross-entropy (no smoothing) and accuracy over all of ``images``."""
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


def training_subset(data: pipeline.Dataset, config: Config) -> tuple[np.ndarray, np.ndarray]:
    """The training images of a run: all, or ``config.train_subset`` of them, drawn from
    every batch file by a shuffle that ``config.seed`` fixes."""
    images, labels = data.train_images, data.train_labels
    if config.train_subset is not None and config.train_subset < len(images):
        keep = np.random.default_rng(config.seed).permutation(len(images))[: config.train_subset]
        images, labels = images[keep], labels[keep]
    return images, labels


def train_and_evaluate(config: Config, workdir: str | pathlib.Path) -> list[dict]:
    """Trains and evaluates as ``config`` says; writes ``metrics.json`` and ``curves.png``
    to ``workdir`` and returns the per-epoch records."""
    workdir = pathlib.Path(workdir)
    data = pipeline.load(config.data_dir, allow_download=config.download, url=config.download_url)
    train_images, train_labels = training_subset(data, config)
    steps_per_epoch = len(train_images) // config.batch_size
    if steps_per_epoch == 0:
        raise ValueError(
            f"batch size {config.batch_size} exceeds the {len(train_images)} training images"
        )
    print(
        f"CIFAR-10 from {config.data_dir}: {len(train_images)} training and "
        f"{len(data.test_images)} test images; {config.epochs} epochs of {steps_per_epoch} "
        f"steps; backend {jax.default_backend()} ({jax.devices()[0].device_kind})",
        flush=True,
    )
    model, optimizer = create_train_state(config, steps_per_epoch)
    model.train()
    train_images, train_labels = jnp.asarray(train_images), jnp.asarray(train_labels)
    test_images, test_labels = jnp.asarray(data.test_images), jnp.asarray(data.test_labels)
    key = jax.random.key(config.seed)
    history = []
    for epoch in range(1, config.epochs + 1):
        key, perm_key = jax.random.split(key)
        order = jax.random.permutation(perm_key, len(train_images))
        objectives, plains = [], []
        finished = {"objective": 0.0, "plain": 0.0, "steps": 0}
        bar = tqdm(
            range(steps_per_epoch),
            desc=f"epoch {epoch}/{config.epochs}",
            unit="batch",
            disable=not config.progress,
            file=sys.stderr,
        )
        clock_start, clock_steps = None, 0
        for step in bar:
            idx = order[step * config.batch_size : (step + 1) * config.batch_size]
            key, step_key = jax.random.split(key)
            objective, plain = train_step(
                model,
                optimizer,
                train_images[idx],
                train_labels[idx],
                step_key,
                config.label_smoothing,
            )
            objectives.append(objective)
            plains.append(plain)
            if step == 0 or step % REPORT_EVERY == REPORT_EVERY - 1 or step == steps_per_epoch - 1:
                # Reading the values waits for the device to finish these steps.
                new = slice(finished["steps"], None)
                done_objective, done_plain = jax.device_get((objectives[new], plains[new]))
                finished["objective"] += float(np.sum(done_objective))
                finished["plain"] += float(np.sum(done_plain))
                finished["steps"] = step + 1
                now = time.perf_counter()
                if clock_start is None:  # after the first step, so compiling is not timed
                    clock_start, clock_steps = now, step + 1
                postfix = {"loss": f"{finished['objective'] / finished['steps']:.3f}"}
                if step + 1 > clock_steps:
                    rate = (step + 1 - clock_steps) * config.batch_size / (now - clock_start)
                    postfix["img/s"] = f"{rate:,.0f}"
                bar.set_postfix(postfix)
        clock_end = time.perf_counter()
        timed_steps = steps_per_epoch - clock_steps
        test_loss, test_accuracy = evaluate(model, test_images, test_labels, config.batch_size)
        record = {
            "epoch": epoch,
            "train_objective": finished["objective"] / steps_per_epoch,
            "train_loss": finished["plain"] / steps_per_epoch,
            "test_loss": test_loss,
            "test_accuracy": test_accuracy,
            "images_per_second": (
                timed_steps * config.batch_size / (clock_end - clock_start) if timed_steps else None
            ),
            "step_seconds": (clock_end - clock_start) / timed_steps if timed_steps else None,
        }
        history.append(record)
        rate = record["images_per_second"]
        print(
            f"epoch {epoch}: train loss {record['train_loss']:.4f} "
            f"(label-smoothed objective {record['train_objective']:.4f}), "
            f"test loss {test_loss:.4f}, test accuracy {test_accuracy:.4f}"
            + (f", {rate:,.0f} images/s" if rate else ""),
            flush=True,
        )
    write_outputs(workdir, config, history)
    return history


def write_outputs(workdir: pathlib.Path, config: Config, history: list[dict]) -> None:
    """``metrics.json`` (config, device, per-epoch records) and ``curves.png``."""
    workdir.mkdir(parents=True, exist_ok=True)
    metrics = {
        "config": dataclasses.asdict(config),
        "backend": jax.default_backend(),
        "device": str(jax.devices()[0].device_kind),
        "epochs": history,
    }
    (workdir / "metrics.json").write_text(json.dumps(metrics, indent=2))
    figure = plot_curves(history, config.label_smoothing)
    figure.savefig(workdir / "curves.png", dpi=100)


def plot_curves(history: list[dict], label_smoothing: float):
    """Train and test cross-entropy (both without label smoothing) and test accuracy per
    epoch, as a matplotlib figure."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    figure = Figure(figsize=(10, 4), layout="tight")
    ax_loss, ax_acc = figure.subplots(1, 2)
    epochs = [h["epoch"] for h in history]
    ax_loss.plot(
        epochs,
        [h["train_loss"] for h in history],
        "o-",
        label="train (augmented batches, mean over the epoch)",
    )
    ax_loss.plot(epochs, [h["test_loss"] for h in history], "s-", label="test")
    title = "cross-entropy"
    if label_smoothing:
        title += f" (trained with label smoothing {label_smoothing:g}; shown without)"
    ax_loss.set(xlabel="epoch", ylabel="cross-entropy", title=title)
    ax_loss.legend()
    ax_acc.plot(epochs, [100 * h["test_accuracy"] for h in history], "o-", color="C2")
    ax_acc.set(xlabel="epoch", ylabel="%", title="test accuracy", ylim=(0, 100))
    for ax in (ax_loss, ax_acc):
        ax.grid(alpha=0.3)
        if len(epochs) <= 12:
            ax.set_xticks(epochs)
        else:
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_xlim(0.5, max(epochs, default=1) + 0.5)
    return figure
