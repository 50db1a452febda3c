"""doctor(): the checks, the verdict, torch/CUDA/rich absent, and the printed table."""

from __future__ import annotations

import json
import sys
from types import SimpleNamespace

import pytest

from physlink_gym import diagnostics
from physlink_gym.diagnostics import (
    MUJOCO_FIX,
    Check,
    DoctorReport,
    check_cpu,
    check_cuda,
    check_package,
    check_python,
    check_torch,
    cpu_summary,
    doctor,
    installed_version,
)

NAMES = ["python", "torch", "cuda", "cpu", "c++", "gymnasium", "stable-baselines3", "safetensors",
         "mujoco", "tensorboard"]  # fmt: skip


def fake_torch(available=True, name="Fake GPU", gib=8.0, count=1):
    props = SimpleNamespace(total_memory=int(gib * 1024**3))
    cuda = SimpleNamespace(
        is_available=lambda: available,
        current_device=lambda: 0,
        get_device_name=lambda i: name,
        get_device_properties=lambda i: props,
        device_count=lambda: count,
    )
    return SimpleNamespace(__version__="2.5.1+cu121", cuda=cuda)


@pytest.fixture
def no_torch(monkeypatch):
    """Simulate an environment where torch is not installed."""
    monkeypatch.setitem(sys.modules, "torch", None)


@pytest.fixture
def no_rich(monkeypatch):
    for name in ("rich", "rich.console", "rich.table"):
        monkeypatch.setitem(sys.modules, name, None)


# --- pure checks -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("version", "status"), [((3, 9, 18), "FAIL"), ((3, 10, 0), "OK"), ((3, 13, 1), "OK")]
)
def test_check_python(version, status):
    check = check_python(version)
    assert check.status == status
    assert check.detail.startswith(".".join(map(str, version)))
    assert bool(check.fix) == (status == "FAIL")


def test_check_torch():
    assert check_torch(fake_torch()) == Check("torch", "OK", "2.5.1+cu121")
    missing = check_torch(None, "No module named 'torch'")
    assert missing.status == "FAIL" and "No module named 'torch'" in missing.detail
    assert "pip install torch" in missing.fix
    old = check_torch(SimpleNamespace(__version__="1.13.1"))
    assert old.status == "FAIL" and "need >= 2.4" in old.detail
    # Regression: 2.2 and 2.3 passed, but the agent needs F.rms_norm (new in 2.4).
    assert check_torch(SimpleNamespace(__version__="2.3.1")).status == "FAIL"
    assert check_torch(SimpleNamespace(__version__="2.4.0")).status == "OK"


def test_check_cuda_absent_is_a_warning_not_a_failure():
    check = check_cuda(fake_torch(available=False))
    assert check.status == "WARN" and "CPU only" in check.detail


@pytest.mark.parametrize(
    ("gib", "count", "status", "detail"),
    [
        (80.0, 1, "OK", "Fake GPU, 80.0 GiB"),
        (8.0, 2, "OK", "Fake GPU, 8.0 GiB (+1 more)"),
        (3.9, 1, "WARN", "Fake GPU, 3.9 GiB: under 4 GiB"),
    ],
)
def test_check_cuda_reports_device_and_memory(gib, count, status, detail):
    check = check_cuda(fake_torch(gib=gib, count=count))
    assert (check.status, check.detail) == (status, detail)


def test_check_cuda_survives_a_broken_driver_and_missing_torch():
    broken = fake_torch()
    broken.cuda.get_device_name = lambda i: (_ for _ in ()).throw(RuntimeError("driver too old"))
    check = check_cuda(broken)
    assert check.status == "WARN" and "driver too old" in check.detail
    assert check_cuda(None).status == "WARN"


def fake_cpu_torch(amx=None, avx512_bf16=False, isa="AVX512"):
    """torch's CPU probes; ``amx=None`` is a torch without the (private) probes."""
    cpu = SimpleNamespace()
    if amx is not None:
        cpu._is_amx_tile_supported = lambda: amx
        cpu._is_avx512_bf16_supported = lambda: avx512_bf16
    backends = SimpleNamespace(cpu=SimpleNamespace(get_cpu_capability=lambda: isa))
    return SimpleNamespace(cpu=cpu, backends=backends, get_num_threads=lambda: 3)


@pytest.mark.parametrize(
    ("amx", "avx512_bf16", "bf16", "fix"),
    [(True, True, "AMX", "mixed"), (False, True, "AVX512-BF16", ""),
     (False, False, "emulated", "float32"), (None, False, None, "")],
)  # fmt: skip
def test_check_cpu_says_how_bfloat16_runs(amx, avx512_bf16, bf16, fix):
    info = cpu_summary(fake_cpu_torch(amx, avx512_bf16))
    assert (info["isa"], info["threads"], info["bf16"]) == ("AVX512", 3, bf16)
    check = check_cpu(info)
    assert check.status == "OK" and "torch uses 3 threads; AVX512" in check.detail
    assert (f"bfloat16 matmuls: {bf16}" in check.detail) == (bf16 is not None)
    assert (fix in check.fix) and (bool(check.fix) == bool(fix))


def test_cpu_summary_survives_missing_and_broken_torch():
    assert cpu_summary(None)["threads"] is None and check_cpu(cpu_summary(None)).status == "OK"
    broken = fake_cpu_torch(amx=True)
    broken.backends.cpu.get_cpu_capability = lambda: (_ for _ in ()).throw(RuntimeError("x"))
    info = cpu_summary(broken)
    assert info["threads"] == 3 and info["isa"] is None and info["model"]


@pytest.mark.parametrize(
    ("version", "required", "minimum", "status"),
    [
        (None, True, None, "FAIL"),
        (None, False, None, "WARN"),
        ("0.29.1", True, "1.0", "FAIL"),
        ("0.29.1", False, "1.0", "WARN"),
        ("1.0.0", True, "1.0", "OK"),
        ("1.0.0rc1", True, "1.0", "OK"),
        ("2.10.0", True, "2.4", "OK"),  # numeric, not lexicographic, comparison
        ("unknown", True, "1.0", "WARN"),
    ],
)
def test_check_package(version, required, minimum, status):
    check = check_package("pkg", version, required=required, minimum=minimum, fix="pip install pkg")
    assert check.status == status
    assert (check.fix == "pip install pkg") == (status != "OK")


def test_installed_version(monkeypatch):
    assert installed_version("gymnasium", "gymnasium") == __import__("gymnasium").__version__
    assert installed_version("surely_not_a_module_xyz", "surely-not") is None
    monkeypatch.setitem(sys.modules, "mujoco", None)
    assert installed_version("mujoco", "mujoco") is None


# --- report ------------------------------------------------------------------------------------


def test_report_verdict_counts_and_json():
    report = DoctorReport(
        [Check("a", "OK", "1"), Check("b", "WARN", "x", fix="do y")], elapsed_seconds=0.5
    )
    assert report.verdict == "GO" and report.counts() == {"OK": 1, "WARN": 1, "FAIL": 0}
    report.checks.append(Check("c", "FAIL", "gone", fix="install c"))
    assert report.verdict == "NO-GO"
    data = json.loads(json.dumps(report.to_dict()))
    assert data["verdict"] == "NO-GO" and [c["name"] for c in data["checks"]] == ["a", "b", "c"]
    text = report.table()
    assert "fix: install c" in text and text.splitlines()[-1].startswith("Verdict: NO-GO")


# --- doctor() end to end -----------------------------------------------------------------------


def test_doctor_with_torch_present(capsys):
    import torch

    report = doctor(print_table=False)
    assert [c.name for c in report.checks] == NAMES
    by_name = {c.name: c for c in report.checks}
    assert by_name["torch"] == Check("torch", "OK", torch.__version__)
    assert report.verdict == "GO"
    assert 0.0 <= report.elapsed_seconds < 30
    assert capsys.readouterr().out == ""  # print_table=False prints nothing


def test_doctor_without_torch_is_no_go(no_torch, capsys):
    report = doctor(print_table=False)
    by_name = {c.name: c for c in report.checks}
    assert by_name["torch"].status == "FAIL"
    assert by_name["cuda"].status == "WARN"
    assert by_name["gymnasium"].status == "OK"  # the rest of the report still comes back
    assert report.verdict == "NO-GO"


def test_doctor_without_cuda_is_still_go(monkeypatch):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    report = doctor(print_table=False)
    cuda = next(c for c in report.checks if c.name == "cuda")
    assert cuda.status == "WARN" and "CPU only" in cuda.detail
    assert report.verdict == "GO"


def test_doctor_without_mujoco_warns_with_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "mujoco", None)
    report = doctor(print_table=False)
    mujoco = next(c for c in report.checks if c.name == "mujoco")
    assert mujoco == Check("mujoco", "WARN", "not installed", fix=MUJOCO_FIX)
    assert MUJOCO_FIX == 'pip install "physlink-gym[mujoco]"'
    assert report.verdict == "GO"


def test_doctor_without_stable_baselines3_is_no_go(monkeypatch):
    monkeypatch.setattr(
        diagnostics,
        "installed_version",
        lambda imp, dist: None if imp == "stable_baselines3" else "9",
    )
    report = doctor(print_table=False)
    assert report.verdict == "NO-GO"
    assert [c.name for c in report.checks if c.status == "FAIL"] == ["stable-baselines3"]


def test_doctor_prints_rich_table(capsys):
    doctor(print_table=True)
    out = capsys.readouterr().out
    assert "physlink-gym doctor" in out and "┃" in out  # rich box drawing
    assert "Verdict: GO" in out


def test_doctor_prints_plain_table_without_rich(no_rich, no_torch, capsys):
    report = doctor(print_table=True)
    out = capsys.readouterr().out
    assert out.splitlines()[0].split() == ["check", "status", "detail"]
    assert "torch" in out and "FAIL" in out and "fix: pip install torch" in out
    assert out.strip().splitlines()[-1] == report.summary()
    assert "Verdict: NO-GO" in out


def test_doctor_without_a_cxx_compiler_warns_and_stays_go(monkeypatch):
    from physlink_gym.agents.dreamerv3 import compile as compile_module

    monkeypatch.setattr(compile_module, "cxx_compiler", lambda: None)
    report = doctor(print_table=False)
    row = {c.name: c for c in report.checks}["c++"]
    assert row.status == "WARN" and "eagerly" in row.detail and "g++" in row.fix
    assert report.verdict == "GO"
    monkeypatch.setattr(compile_module, "cxx_compiler", lambda: "/opt/bin/c++")
    row = {c.name: c for c in doctor(print_table=False).checks}["c++"]
    assert row.status == "OK" and row.detail.startswith("/opt/bin/c++")
