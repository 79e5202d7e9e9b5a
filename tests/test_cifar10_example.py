"""The CIFAR-10 example end to end on a small data set written in the official format."""

import json
import os
import pathlib
import pickle
import subprocess
import sys

import numpy as np
import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "cifar10"
sys.path.insert(0, str(EXAMPLE))

import input_pipeline as pipeline  # noqa: E402
import make_synthetic_data  # noqa: E402


def _run(*args, timeout=600):
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    return subprocess.run(
        [sys.executable, str(EXAMPLE / "train.py"), *map(str, args)],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
    )


@pytest.fixture(scope="module")
def small_cifar(tmp_path_factory):
    out = tmp_path_factory.mktemp("cifar")
    make_synthetic_data.write(out, num_train=640, num_test=200, seed=1)
    return out


def test_train_cli_end_to_end(small_cifar, tmp_path):
    workdir = tmp_path / "run"
    result = _run(
        "--data-dir",
        small_cifar,
        "--epochs",
        2,
        "--batch-size",
        64,
        "--width",
        8,
        "--workdir",
        workdir,
        "--seed",
        0,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    metrics = json.loads((workdir / "metrics.json").read_text())
    epochs = metrics["epochs"]
    assert [e["epoch"] for e in epochs] == [1, 2]
    assert epochs[1]["train_loss"] < epochs[0]["train_loss"]
    assert epochs[-1]["test_accuracy"] > 0.2  # chance is 0.1
    assert all(e["images_per_second"] > 0 for e in epochs)
    assert (workdir / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert result.stdout.strip().splitlines()[-1].startswith("final test accuracy: ")
    assert "epoch 1/2" in result.stderr  # the progress bar


def test_missing_data_without_network_says_which_files_to_put_where(tmp_path):
    result = _run(
        "--data-dir",
        tmp_path / "nowhere",
        "--download-url",
        "http://127.0.0.1:9/x",
        "--epochs",
        1,
        timeout=120,
    )
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    for name in pipeline.ALL_FILES:
        assert str(tmp_path / "nowhere" / "cifar-10-batches-py" / name) in result.stderr
    assert pipeline.URL in result.stderr and pipeline.MD5 in result.stderr


def test_no_download_flag_refuses_to_fetch(tmp_path):
    with pytest.raises(pipeline.DataError, match="downloading was turned off"):
        pipeline.load(tmp_path, allow_download=False)


@pytest.mark.parametrize("damage", ["truncate", "garbage", "wrong_shape", "bad_labels"])
def test_loader_rejects_a_damaged_batch_with_a_clear_error(small_cifar, tmp_path, damage):
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    for name in pipeline.ALL_FILES:
        (folder / name).write_bytes((small_cifar / "cifar-10-batches-py" / name).read_bytes())
    target = folder / "data_batch_3"
    raw = target.read_bytes()
    if damage == "truncate":
        target.write_bytes(raw[: len(raw) // 2])
    elif damage == "garbage":
        target.write_bytes(b"not a pickle at all" * 10)
    elif damage == "wrong_shape":
        batch = {b"data": np.zeros((4, 100), np.uint8), b"labels": [0, 1, 2, 3]}
        target.write_bytes(pickle.dumps(batch, protocol=2))
    else:
        batch = {b"data": np.zeros((2, 3072), np.uint8), b"labels": [0, 12]}
        target.write_bytes(pickle.dumps(batch, protocol=2))
    with pytest.raises(pipeline.DataError, match="data_batch_3"):
        pipeline.load(tmp_path, allow_download=False)
    result = _run("--data-dir", tmp_path, "--no-download", "--epochs", 1, timeout=120)
    assert result.returncode == 2
    assert "data_batch_3" in result.stderr and "Traceback" not in result.stderr


def test_loader_refuses_pickles_that_would_run_code(tmp_path):
    path = tmp_path / "evil"
    path.write_bytes(pickle.dumps({b"data": os.system}, protocol=2))
    with pytest.raises(pipeline.DataError, match="unexpected object"):
        pipeline.load_batch(path)


def test_official_layout_round_trips(tmp_path):
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (5, 32, 32, 3), dtype=np.uint8)
    labels = np.array([0, 9, 3, 3, 1])
    pipeline.write_batch(tmp_path / "b", images, labels, "b")
    raw = pickle.loads((tmp_path / "b").read_bytes(), encoding="bytes")
    # Official layout: each row is 1024 red, then 1024 green, then 1024 blue values.
    np.testing.assert_array_equal(raw[b"data"][1, :1024], images[1, :, :, 0].reshape(-1))
    np.testing.assert_array_equal(raw[b"data"][1, 2048:], images[1, :, :, 2].reshape(-1))
    loaded, loaded_labels = pipeline.load_batch(tmp_path / "b")
    np.testing.assert_array_equal(loaded, images)
    np.testing.assert_array_equal(loaded_labels, labels)


def test_augment_crops_and_flips_without_changing_pixels():
    import jax
    import jax.numpy as jnp

    images = jnp.arange(2 * 32 * 32 * 3, dtype=jnp.int32).reshape(2, 32, 32, 3) % 251
    images = images.astype(jnp.uint8)
    same = pipeline.augment(jax.random.key(0), images, pad=0)
    for i in range(2):
        assert bool(jnp.all(same[i] == images[i])) or bool(jnp.all(same[i] == images[i, :, ::-1]))
    out = pipeline.augment(jax.random.key(1), images)
    assert out.shape == images.shape and out.dtype == jnp.uint8
    outs = [pipeline.augment(jax.random.key(k), images) for k in range(8)]
    assert len({np.asarray(o).tobytes() for o in outs}) > 1
