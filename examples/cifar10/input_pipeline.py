"""CIFAR-10 input: the official "python version" batches, download, and on-device augmentation."""

from __future__ import annotations

import dataclasses
import hashlib
import io
import pathlib
import pickle
import tarfile
import urllib.request

import jax
import jax.numpy as jnp
import numpy as np

URL = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"
MD5 = "c58f30108f718f92721af3b95e74349a"
FOLDER = "cifar-10-batches-py"
TRAIN_FILES = tuple(f"data_batch_{i}" for i in range(1, 6))
TEST_FILE = "test_batch"
META_FILE = "batches.meta"
ALL_FILES = (*TRAIN_FILES, TEST_FILE, META_FILE)
NUM_CLASSES = 10
# Per-channel statistics of the CIFAR-10 training set (0-255 scale).
MEAN = np.array([125.31, 122.95, 113.87], np.float32)
STD = np.array([62.99, 62.09, 66.70], np.float32)


class DataError(Exception):
    """The data set is missing, could not be fetched, or a file is not a CIFAR-10 batch."""


@dataclasses.dataclass(frozen=True)
class Dataset:
    """CIFAR-10 in memory: NHWC ``uint8`` images and ``int32`` labels in ``[0, 10)``."""

    train_images: np.ndarray
    train_labels: np.ndarray
    test_images: np.ndarray
    test_labels: np.ndarray
    label_names: list[str]


class _ArraysOnly(pickle.Unpickler):
    """Unpickles dicts, lists and numpy arrays, and nothing that could run code."""

    ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        ("_codecs", "encode"),  # how Python 3 writes bytes in protocol 2 pickles
    }

    def find_class(self, module, name):
        if (module, name) in self.ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"unexpected object {module}.{name}")


def _unpickle(path: pathlib.Path) -> dict:
    try:
        raw = path.read_bytes()
        obj = _ArraysOnly(io.BytesIO(raw), encoding="bytes").load()
    except (
        pickle.UnpicklingError,
        EOFError,
        ValueError,
        TypeError,
        IndexError,
        AttributeError,
        MemoryError,
    ) as err:
        raise DataError(
            f"{path} is not a readable CIFAR-10 batch (corrupt or truncated: "
            f"{type(err).__name__}: {err}). Delete it and download the data set again."
        ) from None
    if not isinstance(obj, dict):
        raise DataError(f"{path} holds a {type(obj).__name__}, not a CIFAR-10 batch dict")
    return {k.decode() if isinstance(k, bytes) else k: v for k, v in obj.items()}


def load_batch(path: pathlib.Path) -> tuple[np.ndarray, np.ndarray]:
    """Reads one official batch: images ``(n, 32, 32, 3) uint8`` and labels ``(n,) int32``."""
    batch = _unpickle(path)
    if "data" not in batch or "labels" not in batch:
        raise DataError(f"{path} lacks the 'data' and 'labels' entries of a CIFAR-10 batch")
    data = np.asarray(batch["data"])
    labels = np.asarray(batch["labels"])
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3072:
        raise DataError(
            f"{path}: 'data' must be uint8 of shape (n, 3072), got {data.dtype} {data.shape}"
        )
    if (
        labels.shape != (data.shape[0],)
        or labels.size
        and not (0 <= labels.min() and labels.max() < NUM_CLASSES)
    ):
        raise DataError(f"{path}: 'labels' must be {data.shape[0]} integers in [0, 10)")
    images = data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
    return np.ascontiguousarray(images), labels.astype(np.int32)


def load_label_names(folder: pathlib.Path) -> list[str]:
    meta = _unpickle(folder / META_FILE)
    names = meta.get("label_names")
    if not isinstance(names, list) or len(names) != NUM_CLASSES:
        raise DataError(f"{folder / META_FILE}: 'label_names' must list 10 class names")
    return [n.decode() if isinstance(n, bytes) else str(n) for n in names]


def find_folder(data_dir: pathlib.Path) -> pathlib.Path | None:
    """The folder holding the batches: ``data_dir`` itself or ``data_dir/cifar-10-batches-py``."""
    for folder in (data_dir, data_dir / FOLDER):
        if all((folder / name).exists() for name in ALL_FILES):
            return folder
    return None


def missing_message(data_dir: pathlib.Path, reason: str) -> str:
    wanted = "\n".join(f"  {data_dir / FOLDER / name}" for name in ALL_FILES)
    return (
        f"CIFAR-10 was not found in {data_dir} and could not be downloaded ({reason}).\n"
        f"Download {URL} (md5 {MD5}) and extract it into {data_dir}, so that these files "
        f"exist:\n{wanted}\n"
        "Or, to try the example without the real data, write a small learnable stand-in in "
        "the same format (its accuracy says nothing about CIFAR-10):\n"
        f"  python examples/cifar10/make_synthetic_data.py --out {data_dir} "
        "--train 5000 --test 1000"
    )


def _first_missing(path: pathlib.Path) -> pathlib.Path | None:
    """The outermost folder of ``path`` that does not exist yet (None if it exists)."""
    missing = None
    for folder in (path, *path.parents):
        if folder.exists():
            break
        missing = folder
    return missing


def download(data_dir: pathlib.Path, url: str = URL, progress: bool = True) -> None:
    """Fetches the official archive with a progress bar, checks its MD5 and extracts it;
    on failure, removes the partial archive and every folder it created."""
    created = _first_missing(data_dir)
    data_dir.mkdir(parents=True, exist_ok=True)
    archive = data_dir / "cifar-10-python.tar.gz"
    try:
        _fetch(url, archive, progress)
    except DataError:
        archive.unlink(missing_ok=True)
        # Leave no empty folder behind: remove what this call created, innermost first.
        if created is not None:
            for folder in (data_dir, *data_dir.parents):
                try:
                    folder.rmdir()
                except OSError:
                    break
                if folder == created:
                    break
        raise
    with tarfile.open(archive) as tar:
        if hasattr(tarfile, "data_filter"):
            tar.extractall(data_dir, filter="data")
        else:  # Python without extraction filters: the archive's checksum was verified.
            tar.extractall(data_dir)  # noqa: S202
    archive.unlink()


def _fetch(url: str, archive: pathlib.Path, progress: bool) -> None:
    """Downloads ``url`` to ``archive`` with a progress bar and checks its MD5."""
    from tqdm import tqdm

    data_dir = archive.parent
    try:
        with urllib.request.urlopen(url, timeout=30) as response:
            total = int(response.headers.get("Content-Length") or 0) or None
            digest = hashlib.md5()
            with (
                open(archive, "wb") as out,
                tqdm(
                    total=total, unit="B", unit_scale=True, desc="CIFAR-10", disable=not progress
                ) as bar,
            ):
                while chunk := response.read(1 << 20):
                    out.write(chunk)
                    digest.update(chunk)
                    bar.update(len(chunk))
    except (OSError, ValueError) as err:
        raise DataError(missing_message(data_dir, f"{type(err).__name__}: {err}")) from None
    if digest.hexdigest() != MD5:
        raise DataError(missing_message(data_dir, f"checksum {digest.hexdigest()} != {MD5}"))


def load(data_dir: str | pathlib.Path, *, allow_download: bool = True, url: str = URL) -> Dataset:
    """Reads the official batches from ``data_dir`` (or ``data_dir/cifar-10-batches-py``),
    downloading them there first if absent and ``allow_download``."""
    data_dir = pathlib.Path(data_dir)
    folder = find_folder(data_dir)
    if folder is None:
        if not allow_download:
            raise DataError(missing_message(data_dir, "downloading was turned off"))
        download(data_dir, url)
        folder = find_folder(data_dir)
        if folder is None:
            raise DataError(missing_message(data_dir, "the archive lacked some batches"))
    parts = [load_batch(folder / name) for name in TRAIN_FILES]
    train_images = np.concatenate([p[0] for p in parts])
    train_labels = np.concatenate([p[1] for p in parts])
    test_images, test_labels = load_batch(folder / TEST_FILE)
    return Dataset(
        train_images=train_images,
        train_labels=train_labels,
        test_images=test_images,
        test_labels=test_labels,
        label_names=load_label_names(folder),
    )


def normalize(images: jax.Array) -> jax.Array:
    """uint8 NHWC images to zero-mean, unit-variance float32."""
    return (images.astype(jnp.float32) - MEAN) / STD


def augment(key: jax.Array, images: jax.Array, pad: int = 4) -> jax.Array:
    """Random crop after reflection padding, and random horizontal flip, on device."""
    n, h, w, _ = images.shape
    key_x, key_y, key_flip = jax.random.split(key, 3)
    padded = jnp.pad(images, ((0, 0), (pad, pad), (pad, pad), (0, 0)), mode="reflect")
    dx = jax.random.randint(key_x, (n,), 0, 2 * pad + 1)
    dy = jax.random.randint(key_y, (n,), 0, 2 * pad + 1)
    crop = jax.vmap(lambda img, y, x: jax.lax.dynamic_slice(img, (y, x, 0), (h, w, img.shape[-1])))
    cropped = crop(padded, dy, dx)
    flip = jax.random.bernoulli(key_flip, 0.5, (n, 1, 1, 1))
    return jnp.where(flip, cropped[:, :, ::-1], cropped)


def write_batch(path: pathlib.Path, images: np.ndarray, labels: np.ndarray, name: str) -> None:
    """Writes images ``(n, 32, 32, 3) uint8`` as an official CIFAR-10 batch file."""
    data = np.ascontiguousarray(images.transpose(0, 3, 1, 2).reshape(len(images), 3072))
    batch = {
        b"batch_label": name.encode(),
        b"labels": [int(v) for v in labels],
        b"data": data.astype(np.uint8),
        b"filenames": [f"{name}_{i}.png".encode() for i in range(len(images))],
    }
    with open(path, "wb") as f:
        pickle.dump(batch, f, protocol=2)
