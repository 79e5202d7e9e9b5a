"""The CIFAR-10 example end to end on small data sets written in the official format."""

import json
import os
import pickle
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import configs
import input_pipeline as pipeline
import main
import make_synthetic_data
import train

UNREACHABLE = "http://127.0.0.1:9/cifar-10-python.tar.gz"


@pytest.fixture(scope="module")
def small_cifar(tmp_path_factory):
    out = tmp_path_factory.mktemp("cifar")
    make_synthetic_data.write(out, num_train=640, num_test=200, seed=1)
    return out


def run_main(data_dir, workdir, capsys, *flags):
    """main.main on the cpu preset with ``flags``: its exit code, stdout and stderr."""
    args = ["--config", "cpu", "--data-dir", str(data_dir), "--workdir", str(workdir), *flags]
    code = main.main(args)
    out, err = capsys.readouterr()
    return code, out, err


def test_main_runs_one_small_epoch(small_cifar, tmp_path, capsys):
    """The quick smoke run: one epoch of two steps on a narrow network."""
    workdir = tmp_path / "run"
    flags = ["--epochs", "1", "--train-subset", "128", "--batch-size", "64", "--width", "4"]
    code, out, err = run_main(small_cifar, workdir, capsys, *flags)
    assert code == 0, err[-3000:]
    (epoch,) = json.loads((workdir / "metrics.json").read_text())["epochs"]
    assert np.isfinite(epoch["train_loss"]) and 0.0 <= epoch["test_accuracy"] <= 1.0
    assert (workdir / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert out.strip().splitlines()[-1].startswith("final test accuracy: ")


@pytest.mark.exhaustive
def test_main_trains_evaluates_and_reports(small_cifar, tmp_path, capsys):
    workdir = tmp_path / "run"
    flags = ["--epochs", "2", "--batch-size", "64", "--width", "8"]
    code, out, err = run_main(small_cifar, workdir, capsys, *flags)
    assert code == 0, err[-3000:]
    metrics = json.loads((workdir / "metrics.json").read_text())
    assert metrics["config"]["width"] == 8 and metrics["config"]["epochs"] == 2
    assert metrics["config"]["label_smoothing"] == configs.get("cpu").label_smoothing
    epochs = metrics["epochs"]
    assert [e["epoch"] for e in epochs] == [1, 2]
    assert epochs[1]["train_loss"] < epochs[0]["train_loss"]
    assert epochs[-1]["test_accuracy"] > 0.2  # chance is 0.1
    for e in epochs:
        # 640 images at batch 64: ten steps, of which the first (compiling) is not timed.
        assert e["step_seconds"] > 0
        assert e["images_per_second"] == pytest.approx(64 / e["step_seconds"])
        # The smoothed objective is above the plain cross-entropy of the same batches.
        assert e["train_objective"] > e["train_loss"]
    assert (workdir / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert out.splitlines()[0] == "preset cpu with epochs=2, batch_size=64, width=8"
    last = out.strip().splitlines()[-1]
    assert last == f"final test accuracy: {epochs[-1]['test_accuracy']:.4f} " + (
        f"({100 * epochs[-1]['test_accuracy']:.2f}%)"
    )
    # The progress bar: its last loss is the running mean over the whole epoch.
    assert "epoch 1/2" in err and "img/s=" in err
    shown = float(err.rsplit("loss=", 1)[1][:5])
    assert shown == pytest.approx(epochs[-1]["train_objective"], abs=6e-4)
    assert re.search(r"^finished in \d+ min \d+ s$", out, re.M)


def test_training_subset_is_fixed_by_the_seed_and_covers_the_classes(small_cifar):
    data = pipeline.load(small_cifar, allow_download=False)
    config = configs.Config(train_subset=100, seed=3)
    images, labels = train.training_subset(data, config)
    again, _ = train.training_subset(data, config)
    assert images.shape == (100, 32, 32, 3) and np.array_equal(images, again)
    assert set(labels.tolist()) == set(range(10))
    all_images, _ = train.training_subset(data, configs.Config())
    assert len(all_images) == 640


def test_one_epoch_plot_centres_its_point_and_says_what_the_losses_are():
    history = [
        {"epoch": 1, "train_loss": 1.5, "test_loss": 1.7, "test_accuracy": 0.4},
    ]
    figure = train.plot_curves(history, label_smoothing=0.2)
    ax_loss, ax_acc = figure.axes
    for ax in (ax_loss, ax_acc):
        low, high = ax.get_xlim()
        assert low < 1 < high and high - low >= 1
        assert [t for t in ax.get_xticks() if low <= t <= high] == [1.0]
    assert "label smoothing 0.2" in ax_loss.get_title() and "without" in ax_loss.get_title()
    labels = [line.get_label() for line in ax_loss.get_lines()]
    assert labels[0].startswith("train") and labels[1] == "test"
    assert train.plot_curves(history * 1, label_smoothing=0.0).axes[0].get_title() == (
        "cross-entropy"
    )


def test_auto_picks_the_preset_of_the_backend_and_flags_override_fields():
    name, config = main.config_from_args(main.parse_args([]))
    expected = "cpu" if jax.default_backend() == "cpu" else "full"
    assert name == expected and config == configs.get(expected)
    name, config = main.config_from_args(
        main.parse_args(["--config", "full", "--epochs", "3", "--no-progress"])
    )
    assert name == "full" and config.epochs == 3 and not config.progress
    assert config.width == configs.get("full").width


def test_every_option_has_help_with_its_default(capsys):
    with pytest.raises(SystemExit):
        main.parse_args(["--help"])
    text = " ".join(capsys.readouterr().out.split())
    options = text.split("options:", 1)[1]
    for flag in [
        "--config", "--data-dir", "--workdir", *main.OVERRIDES, "--download-url",
    ]:  # fmt: skip
        help_text = options.split(flag, 1)[1].split(" --", 1)[0]
        assert "default: " in help_text, (flag, help_text)
    assert "--width WIDTH channels" in options and "64 (full), 16 (cpu)" in options
    for flag in ("--no-download", "--no-progress"):
        assert len(options.split(flag, 1)[1].split(" --", 1)[0].split()) >= 4


def test_synthetic_data_maker_documents_its_options_and_writes_what_main_reads(tmp_path, capsys):
    with pytest.raises(SystemExit):
        make_synthetic_data.main(["--help"])
    text = " ".join(capsys.readouterr().out.split()).split("options:", 1)[1]
    for flag, default in [("--train", "50000"), ("--test", "10000"), ("--seed", "0")]:
        help_text = text.split(f"{flag} {flag[2:].upper()}", 1)[1].split(" --", 1)[0]
        assert f"(default: {default})" in help_text, (flag, help_text)
    assert "--out OUT folder to write" in text and "(default: None)" not in text
    make_synthetic_data.main(["--out", str(tmp_path), "--train", "50", "--test", "20"])
    data = pipeline.load(tmp_path, allow_download=False)
    assert len(data.train_images) == 50 and len(data.test_images) == 20


def test_missing_data_names_the_files_the_url_and_the_synthetic_maker(tmp_path, capsys):
    data_dir = tmp_path / "nowhere" / "data"
    code = main.main(["--data-dir", str(data_dir), "--download-url", UNREACHABLE])
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err
    for name in pipeline.ALL_FILES:
        assert str(data_dir / "cifar-10-batches-py" / name) in err
    assert pipeline.URL in err and pipeline.MD5 in err
    assert f"make_synthetic_data.py --out {data_dir}" in err
    assert not (tmp_path / "nowhere").exists()  # no empty folder left behind


def test_a_failed_download_keeps_folders_that_existed(tmp_path):
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "notes.txt").write_text("mine")
    with pytest.raises(pipeline.DataError):
        pipeline.load(tmp_path / "data", url=UNREACHABLE)
    assert sorted(p.name for p in (tmp_path / "data").iterdir()) == ["notes.txt"]
    with pytest.raises(pipeline.DataError):
        pipeline.load(tmp_path, url=UNREACHABLE)
    assert tmp_path.is_dir()


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


def test_main_reports_a_damaged_batch_without_a_traceback(small_cifar, tmp_path, capsys):
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    for name in pipeline.ALL_FILES:
        (folder / name).write_bytes((small_cifar / "cifar-10-batches-py" / name).read_bytes())
    (folder / "data_batch_3").write_bytes(b"not a pickle at all")
    assert main.main(["--data-dir", str(tmp_path), "--no-download"]) == 2
    err = capsys.readouterr().err
    assert "data_batch_3" in err and "Traceback" not in err


def test_loader_returns_named_fields(small_cifar):
    data = pipeline.load(small_cifar, allow_download=False)
    assert data.train_images.shape == (640, 32, 32, 3) and data.train_images.dtype == np.uint8
    assert data.train_labels.shape == (640,) and data.test_labels.shape == (200,)
    assert data.label_names == [f"pattern_{i}" for i in range(10)]


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
    images = jnp.arange(2 * 32 * 32 * 3, dtype=jnp.int32).reshape(2, 32, 32, 3) % 251
    images = images.astype(jnp.uint8)
    same = pipeline.augment(jax.random.key(0), images, pad=0)
    for i in range(2):
        assert bool(jnp.all(same[i] == images[i])) or bool(jnp.all(same[i] == images[i, :, ::-1]))
    out = pipeline.augment(jax.random.key(1), images)
    assert out.shape == images.shape and out.dtype == jnp.uint8
    outs = [pipeline.augment(jax.random.key(k), images) for k in range(8)]
    assert len({np.asarray(o).tobytes() for o in outs}) > 1
