"""Invariant statistics in TensorBoard for any SB3 algorithm, and a one-line console log.

:class:`InvariantCallback` reads the per-step record of
:class:`~physlink_gym.InvariantWrapper` (whatever its ``info_key``) from the ``infos`` of every
vector step and logs one tag scheme, the same for SAC, PPO and DreamerV3 (which logs it itself):

* ``invariants/invalid_rate``: share of transitions flagged (a hard violation or a non-finite
  residual) since the last log dump;
* ``invariants/cost``: mean soft cost per transition (only with soft invariants);
* ``invariants/violation_rate/<name>``: share of transitions where ``<name>`` was violated,
  logged from the first window in which it fired (an invariant that never fires adds no chart);
* ``invariants/errors/<name>``: steps where ``<name>`` raised or returned garbage (once it did);
* ``invariants/residual/<name>``: histogram of the last residuals (HISTOGRAMS tab), once fired.

A TensorBoard custom-scalar layout (CUSTOM SCALARS tab) puts every violation rate in one chart.
:class:`OneLineOutput` is an SB3 ``KVWriter`` that prints one short line per log dump
(``physlink-gym train`` uses it instead of SB3's tables).

``ImaginationCallback``, ``TriptychCallback`` and ``ComplianceCallback`` are importable from
here too (they load with their modules on first use).

Example:
    >>> import gymnasium as gym
    >>> from stable_baselines3 import SAC
    >>> from physlink_gym import InvariantWrapper, invariants
    >>> env = InvariantWrapper(gym.make("Pendulum-v1"), [invariants.finite()])
    >>> model = SAC("MlpPolicy", env, learning_starts=10)
    >>> _ = model.learn(20, callback=InvariantCallback())
"""

from __future__ import annotations

import sys
from collections import deque
from typing import Any, TextIO

import numpy as np
from stable_baselines3.common.callbacks import BaseCallback
from stable_baselines3.common.logger import KVWriter, TensorBoardOutputFormat

from physlink_gym._records import find_record

__all__ = [
    "InvariantCallback", "InvariantStats", "OneLineOutput", "ProgressBar", "add_invariant_layout",
]

# Every SB3 callback of the project is importable from here; these three live with what they
# draw or score (they need torch or matplotlib) and load on first use.
_ELSEWHERE = {"ImaginationCallback": "physlink_gym.agents.dreamerv3.imagination",
              "TriptychCallback": "physlink_gym.viz", "ComplianceCallback": "physlink_gym.viz"}


def __getattr__(name: str) -> Any:
    if name in _ELSEWHERE:
        import importlib

        return getattr(importlib.import_module(_ELSEWHERE[name]), name)
    raise AttributeError(f"module 'physlink_gym.callbacks' has no attribute {name!r}")

#: Residuals kept per invariant for its histogram.
HISTOGRAM_SAMPLES = 4096


class InvariantStats:
    """Counts the wrapper's per-step records between log dumps (the tags above).

    DreamerV3 feeds it from its own loop; :class:`InvariantCallback` from any algorithm's.
    """

    def __init__(self) -> None:
        self.fired: set[str] = set()  # invariants that violated at least once this run
        self.errored: set[str] = set()
        self.has_soft = False
        self.residuals: dict[str, deque[float]] = {}
        self.reset()

    def reset(self) -> None:
        """Start a new logging window."""
        self.steps = 0
        self.flagged = 0
        self.cost = 0.0
        self.violations: dict[str, int] = {}
        self.errors: dict[str, int] = {}

    def update(self, infos: Any) -> None:
        """Add one vector step's infos (a list of info dicts)."""
        for info in infos:
            record = find_record(info)
            if record is None:
                continue
            self.steps += 1
            self.flagged += not record.get("valid", True)
            cost = record.get("cost", 0.0)
            self.cost += cost
            self.has_soft = self.has_soft or cost > 0
            violated = record.get("violated") or {}
            residuals = record.get("residuals") or {}
            for name, hit in violated.items():
                if hit:
                    self.violations[name] = self.violations.get(name, 0) + 1
                    self.fired.add(name)
                if name in self.fired:
                    value = residuals.get(name)
                    if value is not None and np.isfinite(value):
                        self.residuals.setdefault(
                            name, deque(maxlen=HISTOGRAM_SAMPLES)).append(float(value))
            if record.get("errors"):
                for name, value in residuals.items():
                    if value != value:  # an errored invariant reports NaN
                        self.errors[name] = self.errors.get(name, 0) + 1
                        self.errored.add(name)

    def record(self, logger: Any) -> None:
        """Record the window's rates on an SB3 logger and start a new window."""
        if not self.steps:
            return
        logger.record("invariants/invalid_rate", self.flagged / self.steps)
        if self.has_soft:
            logger.record("invariants/cost", self.cost / self.steps)
        for name in sorted(self.fired):
            logger.record(f"invariants/violation_rate/{name}",
                          self.violations.get(name, 0) / self.steps)
            samples = self.residuals.get(name)
            if samples:
                logger.record(f"invariants/residual/{name}", np.asarray(samples, np.float32),
                              exclude=("stdout", "log", "json", "csv"))
        for name in sorted(self.errored):
            logger.record(f"invariants/errors/{name}", self.errors.get(name, 0))
        self.reset()


def add_invariant_layout(logger: Any) -> None:
    """Add the CUSTOM SCALARS layout (all violation rates in one chart) to TensorBoard."""
    for output in getattr(logger, "output_formats", []):
        if isinstance(output, TensorBoardOutputFormat):
            output.writer.add_custom_scalars({
                "invariants": {
                    "violation rate (all invariants)": [
                        "Multiline", [r"invariants/violation_rate/.*"]],
                    "invalid rate and cost": [
                        "Multiline", ["invariants/invalid_rate", "invariants/cost"]],
                },
            })


class InvariantCallback(BaseCallback):
    """Log invariant statistics (the ``invariants/`` tags) for any SB3 algorithm.

    The window is the algorithm's own log interval: the statistics are recorded just before
    each log dump reaches the writers (every ``log_interval`` episodes for off-policy
    algorithms, every rollout for on-policy ones) and once at the end of training.

    Args:
        verbose: As SB3's.
    """

    def __init__(self, verbose: int = 0) -> None:
        super().__init__(verbose)
        self.stats = InvariantStats()
        self._dump: Any = None

    def _on_training_start(self) -> None:
        add_invariant_layout(self.logger)
        logger, stats = self.logger, self.stats
        dump = self._dump = logger.dump

        def dump_with_invariants(step: int = 0) -> None:  # record the window, then write
            stats.record(logger)
            dump(step)

        logger.dump = dump_with_invariants  # type: ignore[method-assign]

    def _on_step(self) -> bool:
        infos = self.locals.get("infos")
        if infos is not None:
            self.stats.update(infos)
        return True

    def _on_training_end(self) -> None:
        if self._dump is not None:
            self.logger.dump = self._dump  # type: ignore[method-assign]
            self._dump = None


class OneLineOutput(KVWriter):
    """An SB3 log writer that prints one short line per dump (instead of a table).

    Example line: ``step 2,000 | return -851.2 | invalid 0.0% | updates 122 (3.1/s) |
    loss 12.41``.

    Args:
        stream: Where to print (``sys.stdout``).
    """

    KEYS = (("rollout/ep_rew_mean", "return {:.1f}"), ("invariants/invalid_rate", "invalid {:.1%}"),
            ("train/n_updates", "updates {:,}"), ("time/updates_per_second", "({:.1f}/s)"),
            ("train/total_loss", "loss {:.3g}"), ("time/fps", "{:,} steps/s"))

    def __init__(self, stream: TextIO | None = None) -> None:
        self.stream = stream or sys.stdout

    def write(self, key_values: dict[str, Any], key_excluded: dict[str, Any],
              step: int = 0) -> None:
        """Print ``step`` and the few values a reader watches (nothing when none is there).

        The line goes through ``tqdm.write`` when tqdm is installed, so a progress bar on the
        same terminal is not torn apart.
        """
        parts = []
        for key, fmt in self.KEYS:
            value = key_values.get(key)
            if isinstance(value, (int, float, np.floating, np.integer)):
                parts.append(fmt.format(value))
        if not any(key in key_values for key in ("rollout/ep_rew_mean", "train/total_loss")):
            return  # a dump of images or hparams only
        line = " | ".join([f"step {step:,}", *parts]).replace(" | (", " (")
        try:
            from tqdm import tqdm
        except ModuleNotFoundError:
            print(line, file=self.stream, flush=True)
        else:
            tqdm.write(line, file=self.stream)

    def close(self) -> None:
        """Nothing to close (the stream belongs to the caller)."""


class ProgressBar(BaseCallback):
    """A progress bar over env steps that shows updates per second (``learn(progress_bar=True)``).

    SB3's bar estimates the remaining time from the average speed since the start, which the
    fast steps before ``learning_starts`` make far too optimistic; this one weights recent
    speed (tqdm ``smoothing``) and shows the learner's updates per second beside it.

    Args:
        total: Steps of the bar (``None``: the steps left in ``learn``).
        desc: Label of the bar.
    """

    def __init__(self, total: int | None = None, desc: str = "train") -> None:
        super().__init__()
        self.total, self.desc = total, desc
        self.bar: Any = None
        self._last_updates = 0
        self._last_time = 0.0

    def _on_training_start(self) -> None:
        import time

        from tqdm.auto import tqdm

        total = self.total
        if total is None:
            total = self.locals["total_timesteps"] - self.model.num_timesteps
        self.bar = tqdm(total=total, desc=self.desc, unit="step", smoothing=0.05,
                        dynamic_ncols=True)
        self._last_time = time.perf_counter()
        self._last_updates = int(getattr(self.model, "_n_updates", 0))

    def _on_step(self) -> bool:
        self.bar.update(self.training_env.num_envs)
        self.tick()
        return True

    def tick(self, steps: int = 0, force: bool = False) -> None:
        """Advance by ``steps``; refresh the updates-per-second figure once a second (or now)."""
        import time

        if steps:
            self.bar.update(steps)
        now = time.perf_counter()
        if force or now - self._last_time >= 1.0:
            updates = int(getattr(self.model, "_n_updates", 0))
            rate = (updates - self._last_updates) / max(now - self._last_time, 1e-9)
            self.bar.set_postfix_str(f"{updates:,} updates ({rate:.1f}/s)", refresh=False)
            self._last_time, self._last_updates = now, updates

    def _on_training_end(self) -> None:
        if self.bar is not None:
            self.tick(force=True)  # a run shorter than a second still ends with its figure
            self.bar.refresh()
            self.bar.close()
