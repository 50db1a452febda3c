"""The physlink-gym command line: exit codes, one-line errors, python -m entry point."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from physlink_gym import cli, diagnostics
from physlink_gym.diagnostics import Check, DoctorReport
from physlink_gym.errors import ValidationError

GO = DoctorReport([Check("python", "OK", "3.11")])
NO_GO = DoctorReport([Check("torch", "FAIL", "not installed", fix="pip install torch")])


def run_module(*args: str, pythonpath: str = "") -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    if pythonpath:
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [pythonpath, env.get("PYTHONPATH")]))
    return subprocess.run(
        [sys.executable, "-m", "physlink_gym", *args],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
    )


@pytest.fixture
def verdict(monkeypatch):
    """Make doctor() return a canned report; returns a setter."""

    def set_report(report: DoctorReport) -> None:
        def fake(print_table: bool = True) -> DoctorReport:
            if print_table:
                print(report.table())
            return report

        monkeypatch.setattr(diagnostics, "doctor", fake)

    return set_report


@pytest.mark.parametrize(("report", "code"), [(GO, 0), (NO_GO, 1)])
def test_doctor_exit_code_follows_verdict(verdict, capsys, report, code):
    verdict(report)
    assert cli.main(["doctor"]) == code
    assert report.summary() in capsys.readouterr().out


def test_doctor_json_and_quiet(verdict, capsys):
    verdict(NO_GO)
    assert cli.main(["doctor", "--json"]) == 1
    data = json.loads(capsys.readouterr().out)
    assert data["verdict"] == "NO-GO" and data["checks"][0]["name"] == "torch"
    assert cli.main(["doctor", "--quiet"]) == 1
    assert capsys.readouterr().out == ""


@pytest.mark.parametrize(
    ("argv", "needle"),
    [
        (["bogus"], "invalid choice: 'bogus'"),
        ([], "required: COMMAND"),
        (["doctor", "--nope"], "unrecognized arguments: --nope"),
        (["doctor", "--json", "--quiet"], "not allowed with"),
    ],
)
def test_usage_errors_are_one_line_exit_2(capsys, argv, needle):
    assert cli.main(argv) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    lines = captured.err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("physlink-gym: error: ") and needle in lines[0]


def test_physlink_errors_are_one_line_exit_1(monkeypatch, capsys):
    def boom(print_table: bool = True) -> DoctorReport:
        raise ValidationError(got="x=1", expected="x=2", fix="pass x=2")

    monkeypatch.setattr(diagnostics, "doctor", boom)
    assert cli.main(["doctor"]) == 1
    err = capsys.readouterr().err
    assert err == "physlink-gym: error: Got: x=1. Expected: x=2. Fix: pass x=2.\n"


def test_keyboard_interrupt_exits_130(monkeypatch, capsys):
    def interrupted(print_table: bool = True) -> DoctorReport:
        raise KeyboardInterrupt

    monkeypatch.setattr(diagnostics, "doctor", interrupted)
    assert cli.main(["doctor"]) == 130
    assert capsys.readouterr().err == "physlink-gym: error: interrupted\n"


def test_help_and_version_return_0(capsys):
    assert cli.main(["--help"]) == 0
    assert "doctor" in capsys.readouterr().out
    assert cli.main(["--version"]) == 0
    assert capsys.readouterr().out.strip() == f"physlink-gym {cli.__version__}"


def test_every_registered_command_has_a_handler():
    parser = cli.build_parser()
    subparsers = next(a for a in parser._actions if a.dest == "command")
    assert set(subparsers.choices) >= {"doctor"}
    for name, sub in subparsers.choices.items():
        assert callable(sub.get_default("func")), name


def test_real_doctor_exit_code_matches_its_verdict(capsys):
    code = cli.main(["doctor", "--json"])
    data = json.loads(capsys.readouterr().out)
    assert code == (0 if data["verdict"] == "GO" else 1)
    assert {c["name"] for c in data["checks"]} >= {"python", "torch", "cuda"}


def test_python_m_doctor_without_torch_exits_1(tmp_path):
    # A stub `torch` package first on the path makes `import torch` fail in the child process
    # (and keeps this test fast: the real torch is never imported there).
    (tmp_path / "torch").mkdir()
    (tmp_path / "torch" / "__init__.py").write_text("raise ImportError('torch hidden by test')")
    proc = run_module("doctor", "--json", pythonpath=str(tmp_path))
    assert proc.returncode == 1, proc.stderr
    data = json.loads(proc.stdout)
    torch_check = next(c for c in data["checks"] if c["name"] == "torch")
    assert data["verdict"] == "NO-GO" and torch_check["status"] == "FAIL"
    assert "torch hidden by test" in torch_check["detail"]
    assert "Traceback" not in proc.stderr


def test_python_m_bad_subcommand_is_one_line_no_traceback():
    proc = run_module("bogus")
    assert proc.returncode == 2
    assert proc.stdout == ""
    assert proc.stderr.count("\n") == 1
    assert proc.stderr.startswith("physlink-gym: error: ") and "Traceback" not in proc.stderr
