"""Writes a synthetic data set in the official CIFAR-10 "python version" format.

For tests and for timing the example where the real data cannot be fetched.
Each class has its own colour and stripe pattern under per-image noise, so a
network can learn it; accuracy on it says nothing about CIFAR-10.

    python examples/cifar10/make_synthetic_data.py --out DIR --train 50000 --test 10000
"""

from __future__ import annotations

import argparse
import pathlib
import pickle

import numpy as np

import input_pipeline as pipeline

PALETTE = np.array(
    [
        [230, 25, 75],
        [60, 180, 75],
        [255, 225, 25],
        [0, 130, 200],
        [245, 130, 48],
        [145, 30, 180],
        [70, 240, 240],
        [240, 50, 230],
        [210, 245, 60],
        [128, 128, 128],
    ],
    np.float32,
)


def make_images(labels: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    n = len(labels)
    coords = np.arange(32, dtype=np.float32)
    freq = (labels % 5 + 1)[:, None, None].astype(np.float32)
    vertical = (labels >= 5)[:, None, None]
    phase = rng.uniform(0, 2 * np.pi, (n, 1, 1)).astype(np.float32)
    along = np.where(vertical, coords[None, None, :], coords[None, :, None])
    stripes = 0.5 + 0.5 * np.sin(2 * np.pi * freq * along / 32 + phase)
    clean = PALETTE[labels][:, None, None, :] * (0.55 + 0.45 * stripes[..., None])
    noise = rng.uniform(0, 255, (n, 32, 32, 3)).astype(np.float32)
    return np.clip(0.7 * clean + 0.3 * noise, 0, 255).astype(np.uint8)


def write(out: pathlib.Path, num_train: int, num_test: int, seed: int = 0) -> pathlib.Path:
    rng = np.random.default_rng(seed)
    folder = out / pipeline.FOLDER
    folder.mkdir(parents=True, exist_ok=True)
    shards = np.array_split(np.arange(num_train), len(pipeline.TRAIN_FILES))
    for name, shard in zip(pipeline.TRAIN_FILES, shards, strict=True):
        labels = rng.integers(0, 10, len(shard))
        pipeline.write_batch(folder / name, make_images(labels, rng), labels, name)
    labels = rng.integers(0, 10, num_test)
    pipeline.write_batch(folder / pipeline.TEST_FILE, make_images(labels, rng), labels, "test")
    meta = {
        b"label_names": [f"pattern_{i}".encode() for i in range(10)],
        b"num_cases_per_batch": len(shards[0]),
        b"num_vis": 3072,
    }
    with open(folder / pipeline.META_FILE, "wb") as f:
        pickle.dump(meta, f, protocol=2)
    return folder


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(
        prog="python examples/cifar10/make_synthetic_data.py",
        description=__doc__.splitlines()[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument(
        "--out",
        required=True,
        default=argparse.SUPPRESS,
        type=pathlib.Path,
        help="folder to write cifar-10-batches-py/ into (give it to main.py as --data-dir)",
    )
    parser.add_argument("--train", type=int, default=50000, help="training images to write")
    parser.add_argument("--test", type=int, default=10000, help="test images to write")
    parser.add_argument("--seed", type=int, default=0, help="seed of labels, phases and noise")
    args = parser.parse_args(argv)
    print(f"wrote {write(args.out, args.train, args.test, args.seed)}")


if __name__ == "__main__":
    main()
