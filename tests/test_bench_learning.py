"""scripts/bench_learning.py: a run continues from its last checkpoint across invocations."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "bench_learning.py"
TINY = ["--env", "Pendulum-v1", "--eval-every", "100", "--seeds", "0", "--algos", "DreamerV3",
        "--preset", "debug", "--learning-starts", "50", "--train-ratio", "16", "--workers", "1",
        "--override", "batch_size=2", "--override", "batch_length=8"]


def _run(tmp_path: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MPLBACKEND": "Agg", "PYTHONWARNINGS": "ignore"}
    return subprocess.run(
        [sys.executable, str(SCRIPT), *TINY, "--out", str(tmp_path / "bench"),
         "--state-dir", str(tmp_path / "state"), *extra],
        capture_output=True, text=True, env=env, timeout=300)


def test_a_second_sitting_resumes_and_appends_its_points(tmp_path: Path) -> None:
    first = _run(tmp_path, "--steps", "200")
    assert first.returncode == 0, first.stderr[-2000:]
    state = tmp_path / "state" / "DreamerV3_seed0"
    assert sorted(p.name for p in state.iterdir()) == ["model_200.zip", "progress.json",
                                                       "replay_200.npz"]
    second = _run(tmp_path, "--steps", "300")
    assert second.returncode == 0, second.stderr[-2000:]
    assert "resuming at env step 200" in second.stdout
    (result,) = json.loads((tmp_path / "bench.json").read_text())
    assert [p[0] for p in result["curve"]] == [100, 200, 300]
    assert [(s["start_step"], s["end_step"]) for s in result["sittings"]] == [(0, 200),
                                                                              (200, 300)]
    assert all(s["commit"] and s["cpu"] for s in result["sittings"])
    assert result["opts"]["steps"] == 300 and result["env_steps"] == 300
    # the training clock runs on: the second sitting's points come after the first's
    assert result["curve"][2][3] > result["curve"][1][3] > 0
    # the updates continue where they stopped (train_ratio 16 = one 2 x 8 update per step)
    assert result["n_updates"] == 300 - 50
    assert sorted(p.name for p in state.iterdir()) == ["model_300.zip", "progress.json",
                                                       "replay_300.npz"]
    assert "Sittings" in (tmp_path / "bench.md").read_text()


def test_a_run_with_other_settings_is_not_resumed(tmp_path: Path) -> None:
    assert _run(tmp_path, "--steps", "100").returncode == 0
    other = _run(tmp_path, "--steps", "200", "--override", "lr=0.001")
    assert other.returncode != 0 and "other settings" in other.stderr


def _marked(mark: str) -> list[int]:
    """Processes whose environment holds ``mark`` (Linux /proc)."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if mark.encode() in (entry / "environ").read_bytes():
                    found.append(int(entry.name))
            except OSError:
                continue
    return found


def test_workers_end_with_a_killed_parent(tmp_path: Path) -> None:
    """A pool worker would otherwise train on, unseen, after its parent was killed."""
    import signal
    import time
    import uuid

    import pytest

    if not Path("/proc/self/environ").exists():
        pytest.skip("needs /proc")
    mark = f"PHYSLINK_BENCH_TEST={uuid.uuid4().hex}"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MPLBACKEND": "Agg",
           "PYTHONWARNINGS": "ignore", mark.split("=")[0]: mark.split("=")[1]}
    parent = subprocess.Popen(
        [sys.executable, str(SCRIPT), *TINY, "--steps", "100000", "--out", str(tmp_path / "b"),
         "--state-dir", str(tmp_path / "state")], env=env, stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while len(_marked(mark)) < 2 and time.monotonic() < deadline:  # the parent and a worker
        time.sleep(0.5)
    assert len(_marked(mark)) >= 2
    time.sleep(3)  # the worker is training
    parent.send_signal(signal.SIGKILL)
    parent.wait()
    deadline = time.monotonic() + 30
    while _marked(mark) and time.monotonic() < deadline:
        time.sleep(0.5)
    left = _marked(mark)
    for pid in left:
        os.kill(pid, signal.SIGKILL)
    assert not left
