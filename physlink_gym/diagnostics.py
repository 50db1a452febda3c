"""``doctor()``: check that this machine can run physlink_gym, and say how to fix what is missing.

Each check is a small pure function returning a :class:`Check`; :func:`doctor` gathers the facts
(Python version, installed packages, CUDA, the CPU) and runs them. The verdict is ``"NO-GO"``
when any check fails (torch, gymnasium, stable-baselines3 or safetensors missing or too old,
Python older than 3.10) and ``"GO"`` otherwise; warnings (no CUDA, no MuJoCo, little GPU
memory) never block.

torch is imported inside :func:`doctor` only, so importing this module stays cheap, and the
report still comes back when torch is missing.

Example:
    >>> report = DoctorReport([Check("python", "OK", "3.11.7"), Check("cuda", "WARN", "CPU only")])
    >>> report.verdict
    'GO'
    >>> DoctorReport([Check("torch", "FAIL", "not installed", fix="pip install torch")]).verdict
    'NO-GO'
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import os
import platform
import sys
import time
from dataclasses import asdict, dataclass, field
from typing import IO, Any, Literal

from packaging.version import InvalidVersion, Version

__all__ = [
    "Check",
    "DoctorReport",
    "check_compiler",
    "check_cpu",
    "check_cuda",
    "check_package",
    "check_python",
    "check_torch",
    "cpu_summary",
    "doctor",
    "installed_version",
]

Status = Literal["OK", "WARN", "FAIL"]
MIN_PYTHON = (3, 10)
TORCH_MIN = "2.4"  # torch.nn.functional.rms_norm (the RMSNorm layers) is new in 2.4
MIN_GPU_MEMORY_GIB = 4.0
MUJOCO_FIX = 'pip install "physlink-gym[mujoco]"'

# (label, import name, distribution name, required, minimum version, fix)
PACKAGES: tuple[tuple[str, str, str, bool, str | None, str], ...] = (
    ("gymnasium", "gymnasium", "gymnasium", True, "1.0", 'pip install "gymnasium>=1.0"'),
    (
        "stable-baselines3",
        "stable_baselines3",
        "stable-baselines3",
        True,
        "2.4",
        'pip install "stable-baselines3>=2.4"',
    ),
    ("safetensors", "safetensors", "safetensors", True, "0.4", 'pip install "safetensors>=0.4"'),
    ("mujoco", "mujoco", "mujoco", False, None, MUJOCO_FIX),
    ("tensorboard", "tensorboard", "tensorboard", False, None, "pip install tensorboard"),
)


@dataclass(frozen=True)
class Check:
    """One line of the doctor's report.

    Attributes:
        name: What was checked (``"python"``, ``"torch"``, ``"cuda"``, a package name).
        status: ``"OK"``, ``"WARN"`` (works, with a caveat) or ``"FAIL"`` (blocks training).
        detail: What was found, e.g. a version or a device name.
        fix: One concrete action for a WARN or FAIL; empty when OK.
    """

    name: str
    status: Status
    detail: str
    fix: str = ""


@dataclass
class DoctorReport:
    """The result of :func:`doctor`: every check, the verdict and the time it took."""

    checks: list[Check]
    elapsed_seconds: float = 0.0
    python: str = field(default_factory=lambda: sys.version.split()[0])

    @property
    def verdict(self) -> Literal["GO", "NO-GO"]:
        """``"NO-GO"`` if any check failed, else ``"GO"``."""
        return "NO-GO" if any(c.status == "FAIL" for c in self.checks) else "GO"

    def counts(self) -> dict[str, int]:
        """Number of checks per status."""
        return {s: sum(c.status == s for c in self.checks) for s in ("OK", "WARN", "FAIL")}

    def summary(self) -> str:
        """One line: the verdict, the counts and the elapsed time."""
        n = self.counts()
        return (
            f"Verdict: {self.verdict} ({n['OK']} OK, {n['WARN']} WARN, {n['FAIL']} FAIL) "
            f"in {self.elapsed_seconds:.2f} s"
        )

    def to_dict(self) -> dict[str, Any]:
        """A JSON-serialisable view of the report."""
        return {
            "verdict": self.verdict,
            "elapsed_seconds": self.elapsed_seconds,
            "python": self.python,
            "checks": [asdict(c) for c in self.checks],
        }

    def table(self) -> str:
        """The report as a plain-text table (what :func:`doctor` prints without ``rich``)."""
        width = max(len(c.name) for c in self.checks) if self.checks else 5
        lines = [f"{'check':<{width}}  status  detail", f"{'-' * width}  ------  ------"]
        for c in self.checks:
            lines.append(f"{c.name:<{width}}  {c.status:<6}  {c.detail}")
            if c.fix:
                lines.append(f"{'':<{width}}          fix: {c.fix}")
        lines.append(self.summary())
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.table()


def _at_least(version: str, minimum: str) -> bool:
    """``version >= minimum`` by PEP 440 release (``"2.13.0+cpu"`` counts as 2.13.0)."""
    try:
        return Version(version).release >= Version(minimum).release
    except InvalidVersion:
        return False


def check_python(version_info: tuple[int, ...] = tuple(sys.version_info[:3])) -> Check:
    """Python must be >= 3.10.

    Example:
        >>> check_python((3, 9, 18)).status, check_python((3, 12, 1)).detail
        ('FAIL', '3.12.1')
    """
    version = ".".join(str(v) for v in version_info[:3])
    if tuple(version_info[:2]) >= MIN_PYTHON:
        return Check("python", "OK", version)
    return Check("python", "FAIL", f"{version} (need >= 3.10)", fix="install Python 3.10 or newer")


def check_torch(torch: Any | None, error: str = "") -> Check:
    """Check torch: it must be importable and >= 2.4 (the agent needs F.rms_norm, new in 2.4).

    Args:
        torch: The imported module, or ``None`` when the import failed.
        error: Why the import failed (shown in the detail).
    """
    fix = "pip install torch (see https://pytorch.org/get-started/locally/)"
    if torch is None:
        return Check("torch", "FAIL", f"not importable: {error or 'not installed'}", fix=fix)
    version = str(getattr(torch, "__version__", "unknown"))
    if not _at_least(version, TORCH_MIN):
        return Check("torch", "FAIL", f"{version} (need >= {TORCH_MIN})", fix=f"upgrade: {fix}")
    return Check("torch", "OK", version)


def check_cuda(torch: Any | None) -> Check:
    """A CUDA device is optional: its absence is a WARN ("CPU only"), as is < 4 GiB of memory.

    Example:
        >>> from types import SimpleNamespace
        >>> no_gpu = SimpleNamespace(cuda=SimpleNamespace(is_available=lambda: False))
        >>> check_cuda(no_gpu).status, check_cuda(no_gpu).detail
        ('WARN', 'CPU only: no CUDA device visible to torch')
    """
    if torch is None:
        return Check("cuda", "WARN", "not checked: torch is missing", fix="install torch first")
    try:
        if not torch.cuda.is_available():
            return Check(
                "cuda",
                "WARN",
                "CPU only: no CUDA device visible to torch",
                fix="fine for small runs; for speed use an NVIDIA GPU with a CUDA build of torch",
            )
        index = torch.cuda.current_device()
        name = torch.cuda.get_device_name(index)
        gib = torch.cuda.get_device_properties(index).total_memory / 1024**3
        count = torch.cuda.device_count()
    except Exception as exc:  # a broken driver must not crash the doctor
        return Check("cuda", "WARN", f"CUDA query failed: {exc!r}", fix="check the NVIDIA driver")
    detail = f"{name}, {gib:.1f} GiB" + (f" (+{count - 1} more)" if count > 1 else "")
    if gib < MIN_GPU_MEMORY_GIB:
        return Check(
            "cuda", "WARN", f"{detail}: under 4 GiB", fix='use a small preset, e.g. preset="1m"'
        )
    return Check("cuda", "OK", detail)


def cpu_summary(torch: Any | None) -> dict[str, Any]:
    """What this CPU offers the update: model, logical CPUs, torch's threads and vector ISA.

    ``isa`` is torch's kernel level (``torch.backends.cpu.get_cpu_capability()``: ``"AVX512"``,
    ``"AVX2"``, ...); ``bf16`` says how bfloat16 matrix products run: ``"AMX"`` (tile units),
    ``"AVX512-BF16"``, or ``"emulated"`` (far slower than float32: docs/benchmarks/speed.md).
    Fields torch cannot tell are ``None``.

    Example:
        >>> info = cpu_summary(None)
        >>> info["cpus"] == os.cpu_count(), info["isa"], info["bf16"]
        (True, None, None)
    """
    info: dict[str, Any] = {
        "model": _cpu_model(), "cpus": os.cpu_count(), "threads": None, "isa": None, "bf16": None,
    }  # fmt: skip
    if torch is None:
        return info
    try:
        info["threads"] = int(torch.get_num_threads())
        info["isa"] = str(torch.backends.cpu.get_cpu_capability())
        cpu = torch.cpu  # the two probes are private torch API: absent ones mean "unknown"
        if getattr(cpu, "_is_amx_tile_supported", lambda: False)():
            info["bf16"] = "AMX"
        elif getattr(cpu, "_is_avx512_bf16_supported", lambda: False)():
            info["bf16"] = "AVX512-BF16"
        elif hasattr(cpu, "_is_amx_tile_supported"):
            info["bf16"] = "emulated"
    except Exception:  # an odd torch build must not crash the doctor
        pass
    return info


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as fh:
            for line in fh:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown"


def check_cpu(info: dict[str, Any]) -> Check:
    """The CPU, always OK (information for choosing ``compute_dtype`` and thread counts).

    Example:
        >>> info = {"model": "Xeon", "cpus": 2, "threads": 2, "isa": "AVX2", "bf16": "emulated"}
        >>> check_cpu(info).detail
        'Xeon; 2 logical CPUs, torch uses 2 threads; AVX2; bfloat16 matmuls: emulated'
        >>> check_cpu(info).fix
        'keep compute_dtype="float32" (the default): bfloat16 is slower here'
    """
    parts = [str(info["model"]), f"{info['cpus']} logical CPUs"]
    if info["threads"] is not None:
        parts[-1] += f", torch uses {info['threads']} threads"
    if info["isa"] is not None:
        parts.append(str(info["isa"]))
    if info["bf16"] is not None:
        parts.append(f"bfloat16 matmuls: {info['bf16']}")
    fix = ""
    if info["bf16"] == "emulated":
        fix = 'keep compute_dtype="float32" (the default): bfloat16 is slower here'
    elif info["bf16"] == "AMX":  # measured: docs/benchmarks/speed.md, section "bfloat16"
        fix = 'presets 1m and larger train faster with compute_dtype="mixed"'
    return Check("cpu", "OK", "; ".join(parts), fix=fix)


def check_compiler(path: str | None, updates: int) -> Check:
    """The C++ compiler ``torch.compile`` needs on a CPU: without one DreamerV3 stays eager.

    Example:
        >>> check_compiler("/usr/bin/g++", 2000).detail
        '/usr/bin/g++: runs of 2000+ updates compile (compile="auto")'
        >>> check_compiler(None, 2000).status
        'WARN'
    """
    if path is not None:
        return Check("c++", "OK", f'{path}: runs of {updates}+ updates compile (compile="auto")')
    return Check(
        "c++", "WARN", "no C++ compiler found: DreamerV3 updates run eagerly",
        fix="install one (e.g. apt install g++) for about 25% faster long runs on a CPU",
    )


def installed_version(import_name: str, dist_name: str) -> str | None:
    """Version of an importable package without importing it; ``None`` when not importable.

    Returns ``"unknown"`` when the package is importable but has no distribution metadata.
    """
    try:
        if importlib.util.find_spec(import_name) is None:
            return None
    except (ImportError, ValueError):
        return None
    try:
        return importlib.metadata.version(dist_name)
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


def check_package(
    name: str, version: str | None, *, required: bool, minimum: str | None = None, fix: str = ""
) -> Check:
    """Judge one package: missing or too old is FAIL when ``required``, WARN otherwise.

    Example:
        >>> check_package("mujoco", None, required=False, fix="pip install mujoco")
        Check(name='mujoco', status='WARN', detail='not installed', fix='pip install mujoco')
        >>> check_package("gymnasium", "0.29.1", required=True, minimum="1.0").status
        'FAIL'
    """
    bad: Status = "FAIL" if required else "WARN"
    if version is None:
        return Check(name, bad, "not installed", fix=fix)
    if minimum is not None and version != "unknown" and not _at_least(version, minimum):
        return Check(name, bad, f"{version} (need >= {minimum})", fix=fix)
    if version == "unknown":
        return Check(name, "WARN", "installed, version unknown", fix=fix)
    return Check(name, "OK", version)


def _import_torch() -> tuple[Any | None, str]:
    try:
        import torch
    except ImportError as exc:
        return None, str(exc) or "not installed"
    except Exception as exc:  # e.g. OSError from a broken CUDA library
        return None, f"{type(exc).__name__}: {exc}"
    return torch, ""


def print_report(report: DoctorReport, file: IO[str] | None = None) -> None:
    """Print the report as a table (with ``rich`` when it is importable, else plain text)."""
    out = sys.stdout if file is None else file
    try:
        from rich.console import Console
        from rich.table import Table
    except ImportError:
        print(report.table(), file=out)
        return
    colours = {"OK": "green", "WARN": "yellow", "FAIL": "bold red"}
    table = Table(title=f"physlink-gym doctor (Python {report.python})")
    for column in ("check", "status", "detail", "fix"):
        table.add_column(column, overflow="fold")
    for c in report.checks:
        table.add_row(c.name, f"[{colours[c.status]}]{c.status}[/]", c.detail, c.fix)
    console = Console(file=out, width=max(100, Console(file=out).width))
    console.print(table)
    console.print(report.summary(), markup=False)


def doctor(print_table: bool = True) -> DoctorReport:
    """Check this machine and return a :class:`DoctorReport`; print it as a table by default.

    Checks Python >= 3.10; torch (importable, >= 2.4); CUDA (device, memory; CPU only is a
    warning); the CPU (information only: vector ISA, how bfloat16 runs); the C++ compiler
    ``torch.compile`` needs (missing is a warning: updates then run eagerly); gymnasium,
    stable-baselines3 and safetensors (required); mujoco and tensorboard
    (optional). It never raises for a missing package: that is what the report is for.

    Args:
        print_table: Print the report (``rich`` table when available, plain text otherwise).

    Returns:
        The report; ``report.verdict`` is ``"GO"`` or ``"NO-GO"``.

    Example:
        >>> report = doctor(print_table=False)
        >>> [c.name for c in report.checks[:3]], report.verdict in ("GO", "NO-GO")
        (['python', 'torch', 'cuda'], True)
    """
    start = time.perf_counter()
    torch, error = _import_torch()
    checks = [check_python(), check_torch(torch, error), check_cuda(torch)]
    checks.append(check_cpu(cpu_summary(torch)))
    if torch is not None:  # torch.compile's compiler; meaningless without torch
        from physlink_gym.agents.dreamerv3.compile import AUTO_COMPILE_UPDATES, cxx_compiler

        checks.append(check_compiler(cxx_compiler(), AUTO_COMPILE_UPDATES))
    for name, import_name, dist_name, required, minimum, fix in PACKAGES:
        version = installed_version(import_name, dist_name)
        checks.append(check_package(name, version, required=required, minimum=minimum, fix=fix))
    report = DoctorReport(checks, elapsed_seconds=time.perf_counter() - start)
    if print_table:
        print_report(report)
    return report
