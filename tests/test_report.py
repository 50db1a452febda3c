"""ComplianceReport: summary lines, violations, JSON round trip, merge, histograms, plot."""

from __future__ import annotations

import json
import math

import gymnasium as gym
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from physlink_gym import invariants as inv
from physlink_gym._records import Slot
from physlink_gym.errors import ValidationError
from physlink_gym.report import (
    MAX_KEPT_VIOLATIONS,
    ComplianceReport,
    InvariantReport,
    bin_edges,
    histogram_add,
)
from physlink_gym.wrappers import InvariantWrapper


def sample_report() -> ComplianceReport:
    energy = InvariantReport("energy", "soft", 0.01, checked=200, violations=2,
                             max_residual=0.52134, worst=[[0.52134, 0, 7, 0], [0.2, 1, 3, 0]],
                             histogram={-4: 190, 0: 10}, zeros=0, residual_sum=3.0,
                             episode_costs=[0.5, 0.2])
    finite = InvariantReport("finite", "hard", 0.0, checked=200, zeros=199, nonfinite=1,
                             violations=1, max_residual=math.inf,
                             worst=[[math.nan, 1, 9, 0]])
    broken = InvariantReport("broken", "hard", 0.1, checked=190, errors=10,
                             last_error="ValueError: boom", disabled=True)
    na = InvariantReport("joint_limits", "soft", 0.35, not_applicable="no MuJoCo data")
    return ComplianceReport([energy, finite, broken, na], steps=200, invalid_steps=1,
                            episodes=2, episode_costs=[0.5, 0.2])


def test_summary_lines_exact():
    # The API's word is "tolerance" (never "threshold"); each line says the mode and the rate.
    assert sample_report().summary().splitlines() == [
        "energy (soft): FAIL, violated on 2 of 200 steps (1.00%), max residual 0.5213, "
        "tolerance 0.0100",
        "finite (hard): FAIL, violated on 1 of 200 steps (0.50%), max residual inf, "
        "tolerance 0.0000",
        "broken (hard): ERROR, 10 errors in 200 steps, disabled, violated on 0 of 190 steps "
        "(0.00%), max residual 0.0000, tolerance 0.1000, last error: ValueError: boom",
        "joint_limits (soft): NOT_APPLICABLE (no MuJoCo data)",
    ]


def test_a_fail_line_says_why_when_the_invariant_knows() -> None:
    import gymnasium as gym

    from physlink_gym import InvariantWrapper, invariants

    env = InvariantWrapper(gym.make("Pendulum-v1"), [invariants.pendulum_energy()])
    env.reset(seed=0)
    for _ in range(200):  # full torque one way: the speed hits the env's clip at 8 rad/s
        env.step(np.array([2.0], np.float32))
    line = env.compliance_report().summary()
    assert line.startswith("pendulum_energy (soft): FAIL, violated on ")
    assert "clips the angular speed" in line


def test_status_rates_and_means():
    rep = sample_report()
    assert rep.statuses == {"energy": "FAIL", "finite": "FAIL", "broken": "ERROR",
                            "joint_limits": "NOT_APPLICABLE"}
    assert not rep.passed
    assert rep["energy"].violation_rate == 0.01
    assert rep["energy"].mean_residual == 3.0 / 200
    assert rep["energy"].mean_episode_cost == pytest.approx(0.35)
    assert InvariantReport("x", "hard", 0.0).status == "PASS"
    assert InvariantReport("x", "hard", 0.0).violation_rate == 0.0


def test_violations_sorted_with_nan_first():
    rows = sample_report().violations()
    assert [r["invariant_name"] for r in rows] == ["finite", "energy", "energy"]
    assert math.isnan(rows[0]["residual"])
    assert rows[1] == {"invariant_name": "energy", "residual": 0.52134, "tolerance": 0.01,
                       "episode": 0, "step": 7, "env_index": 0}
    assert len(sample_report().violations(limit=1)) == 1


def test_slot_keeps_only_the_largest_violations():
    slot = Slot(inv.finite(tolerance=0.5))
    residuals = np.random.default_rng(0).permutation(np.arange(1, 1501, dtype=float))
    for step, r in enumerate(residuals):
        slot.violation(float(r), 0, step)
    kept = slot.snapshot().worst
    assert len(kept) == MAX_KEPT_VIOLATIONS
    assert [w[0] for w in kept] == list(np.arange(1500.0, 500.0, -1.0))
    assert slot.rep.violations == 1500


def test_json_round_trip_is_strict_json(tmp_path):
    rep = sample_report()
    path = rep.export(tmp_path / "report.json")
    text = path.read_text()
    assert "Infinity" not in text and "NaN" not in text
    loaded = json.loads(text)
    assert loaded["invariants"][1]["max_residual"] == "inf"
    back = ComplianceReport.from_json(path)
    assert back.summary() == rep.summary()
    assert back["energy"] == rep["energy"]
    assert back["finite"].max_residual == math.inf and math.isnan(back["finite"].worst[0][0])
    with pytest.raises(ValidationError, match="format"):
        ComplianceReport.from_dict({"invariants": []})


def test_merge_adds_counts_and_reindexes_envs():
    a, b = sample_report(), sample_report()
    b["energy"].max_residual = 0.9
    b["energy"].worst = [[0.9, 4, 1, 0]]
    merged = ComplianceReport.merge([a, b])
    e = merged["energy"]
    assert (e.checked, e.violations, e.max_residual) == (400, 4, 0.9)
    assert e.histogram == {-4: 380, 0: 20}
    assert (merged.steps, merged.episodes, merged.env_count) == (400, 4, 2)
    assert merged["joint_limits"].status == "NOT_APPLICABLE"
    top = [r for r in merged.violations() if r["invariant_name"] == "energy"]
    assert [(r["residual"], r["env_index"]) for r in top] == [
        (0.9, 1), (0.52134, 0), (0.2, 0)]
    assert merged["broken"].errors == 20
    b["energy"].tolerance = 0.5
    with pytest.raises(ValidationError, match="same invariant configuration"):
        ComplianceReport.merge([a, b])


def test_histogram_bins_known_answers():
    h: dict[int, int] = {}
    histogram_add(h, np.array([0.5, 0.6, 0.625, 1.0, 3.0, 1e-3]))
    assert h == {0: 2, 1: 1, 4: 1, 10: 1, -36: 1}
    assert bin_edges(0) == (0.5, 0.625) and bin_edges(10) == (3.0, 3.5)


@given(st.floats(1e-300, 1e300))
@settings(max_examples=100, deadline=None)
def test_histogram_bin_contains_value(r):
    h: dict[int, int] = {}
    histogram_add(h, np.array([r]))
    (key,) = h
    lo, hi = bin_edges(key)
    assert lo <= r < hi


def test_wrapper_report_counts_match_infos():
    env = InvariantWrapper(gym.make("Pendulum-v1"), [inv.finite(),
                                                     inv.pendulum_energy(mode="hard")])
    obs, _ = env.reset(seed=0)
    flagged, residuals = 0, []
    for _ in range(400):
        a = np.array([2.0 if obs[2] >= 0 else -2.0], np.float32)
        obs, _, te, tr, info = env.step(a)
        flagged += not info["physlink"]["valid"]
        residuals.append(info["physlink"]["residuals"]["pendulum_energy"])
        if te or tr:
            obs, _ = env.reset()
    rep = env.compliance_report()
    pe = rep["pendulum_energy"]
    assert flagged > 0 and pe.violations == flagged == rep.invalid_steps
    assert pe.checked == 400 and rep.episodes == 2
    assert pe.max_residual == max(residuals)
    assert pe.residual_sum == pytest.approx(sum(residuals))
    assert sum(pe.histogram.values()) + pe.zeros == 400
    assert rep.violations()[0]["residual"] == max(residuals)
    assert rep["finite"].status == "PASS"


def test_plot_draws_histogram_and_tolerance_line(tmp_path):
    pytest.importorskip("matplotlib")
    import matplotlib

    matplotlib.use("Agg")
    rep = sample_report()
    fig = rep.plot(tmp_path / "plot.png")
    assert (tmp_path / "plot.png").stat().st_size > 0
    ax = fig.axes[0]
    assert [line.get_xdata()[0] for line in ax.get_lines()] == [0.01]
    assert sum(p.get_height() for p in ax.patches) == 200
    assert ax.get_xscale() == "log"
    # NOT_APPLICABLE invariants get a text panel (axis off) that says why, not a histogram.
    na_panels = [a for a in fig.axes if not a.axison]
    assert len(na_panels) >= 1
    assert any("NOT_APPLICABLE" in a.get_title(loc="left") for a in na_panels)


def test_to_tensorboard_with_writer_and_logger():
    class Writer:
        def __init__(self):
            self.rows = {}

        def add_scalar(self, tag, value, step):
            self.rows[tag] = (value, step)

    class Logger:
        def __init__(self):
            self.rows = {}

        def record(self, tag, value):
            self.rows[tag] = value

    w, lg = Writer(), Logger()
    sample_report().to_tensorboard(w, 7)
    sample_report().to_tensorboard(lg, 7)
    assert w.rows["invariants/violation_rate/energy"] == (0.01, 7)
    assert lg.rows["invariants/invalid_rate"] == 1 / 200
    assert lg.rows["invariants/errors/broken"] == 10.0
    # Not applicable, or never violated: no chart.
    assert set(lg.rows) == {"invariants/invalid_rate", "invariants/violation_rate/energy",
                            "invariants/violation_rate/finite", "invariants/errors/broken"}
