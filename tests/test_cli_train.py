"""physlink-gym train | evaluate | report: the main job end to end, and bad input as one line."""

from __future__ import annotations

import json

import pytest

from physlink_gym.cli import main

TINY = ["--preset", "debug", "--timesteps", "60", "--learning-starts", "30",
        "--train-ratio", "256", "--no-progress", "--eval-episodes", "0"]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    logdir = tmp_path_factory.mktemp("runs")
    code = main(["train", "--env", "Pendulum-v1", "--logdir", str(logdir), *TINY,
                 "--set", "warmup=7", "--set", "lr=0.001"])
    return code, logdir


def test_train_writes_checkpoint_logs_report_and_triptych(trained, capsys):
    code, logdir = trained
    assert code == 0
    run = logdir / "DreamerV3_1"
    assert (run / "model.zip").is_file()
    assert list(run.glob("events.out.tfevents.*"))
    report = json.loads((run / "compliance.json").read_text())
    names = [inv["name"] for inv in report["invariants"]]
    assert names == ["finite", "action_bounds", "pendulum_energy"]
    assert (run / "compliance.png").stat().st_size > 0
    assert list((run / "triptych").glob("triptych_*.gif"))  # each run keeps its own GIFs


def test_train_prints_the_return_before_and_after_training(tmp_path, capsys):
    args = [a for a in TINY if a not in ("--eval-episodes", "0")]
    code = main(["train", "--env", "Pendulum-v1", "--logdir", str(tmp_path), *args,
                 "--eval-episodes", "2"])
    assert code == 0
    out = capsys.readouterr().out
    lines = [line for line in out.splitlines() if line.startswith("evaluation")]
    assert [line.split(":")[0] for line in lines] == [
        "evaluation before training", "evaluation after training"]
    assert all("over 2 deterministic episodes" in line for line in lines)
    assert "trained 60 env steps with" in out


def test_train_set_overrides_reach_the_saved_config(trained):
    from physlink_gym import DreamerV3

    _, logdir = trained
    config = DreamerV3.load(logdir / "DreamerV3_1" / "model.zip").config
    assert (config.warmup, config.lr) == (7, 0.001)


def test_evaluate_and_report_read_what_train_wrote(trained, capsys):
    _, logdir = trained
    run = logdir / "DreamerV3_1"
    assert main(["evaluate", str(run / "model.zip"), "--env", "Pendulum-v1",
                 "--episodes", "1"]) == 0
    out = capsys.readouterr().out
    assert "Pendulum-v1: mean return" in out and "over 1 episodes" in out
    assert main(["report", str(run)]) == 0
    out = capsys.readouterr().out
    assert "finite (hard): PASS" in out and "pendulum_energy (soft):" in out


@pytest.mark.parametrize(
    ("argv", "code", "needle"),
    [
        (["train", "--env", "NoSuchEnv-v9"], 1, "NoSuchEnv-v9"),
        (["train", "--env", "Pendulum-v1", "--invariants", "finite,warp_drive"], 1,
         "warp_drive"),
        (["train", "--env", "Pendulum-v1", "--timesteps", "many"], 2, "many"),
        (["evaluate", "missing.zip", "--env", "Pendulum-v1"], 1, "missing.zip"),
        (["report", "/nonexistent/run"], 1, "compliance"),
        (["train", "--env", "Pendulum-v1", "--set", "warp_factor=9"], 1, "warp_factor"),
        (["train", "--env", "Pendulum-v1", "--set", "warmup"], 2, "KEY=VALUE"),
    ],
)
def test_bad_input_is_one_clear_line(argv, code, needle, capsys):
    assert main(argv) == code
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("physlink-gym: error:")
    assert needle in err and "Traceback" not in err
