"""The contrastive losses against their formulas over the written-out B x B logits, the
peers' formulas (open_clip's ClipLoss and SigLipLoss, big_vision's sigmoid loss, optax's
ntxent), their memory, and 8 devices (tests/contrastive_cases.py)."""

import json
import pathlib
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from jax.test_util import check_grads

import jaxloss as jl
from benchmarks.measure import compiled_temp_bytes
from tests import builders as build
from tests.test_sharding import run_script

ROOT = pathlib.Path(__file__).parents[1]
MEASURED = ROOT / "docs" / "measurements" / "cpu-contrastive.json"


def naive_clip(x, y, s, b, smoothing=0.0, direction="both", reduction="mean"):
    """Both directions' cross-entropy over the full logits, from the definition."""
    z = s * x @ y.T + b
    n = z.shape[0]

    def one_way(z):
        lse = jax.nn.logsumexp(z, axis=1)
        return lse - (1 - smoothing) * jnp.diag(z) - smoothing * jnp.mean(z, axis=1)

    rows, cols = one_way(z), one_way(z.T)
    per = {"both": (rows + cols) / 2, "x_to_y": rows, "y_to_x": cols}[direction]
    return {"none": per, "sum": jnp.sum(per), "mean": jnp.sum(per) / n}[reduction]


def naive_sigmoid(x, y, s, b, reduction="mean"):
    z = s * x @ y.T + b
    signs = 2 * jnp.eye(z.shape[0]) - 1
    per = -jnp.sum(jax.nn.log_sigmoid(signs * z), axis=1)
    return {"none": per, "sum": jnp.sum(per), "mean": jnp.mean(per)}[reduction]


def open_clip_clip_loss(x, y, scale):
    """open_clip's ``ClipLoss`` on one device (``local_loss=False``), in NumPy float64:
    ``(F.cross_entropy(logits_per_image, labels) + F.cross_entropy(logits_per_text,
    labels)) / 2`` with ``logits_per_image = logit_scale * image @ text.T``."""
    per_image = scale * x @ y.T
    per_text = scale * y @ x.T

    def mean_cross_entropy(z):
        z = z - z.max(axis=1, keepdims=True)
        log_p = z - np.log(np.exp(z).sum(axis=1, keepdims=True))
        return -np.mean(np.diag(log_p))

    return (mean_cross_entropy(per_image) + mean_cross_entropy(per_text)) / 2


def big_vision_sigmoid_loss(x, y, t, b):
    """big_vision's sigmoid loss (and open_clip's ``SigLipLoss``), in NumPy float64:
    ``-mean(sum(log_sigmoid(m1_diag1 * logits), axis=-1))``."""
    logits = x @ y.T * t + b
    m1_diag1 = 2 * np.eye(len(x)) - 1
    return -np.mean(np.sum(-np.logaddexp(0.0, -m1_diag1 * logits), axis=-1))


def _problem(n, d, seed):
    x, y = build.normal((n, d), seed), build.normal((n, d), seed + 1)
    return x, y, jnp.asarray(1.7), jnp.asarray(-0.4), build.normal((n,), seed + 2)


def _check_clip(n, d, smoothing, direction, reduction, chunk_size, seed):
    x, y, s, b, cotangent = _problem(n, d, seed)

    def fused(*args):
        return jl.contrastive_loss(*args[:2], logit_scale=args[2], logit_bias=args[3],
                                   label_smoothing=smoothing, direction=direction,
                                   reduction=reduction, chunk_size=chunk_size)  # fmt: skip

    def written_out(*args):
        return naive_clip(*args, smoothing, direction, reduction)

    _compare(fused, written_out, (x, y, s, b), cotangent)


def _compare(fused, written_out, args, cotangent):
    """Values, and the gradients of every argument for a random cotangent."""
    np.testing.assert_allclose(fused(*args), written_out(*args), rtol=1e-12, atol=1e-12)

    def weighted(fn):
        return lambda *a: jnp.sum(cotangent[: jnp.size(fn(*args))] * fn(*a))

    argnums = tuple(range(len(args)))
    got = jax.grad(weighted(fused), argnums)(*args)
    want = jax.grad(weighted(written_out), argnums)(*args)
    for g, w in zip(got, want, strict=True):
        np.testing.assert_allclose(g, w, rtol=1e-10, atol=1e-12)


@pytest.mark.exhaustive
@settings(max_examples=25, deadline=None, derandomize=True)
@given(
    n=st.integers(1, 40),
    d=st.integers(1, 9),
    smoothing=st.sampled_from([0.0, 0.1, 1.0]),
    direction=st.sampled_from(["both", "x_to_y", "y_to_x"]),
    reduction=st.sampled_from(["mean", "sum", "none"]),
    chunk_size=st.sampled_from([None, 1, 3, 64]),
    seed=st.integers(0, 2**16),
)
def test_clip_values_and_gradients(n, d, smoothing, direction, reduction, chunk_size, seed):
    with jax.enable_x64(True):
        _check_clip(n, d, smoothing, direction, reduction, chunk_size, seed)


@pytest.mark.parametrize("direction", ["both", "x_to_y", "y_to_x"])
@pytest.mark.parametrize("reduction", ["mean", "none"])
def test_clip_each_direction_and_reduction(x64, direction, reduction):
    """A chunk of 3 rows over 10 (a padded last chunk), with label smoothing."""
    _check_clip(10, 4, 0.1, direction, reduction, 3, 5)


@pytest.mark.exhaustive(quick_cases=2)
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("chunk_size", [None, 1, 4])
def test_sigmoid_values_and_gradients(x64, reduction, chunk_size):
    x, y, s, b, cotangent = _problem(11, 5, 3)

    def fused(*args):
        return jl.sigmoid_contrastive_loss(*args[:2], logit_scale=args[2], logit_bias=args[3],
                                           reduction=reduction, chunk_size=chunk_size)  # fmt: skip

    _compare(fused, lambda *args: naive_sigmoid(*args, reduction), (x, y, s, b), cotangent)


def test_the_peers_formulas(x64):
    """open_clip's ClipLoss (scale = exp of its learned logit_scale), and big_vision's
    sigmoid loss at SigLIP's initial t = 10, b = -10, on unit embeddings."""
    rng = np.random.default_rng(7)
    x, y = (e / np.linalg.norm(e, axis=1, keepdims=True) for e in rng.normal(size=(2, 12, 6)))
    scale = np.exp(np.log(1 / 0.07))
    ours = jl.contrastive_loss(x, y, logit_scale=scale)
    np.testing.assert_allclose(ours, open_clip_clip_loss(x, y, scale), rtol=1e-12)
    ours = jl.sigmoid_contrastive_loss(x, y, logit_scale=10.0, logit_bias=-10.0)
    np.testing.assert_allclose(ours, big_vision_sigmoid_loss(x, y, 10.0, -10.0), rtol=1e-12)


def test_ntxent_equals_optax(x64):
    """optax.losses.ntxent's value, and the gradients of the embeddings and the
    temperature; "sum" and "none" against the same rows."""
    optax = pytest.importorskip("optax")
    e = build.normal((12, 5), 4)
    labels = jnp.asarray(np.random.default_rng(4).integers(0, 4, 12))
    for t in (0.07, 0.5, 2.0):
        ours = jax.value_and_grad(jl.ntxent_loss, (0, 2))(e, labels, t, chunk_size=5)
        theirs = jax.value_and_grad(optax.losses.ntxent, (0, 2))(e, labels, t)
        np.testing.assert_allclose(ours[0], theirs[0], rtol=1e-12)
        for g, w in zip(ours[1], theirs[1], strict=True):
            np.testing.assert_allclose(g, w, rtol=1e-9, atol=1e-12)
    none = jl.ntxent_loss(e, labels, 0.5, reduction="none")
    same = labels[:, None] == labels[None, :]
    pairs = jnp.sum(same) - 12
    np.testing.assert_allclose(jnp.sum(none) / pairs, optax.losses.ntxent(e, labels, 0.5))
    np.testing.assert_allclose(jl.ntxent_loss(e, labels, 0.5, reduction="sum"), jnp.sum(none))


def test_ntxent_without_a_positive_pair_is_zero_where_optax_gives_nan(x64):
    optax = pytest.importorskip("optax")
    e, labels = build.normal((4, 3), 1), jnp.arange(4)
    assert np.isnan(optax.losses.ntxent(e, labels))
    value, grad = jax.value_and_grad(jl.ntxent_loss)(e, labels)
    assert value == 0 and np.all(grad == 0)


def test_ntxent_labels_of_every_integer_dtype():
    e = build.normal((10, 4), 2, jnp.float32)
    labels = np.random.default_rng(2).integers(0, 3, 10)
    want = jl.ntxent_loss(e, jnp.asarray(labels, jnp.int32), 0.3)
    for dtype in (jnp.int8, jnp.uint8, jnp.int16, jnp.uint16, jnp.uint32):
        np.testing.assert_array_equal(jl.ntxent_loss(e, jnp.asarray(labels, dtype), 0.3), want)


@pytest.mark.exhaustive
def test_second_order_of_every_argument(x64):
    x, y, s, b, _ = _problem(6, 3, 9)
    labels = jnp.array([0, 1, 0, 2, 1, 2])

    def clip(*args):
        return jl.contrastive_loss(*args[:2], logit_scale=args[2], logit_bias=args[3],
                                   label_smoothing=0.2, chunk_size=4)  # fmt: skip

    def sigmoid(*args):
        return jl.sigmoid_contrastive_loss(*args[:2], logit_scale=args[2], logit_bias=args[3],
                                           chunk_size=4)  # fmt: skip

    for fn in (clip, sigmoid):
        check_grads(fn, (x, y, s, b), order=2, modes=("fwd", "rev"), atol=1e-5, rtol=1e-5)
    ntxent = lambda e, t: jl.ntxent_loss(e, labels, t, chunk_size=4)  # noqa: E731
    check_grads(ntxent, (x, jnp.asarray(0.5)), order=2, modes=("fwd", "rev"))


def test_bfloat16_accumulates_in_float32(x64):
    x, y, s, b, _ = _problem(20, 8, 2)
    x16, y16 = x.astype(jnp.bfloat16), y.astype(jnp.bfloat16)
    exact = naive_clip(x16.astype(jnp.float64), y16.astype(jnp.float64), s, b)
    got = jl.contrastive_loss(x16, y16, logit_scale=s, logit_bias=b)
    assert got.dtype == jnp.bfloat16
    np.testing.assert_allclose(float(got), exact, rtol=1e-2)
    grad = jax.grad(lambda x: jl.contrastive_loss(x, y16, logit_scale=s, logit_bias=b))(x16)
    assert grad.dtype == jnp.bfloat16


def test_errors_name_their_argument():
    x = jnp.zeros((4, 3))
    with pytest.raises(ValueError, match="y must have x's shape"):
        jl.contrastive_loss(x, jnp.zeros((4, 2)))
    with pytest.raises(ValueError, match=r"x must have shape \(B, D\)"):
        jl.sigmoid_contrastive_loss(jnp.zeros(4), jnp.zeros(4))
    with pytest.raises(TypeError, match="y must have a floating dtype"):
        jl.contrastive_loss(x, jnp.zeros((4, 3), jnp.int32))
    with pytest.raises(ValueError, match="direction must be one of"):
        jl.contrastive_loss(x, x, direction="both_ways")
    with pytest.raises(ValueError, match="label_smoothing"):
        jl.contrastive_loss(x, x, label_smoothing=1.5)
    with pytest.raises(ValueError, match="logit_scale"):
        jl.contrastive_loss(x, x, logit_scale=jnp.ones(2))
    with pytest.raises(TypeError, match="axis_name must be"):
        jl.sigmoid_contrastive_loss(x, x, axis_name=0)
    with pytest.raises(ValueError, match="chunk_size"):
        jl.sigmoid_contrastive_loss(x, x, chunk_size=0)
    with pytest.raises(TypeError, match="labels must be integers"):
        jl.ntxent_loss(x, jnp.zeros(4))
    with pytest.raises(ValueError, match="labels must have shape"):
        jl.ntxent_loss(x, jnp.zeros(3, jnp.int32))
    with pytest.raises(ValueError, match="temperature must be > 0"):
        jl.ntxent_loss(x, jnp.zeros(4, jnp.int32), 0.0)


# --- memory ------------------------------------------------------------------------------

B, D = 16384, 256


def _programs():
    """(ours, the written-out form, shapes) of each loss's value and gradients."""
    optax = pytest.importorskip("optax")
    pair = [jax.ShapeDtypeStruct((B, D), jnp.float32)] * 2 + [
        jax.ShapeDtypeStruct((), jnp.float32)
    ] * 2
    ntxent = [jax.ShapeDtypeStruct((B, D), jnp.float32), jax.ShapeDtypeStruct((B,), jnp.int32),
              jax.ShapeDtypeStruct((), jnp.float32)]  # fmt: skip

    def grad(fn, argnums):
        return jax.value_and_grad(fn, argnums)

    def clip(x, y, s, b):
        return jl.contrastive_loss(x, y, logit_scale=s, logit_bias=b)

    def sigmoid(x, y, s, b):
        return jl.sigmoid_contrastive_loss(x, y, logit_scale=s, logit_bias=b)

    def optax_clip(x, y, s, b):  # how users write it: optax over the written-out logits
        z, pairs = s * x @ y.T + b, jnp.arange(x.shape[0])
        rows = optax.softmax_cross_entropy_with_integer_labels(z, pairs)
        return jnp.mean(rows + optax.softmax_cross_entropy_with_integer_labels(z.T, pairs)) / 2

    everything = (0, 1, 2, 3)
    return {
        "contrastive_loss": (grad(clip, everything), grad(optax_clip, everything), pair),
        "sigmoid_contrastive_loss": (
            grad(sigmoid, everything),
            grad(naive_sigmoid, everything),
            pair,
        ),
        "ntxent_loss": (grad(jl.ntxent_loss, (0, 2)), grad(optax.losses.ntxent, (0, 2)), ntxent),
    }


def test_compiled_temporaries_against_the_written_out_logits():
    """B = 16384, D = 256 float32, value and every gradient, one device (compiles
    only): at most a quarter of the written-out program's temporaries, the figures
    docs/contrastive.md quotes."""
    page = (ROOT / "docs" / "contrastive.md").read_text()
    for name, (ours, theirs, shapes) in _programs().items():
        fused_mib, naive_mib = (compiled_temp_bytes(f, *shapes) / 2**20 for f in (ours, theirs))
        assert fused_mib * 4 <= naive_mib, name
        row = re.search(rf"\| `{name}` \| ([\d,.]+) MiB \| ([\d,.]+) MiB \|", page)
        assert row, name
        quoted = (float(row[1].replace(",", "")), float(row[2].replace(",", "")))
        np.testing.assert_allclose((fused_mib, naive_mib), quoted, rtol=0.05, err_msg=name)


# --- 8 devices ---------------------------------------------------------------------------


@pytest.mark.exhaustive
def test_eight_devices_agree_with_one_in_every_mode():
    """The batch split over 8 devices: automatic with no mesh, automatic and explicit
    under ``jax.set_mesh``, and a user's ``shard_map`` with ``axis_name``."""
    lines = run_script("contrastive_cases.py", "agree")
    assert len(lines) == 12
    for line in lines:
        assert line["value_error"] <= 1e-5 * max(1.0, abs(line["value"])), line
        assert line["grad_error"] <= 1e-5 * max(1.0, line["grad_scale"]), line


@pytest.mark.exhaustive
def test_row_groups_on_eight_devices_to_second_order():
    """With no mesh set the rows are walked in one group per device: ``check_grads`` to
    second order in both modes (inside the script), with a padded last chunk in each
    group, and the value equal to the written-out loss's."""
    lines = run_script("contrastive_cases.py", "second_order")
    assert len(lines) == 4
    for line in lines:
        assert line["value_error"] <= 1e-12, line


@pytest.mark.exhaustive
def test_collectives_and_temporaries_per_device_as_documented():
    """B = 16384, D = 256 on 8 devices (compiles only): the counts of the saved run that
    docs/contrastive.md quotes, exactly; under a mesh or in ``shard_map`` at most 1.1x
    the written-out program's collective elements, and everywhere at most a quarter of
    its temporaries per device."""
    lines = run_script("contrastive_cases.py", "measure", str(B), str(D), codegen="")
    saved = json.loads(MEASURED.read_text())["cells"]
    assert [(c["mode"], c["loss"]) for c in lines] == [(c["mode"], c["loss"]) for c in saved]
    for line, cell in zip(lines, saved, strict=True):
        assert line["fused_elements"] == cell["fused_elements"], line
        assert line["naive_elements"] == cell["naive_elements"], line
        np.testing.assert_allclose(line["fused_temp"], cell["fused_temp"], rtol=0.05)
        assert line["fused_temp"] * 4 <= line["naive_temp"], line
        assert line["fused_elements"] <= 1.1 * line["naive_elements"], line


@pytest.mark.exhaustive
def test_a_batch_on_one_of_eight_devices_as_documented():
    """With no mesh set the rows are walked in one group per device even where the
    batch is on one device: the temporaries docs/contrastive.md quotes, under a
    quarter of the written-out program's, and one group's again under a one-device
    mesh; the value is the split batch's either way."""
    page = re.sub(r"\s+", " ", (ROOT / "docs" / "contrastive.md").read_text())
    quoted = re.search(
        r"holds ([\d.]+) MiB of temporaries for CLIP and ([\d.]+) MiB for SigLIP at this "
        r"shape instead of ([\d.]+) and ([\d.]+) MiB", page
    )  # fmt: skip
    assert quoted
    written_out = {  # one device, the table test_compiled_temporaries checks
        name: float(re.search(rf"\| `{name}` \| [\d,.]+ MiB \| ([\d,.]+) MiB", page)[1]
                    .replace(",", ""))
        for name in ("contrastive_loss", "sigmoid_contrastive_loss")
    }  # fmt: skip
    expected = {
        ("contrastive_loss", "no mesh"): float(quoted[1]),
        ("sigmoid_contrastive_loss", "no mesh"): float(quoted[2]),
        ("contrastive_loss", "one-device mesh"): float(quoted[3]),
        ("sigmoid_contrastive_loss", "one-device mesh"): float(quoted[4]),
    }
    lines = run_script("contrastive_cases.py", "unsplit", str(B), str(D), codegen="")
    assert {(line["loss"], line["setting"]) for line in lines} == set(expected)
    for line in lines:
        mib = line["temp"] / 2**20
        np.testing.assert_allclose(mib, expected[line["loss"], line["setting"]], rtol=0.05)
        assert mib * 4 <= written_out[line["loss"]], line
        assert line["value_error"] <= 1e-5 * max(1.0, abs(line["value"])), line


def test_the_documented_table_is_the_saved_run():
    """docs/contrastive.md's 8-device table is ``table`` of the saved run, and its
    no-mesh ratios are that run's."""
    from tests.contrastive_cases import table

    page = (ROOT / "docs" / "contrastive.md").read_text()
    cells = json.loads(MEASURED.read_text())["cells"]
    assert table(cells) in page
    ratio = {c["loss"]: c["fused_elements"] / c["naive_elements"]
             for c in cells if c["mode"] == "auto"}  # fmt: skip
    quoted = (f"CLIP moves {ratio['contrastive_loss']:.2f}× and SigLIP "
              f"{ratio['sigmoid_contrastive_loss']:.2f}× the written-out")  # fmt: skip
    assert quoted in re.sub(r"\s+", " ", page)
