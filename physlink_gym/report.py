"""ComplianceReport: plain data about how a wrapped env met its invariants.

:meth:`InvariantWrapper.compliance_report` returns one; reports merge across vector sub-envs,
round-trip through JSON and plot residual histograms. Memory is bounded: per invariant the report
keeps the :data:`MAX_KEPT_VIOLATIONS` largest violations, the costs of the last
:data:`MAX_KEPT_EPISODES` episodes, and a histogram of residuals (4 bins per octave) instead of
the residuals themselves.

Example:
    >>> inv = InvariantReport("energy", "soft", 0.01, checked=200, violations=2,
    ...                       max_residual=0.5213)
    >>> report = ComplianceReport([inv], steps=200)
    >>> print(report.summary())
    energy (soft): FAIL, violated on 2 of 200 steps (1.00%), max residual 0.5213, tolerance 0.0100
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np

from physlink_gym._histogram import bin_edges, histogram_add
from physlink_gym.errors import ValidationError

#: The largest report JSON :meth:`ComplianceReport.from_json` reads: per-invariant counts and
#: residual histograms take kilobytes; this leaves room for thousands of invariants.
MAX_REPORT_BYTES = 64 << 20

__all__ = [
    "MAX_KEPT_EPISODES",
    "MAX_KEPT_VIOLATIONS",
    "STATUSES",
    "ComplianceReport",
    "InvariantReport",
    "bin_edges",
    "histogram_add",
]

STATUSES = ("PASS", "FAIL", "ERROR", "NOT_APPLICABLE")
MAX_KEPT_VIOLATIONS = 1000
MAX_KEPT_EPISODES = 10_000
@dataclass
class InvariantReport:
    """Statistics of one invariant (plain data).

    ``checked`` counts residuals obtained, ``errors`` the steps where the invariant raised or
    returned garbage; ``zeros``/``nonfinite`` count residuals equal to 0 / NaN or ±inf (the
    others are in ``histogram``). ``max_residual`` is ``inf`` once a non-finite residual was
    seen. ``worst`` holds up to :data:`MAX_KEPT_VIOLATIONS` violations as
    ``[residual, episode, step, env_index]``, largest first. ``episode_costs`` are this
    invariant's per-episode sums of ``max(0, residual − tolerance)``.
    """

    name: str
    mode: str
    tolerance: float
    checked: int = 0
    violations: int = 0
    errors: int = 0
    zeros: int = 0
    nonfinite: int = 0
    max_residual: float = 0.0
    residual_sum: float = 0.0
    histogram: dict[int, int] = field(default_factory=dict)
    worst: list[list[float]] = field(default_factory=list)
    episode_costs: list[float] = field(default_factory=list)
    not_applicable: str | None = None
    last_error: str | None = None
    disabled: bool = False
    hint: str = ""

    @property
    def status(self) -> str:
        """PASS, FAIL (a violation), ERROR (an exception or garbage result) or NOT_APPLICABLE."""
        if self.not_applicable is not None:
            return "NOT_APPLICABLE"
        if self.errors:
            return "ERROR"
        return "FAIL" if self.violations else "PASS"

    @property
    def violation_rate(self) -> float:
        """Violations per checked transition (0.0 before any step)."""
        return self.violations / self.checked if self.checked else 0.0

    @property
    def mean_residual(self) -> float:
        """Mean of the finite residuals (0.0 when there are none)."""
        finite = self.checked - self.nonfinite
        return self.residual_sum / finite if finite else 0.0

    @property
    def mean_episode_cost(self) -> float:
        """Mean per-episode cost over the kept episodes (0.0 when none ended)."""
        return float(np.mean(self.episode_costs)) if self.episode_costs else 0.0

    @property
    def violation_rate_text(self) -> str:
        """``violated on v of n steps (r%)``."""
        rate = self.violations / self.checked if self.checked else 0.0
        return f"violated on {self.violations} of {self.checked} steps ({rate:.2%})"

    def summary_line(self) -> str:
        """One line: status, violation rate, max residual and tolerance of the invariant.

        ``name (mode): STATUS, violated on v of n steps (r%), max residual …, tolerance …``;
        ERROR lines add the errors, FAIL lines the invariant's hint.
        """
        status = self.status
        head = f"{self.name} ({self.mode})"
        if status == "NOT_APPLICABLE":
            return f"{head}: NOT_APPLICABLE ({self.not_applicable})"
        core = (f"{self.violation_rate_text}, max residual {self.max_residual:.4f}, "
                f"tolerance {self.tolerance:.4f}")
        if status == "ERROR":
            disabled = ", disabled" if self.disabled else ""
            return (f"{head}: ERROR, {self.errors} errors in {self.checked + self.errors} steps"
                    f"{disabled}, {core}, last error: {self.last_error}")
        why = f" — {self.hint}" if status == "FAIL" and self.hint else ""
        return f"{head}: {status}, {core}{why}"


def _merge_invariant(into: InvariantReport, other: InvariantReport, env_index: int | None) -> None:
    if (other.tolerance, other.mode) != (into.tolerance, into.mode):
        raise ValidationError(
            got=f"invariant {into.name!r} with tolerance/mode {into.tolerance}/{into.mode} and "
            f"{other.tolerance}/{other.mode}",
            expected="the same invariant configuration in every merged report",
            fix="merge reports of envs wrapped with the same invariants",
        )
    if other.not_applicable is not None:
        return
    into.not_applicable = None
    for name in ("checked", "violations", "errors", "zeros", "nonfinite", "residual_sum"):
        setattr(into, name, getattr(into, name) + getattr(other, name))
    into.max_residual = max(into.max_residual, other.max_residual)
    for k, c in other.histogram.items():
        into.histogram[k] = into.histogram.get(k, 0) + c
    worst = [list(w) if env_index is None else [*w[:3], env_index] for w in other.worst]
    into.worst = sorted(into.worst + worst, key=_worst_key, reverse=True)[:MAX_KEPT_VIOLATIONS]
    into.episode_costs = (into.episode_costs + other.episode_costs)[-MAX_KEPT_EPISODES:]
    into.last_error = other.last_error or into.last_error
    into.disabled = into.disabled or other.disabled


def _worst_key(w: Sequence[float]) -> float:
    return math.inf if math.isnan(w[0]) else w[0]


@dataclass
class ComplianceReport:
    """How a wrapped env (or several, merged) met its invariants.

    Attributes:
        invariants: One :class:`InvariantReport` per invariant, in wrapper order.
        steps: Transitions checked. ``invalid_steps``: those flagged (``valid`` False).
        episodes: Episodes ended. ``episode_costs``: total ``info["cost"]`` per episode.
        env_count: Number of envs merged into this report.
    """

    invariants: list[InvariantReport] = field(default_factory=list)
    steps: int = 0
    invalid_steps: int = 0
    episodes: int = 0
    episode_costs: list[float] = field(default_factory=list)
    env_count: int = 1

    def __getitem__(self, name: str) -> InvariantReport:
        """The report of invariant ``name``."""
        for inv in self.invariants:
            if inv.name == name:
                return inv
        raise KeyError(name)

    @property
    def statuses(self) -> dict[str, str]:
        """``{name: status}`` for every invariant."""
        return {inv.name: inv.status for inv in self.invariants}

    @property
    def passed(self) -> bool:
        """True when no invariant is FAIL or ERROR."""
        return all(s in ("PASS", "NOT_APPLICABLE") for s in self.statuses.values())

    def summary(self) -> str:
        """One line per invariant, e.g.

        ``energy (soft): FAIL, violated on 2 of 200 steps (1.00%), max residual 0.5213,
        tolerance 0.0100``; ERROR lines add the error count and the last error, NOT_APPLICABLE
        lines give the reason, FAIL lines the invariant's hint.
        """
        return "\n".join(inv.summary_line() for inv in self.invariants)

    def violations(self, limit: int | None = None) -> list[dict[str, Any]]:
        """Kept violations of every invariant, largest residual first (NaN counts as largest).

        Each is ``{"invariant_name", "residual", "tolerance", "episode", "step", "env_index"}``.
        Only the :data:`MAX_KEPT_VIOLATIONS` largest per invariant are kept.
        """
        rows: list[dict[str, Any]] = [
            {"invariant_name": inv.name, "residual": float(w[0]), "tolerance": inv.tolerance,
             "episode": int(w[1]), "step": int(w[2]), "env_index": int(w[3])}
            for inv in self.invariants for w in inv.worst
        ]
        rows.sort(key=lambda row: _worst_key([row["residual"]]), reverse=True)
        return rows if limit is None else rows[:limit]

    @classmethod
    def merge(cls, reports: Iterable[ComplianceReport], *, reindex: bool = True,
              ) -> ComplianceReport:
        """Combine reports (e.g. ``venv.env_method("compliance_report")``) into one.

        Counts add up, maxima take the max, histograms add. With ``reindex`` the violations of
        the i-th report get ``env_index = i``; pass ``reindex=False`` to keep stored indices.
        """
        reports = list(reports)
        merged = cls(env_count=0)
        by_name: dict[str, InvariantReport] = {}
        for i, rep in enumerate(reports):
            for inv in rep.invariants:
                if inv.name not in by_name:
                    by_name[inv.name] = InvariantReport(
                        inv.name, inv.mode, inv.tolerance, not_applicable=inv.not_applicable,
                        hint=inv.hint)
                    merged.invariants.append(by_name[inv.name])
                _merge_invariant(by_name[inv.name], inv, i if reindex else None)
            merged.steps += rep.steps
            merged.invalid_steps += rep.invalid_steps
            merged.episodes += rep.episodes
            merged.episode_costs = (merged.episode_costs + rep.episode_costs)[-MAX_KEPT_EPISODES:]
            merged.env_count += rep.env_count
        return merged

    def to_dict(self) -> dict[str, Any]:
        """A JSON-safe dict (non-finite floats become the strings "nan", "inf", "-inf")."""
        data = asdict(self)
        for inv in data["invariants"]:
            inv["histogram"] = {str(k): v for k, v in inv["histogram"].items()}
        return {"format": "physlink_gym.ComplianceReport", "version": 1, **_json_safe(data)}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ComplianceReport:
        """Inverse of :meth:`to_dict`."""
        if data.get("format") != "physlink_gym.ComplianceReport":
            raise ValidationError(
                got=f"a dict with format={data.get('format')!r}",
                expected="the output of ComplianceReport.to_dict() / export()",
                fix="pass a file written by ComplianceReport.export(path)",
            )
        data = _from_json_safe(data)
        invs = []
        for raw in data["invariants"]:
            raw = {k: raw[k] for k in (f.name for f in fields(InvariantReport)) if k in raw}
            raw["histogram"] = {int(k): int(v) for k, v in raw.get("histogram", {}).items()}
            invs.append(InvariantReport(**raw))
        keep = {f.name for f in fields(cls)} - {"invariants"}
        return cls(invariants=invs, **{k: v for k, v in data.items() if k in keep})

    def export(self, path: str | Path) -> Path:
        """Write the report as JSON (readable by ``json.load``); return the path."""
        path = Path(path)
        path.write_text(json.dumps(self.to_dict(), indent=2, allow_nan=False))
        return path

    @classmethod
    def from_json(cls, path: str | Path) -> ComplianceReport:
        """Read a report written by :meth:`export`.

        Only a regular file of at most :data:`MAX_REPORT_BYTES` is read (a device, a pipe or
        a link to ``/dev/zero`` would be read forever).

        Raises:
            CheckpointCorruptError: for anything else.
        """
        from physlink_gym._files import check_regular_file, corrupt

        size = check_regular_file(path)
        if size > MAX_REPORT_BYTES:
            raise corrupt(path, f"{size:,} bytes, more than a report holds",
                          expected=f"a report JSON of at most {MAX_REPORT_BYTES:,} bytes")
        with open(path, "rb") as fh:  # read no further than the size checked, whatever grows
            raw = fh.read(MAX_REPORT_BYTES + 1)
        if len(raw) > MAX_REPORT_BYTES:
            raise corrupt(path, "a file that grew past the size a report holds",
                          expected=f"a report JSON of at most {MAX_REPORT_BYTES:,} bytes")
        return cls.from_dict(json.loads(raw.decode("utf-8")))

    def plot(self, path: str | Path | None = None) -> Any:
        """Residual histograms (log axis) with a dashed line at each tolerance; returns the Figure.

        Bins above the tolerance are red; invariants whose residuals were all zero (or that did
        not apply) get a line of text instead of empty axes. matplotlib is imported here, not at
        module import; ``path`` saves the figure.
        """
        try:
            from physlink_gym._viz_draw import draw_compliance

            fig = draw_compliance(self)
        except ModuleNotFoundError as exc:
            from physlink_gym import missing_extra

            raise missing_extra(exc, "ComplianceReport.plot()") from None
        if path is not None:
            fig.savefig(path)
        return fig

    def to_tensorboard(self, writer: Any, step: int, prefix: str = "invariants") -> None:
        """Log the report's rates to a ``SummaryWriter`` (``add_scalar``) or SB3 ``Logger``.

        The tag scheme of :mod:`physlink_gym.callbacks`, over the whole report:
        ``{prefix}/invalid_rate`` always; ``{prefix}/violation_rate/<name>`` and
        ``{prefix}/errors/<name>`` only for invariants that violated or errored (an invariant
        that never fired adds no chart).
        """
        values = {f"{prefix}/invalid_rate": self.invalid_steps / self.steps if self.steps else 0.0}
        for inv in self.invariants:
            if inv.not_applicable is None and inv.violations:
                values[f"{prefix}/violation_rate/{inv.name}"] = inv.violation_rate
            if inv.errors:
                values[f"{prefix}/errors/{inv.name}"] = float(inv.errors)
        for tag, value in values.items():
            if hasattr(writer, "add_scalar"):
                writer.add_scalar(tag, value, step)
            else:
                writer.record(tag, value)


def _json_safe(obj: Any) -> Any:
    if isinstance(obj, float) and not math.isfinite(obj):
        return repr(obj)  # 'nan', 'inf', '-inf'
    if isinstance(obj, dict):
        return {k: _json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_json_safe(v) for v in obj]
    return obj


def _from_json_safe(obj: Any) -> Any:
    if isinstance(obj, str) and obj in ("nan", "inf", "-inf"):
        return float(obj)
    if isinstance(obj, dict):
        return {k: _from_json_safe(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_from_json_safe(v) for v in obj]
    return obj
