"""The example scripts in scripts/ run as is, at a tiny size, in a subprocess."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from PIL import Image

from physlink_gym import DreamerV3

SCRIPTS = Path(__file__).resolve().parents[1] / "scripts"
TINY = ["--preset", "debug", "--gif-steps", "6"]


class _Script:
    """One example script started in the background (the three run side by side)."""

    def __init__(self, script: str, args: list[str], cwd: Path) -> None:
        env = {**os.environ, "OMP_NUM_THREADS": "1", "MPLBACKEND": "Agg"}
        self.proc = subprocess.Popen(
            [sys.executable, str(SCRIPTS / script), *TINY, *args], cwd=cwd, env=env,
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )  # fmt: skip

    def result(self) -> str:
        out, err = self.proc.communicate(timeout=300)
        assert self.proc.returncode == 0, err[-3000:]
        return out


def _tiny_args(out: Path) -> dict[str, tuple[str, list[str]]]:
    """Script and tiny-size flags of every example that can run here."""
    todo = {
        "pendulum": (
            "train_pendulum.py",
            [
                "--timesteps",
                "40",
                "--learning-starts",
                "1000",
                "--logdir",
                str(out),
                "--image-every",
                "20",
            ],
        )
    }
    if importlib.util.find_spec("mujoco") is not None:
        todo["mujoco"] = (
            "train_mujoco.py",
            ["--timesteps", "20", "--learning-starts", "1000", "--logdir", str(out)],
        )
    if hasattr(DreamerV3, "fit"):
        todo["fit"] = (
            "record_and_fit.py",
            [
                "--timesteps",
                "60",
                "--gradient-steps",
                "2",
                "--batch-size",
                "2",
                "--sequence-length",
                "8",
                "--eval-episodes",
                "1",
                "--out",
                str(out / "raf"),
            ],
        )
    return todo  # fmt: skip


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, tuple[_Script, Path]]]:
    """Start every example at a tiny size at once (each in its own folder); tests wait."""
    started: dict[str, tuple[_Script, Path]] = {}
    for key in _tiny_args(Path()):
        tmp = tmp_path_factory.mktemp(key)
        script, args = _tiny_args(tmp)[key]
        started[key] = (_Script(script, args, tmp), tmp)
    yield started
    for running, _ in started.values():
        if running.proc.poll() is None:
            running.proc.kill()
            running.proc.communicate()


def _frames(path: Path) -> int:
    with Image.open(path) as gif:
        return int(gif.n_frames)


def test_train_pendulum(runs: dict[str, tuple[_Script, Path]]) -> None:
    script, tmp = runs["pendulum"]
    out = script.result()
    run = tmp / "pendulum"
    assert "pendulum_energy (soft):" in out and (run / "model.zip").exists()
    assert (run / "compliance.png").exists() and (run / "compliance.json").exists()
    gifs = sorted(p.name for p in (run / "gifs").iterdir())
    assert gifs == ["triptych_20.gif", "triptych_40.gif"]
    assert _frames(run / "triptych_final.gif") == 6
    assert list(tmp.glob("DreamerV3_1/events.out.tfevents.*"))


def test_train_mujoco(runs: dict[str, tuple[_Script, Path]]) -> None:
    if "mujoco" not in runs:
        pytest.skip("mujoco is not installed")
    script, tmp = runs["mujoco"]
    out = script.result()
    assert "sim_health (hard):" in out and "joint_limits (" in out
    assert _frames(tmp / "halfcheetah" / "triptych_final.gif") == 6


@pytest.mark.skipif(not hasattr(DreamerV3, "fit"), reason="DreamerV3.fit not available yet")
def test_record_and_fit(runs: dict[str, tuple[_Script, Path]]) -> None:
    script, tmp = runs["fit"]
    out = script.result()
    assert "held-out world-model loss" in out and "mean return" in out
    assert (tmp / "raf" / "trajectories.npz").exists()
    assert _frames(tmp / "raf" / "triptych_held_out.gif") >= 2
