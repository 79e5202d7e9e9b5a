"""The language-model head example: one process in-process, and two processes of 2 CPU
devices each launched as its docstring says."""

import json
import os
import pathlib
import socket
import subprocess
import sys

import pytest

import lm_head

SCRIPT = pathlib.Path(lm_head.__file__)
SMALL = ["--batch", "8", "--length", "32", "--hidden", "32", "--log-every", "10"]


def test_one_process_learns_and_reports(tmp_path):
    out = tmp_path / "run.json"
    result = lm_head.main([*SMALL, "--steps", "60", "--json", str(out)])
    assert json.loads(out.read_text()) == json.loads(json.dumps(result))
    curve = result["loss_curve"]
    assert [step for step, _ in curve] == [0, 10, 20, 30, 40, 50, 59]
    # Bytes start near uniform (log 256 = 5.55 nats) and the model learns the text.
    assert 5.0 < curve[0][1] < 6.5
    assert curve[-1][1] < curve[0][1] - 1.0
    assert result["tokens_per_second"] > 0
    assert result["tokens_per_step"] == 8 * 32
    memory = result["memory_per_device"]
    assert memory["argument_bytes"] > 0 and memory["temp_bytes"] >= 0


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def test_two_processes_run_the_documented_launch(tmp_path):
    port = _free_port()
    # As a user launches it: no PYTHONPATH, and from another directory.
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    out = tmp_path / "two.json"
    common = [*SMALL, "--steps", "12", "--num-processes", "2", "--coordinator",
              f"localhost:{port}", "--cpu-devices", "2", "--json", str(out)]  # fmt: skip
    procs = [
        subprocess.Popen(
            [sys.executable, str(SCRIPT), *common, "--process-id", str(i)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
            cwd=tmp_path,
        )
        for i in range(2)
    ]
    try:
        outputs = [proc.communicate(timeout=240) for proc in procs]
    finally:
        for proc in procs:
            proc.kill()
    for proc, (stdout, stderr) in zip(procs, outputs, strict=True):
        assert proc.returncode == 0, stdout[-2000:] + stderr[-4000:]
    result = json.loads(out.read_text())
    assert result["processes"] == 2 and result["devices"] == 4
    assert result["mesh"] == {"data": 2, "vocab": 2}
    assert "2 process(es), 4 devices" in outputs[0][0]
    # Only process 0 prints (gloo itself reports its connections on stdout).
    assert "step" not in outputs[1][0] and "step" in outputs[0][0]
    # The same data and seed as one process of 4 devices: the same losses.
    single = lm_head.main([*SMALL, "--steps", "12"])
    pairs = zip(result["loss_curve"], single["loss_curve"], strict=True)
    for (step, loss), (step_1, loss_1) in pairs:
        assert step == step_1 and abs(loss - loss_1) < 1e-4


@pytest.mark.exhaustive
def test_explicit_sharding_gives_the_same_losses_and_communication():
    """--explicit (explicit axis types under jax.set_mesh) trains as automatic sharding
    does, and the fused loss's step communicates no more than the unfused loss's."""
    auto = lm_head.main([*SMALL, "--steps", "12"])
    explicit = lm_head.main([*SMALL, "--steps", "12", "--explicit"])
    assert explicit["sharding"] == "explicit" and auto["sharding"] == "auto"
    for (step, loss), (step_1, loss_1) in zip(
        explicit["loss_curve"], auto["loss_curve"], strict=True
    ):
        assert step == step_1 and abs(loss - loss_1) < 1e-4
    for result in (auto, explicit):
        communication = result["communication_per_step"]
        assert communication["fused"] <= 1.1 * communication["unfused"], communication
