"""Shared MuJoCo plumbing for the built-in invariants in :mod:`physlink_gym.invariants.mujoco`.

Nothing here ever writes to the env's live ``MjData``: every derived quantity (energy,
generalized momentum) is computed on a private scratch ``MjData`` after copying ``qpos`` and
``qvel`` into it. Calling ``mj_forward`` on the live data would recompute contacts, sensors and
forces mid-episode and change the reward of envs that read them (e.g. ``cfrc_ext`` in Ant).

One scratch evaluation per step is shared between invariants through ``transition["cache"]``
(the wrapper empties it before every step) under :data:`END_STATE_KEY`.
"""

from __future__ import annotations

import functools
import math
from typing import Any, NamedTuple

import mujoco
import numpy as np
from numpy.typing import NDArray

from physlink_gym.errors import ConfigurationError
from physlink_gym.invariants.core import Invariant, Mode, NotApplicableError

__all__ = [
    "END_STATE_KEY",
    "STANDARD_GRAVITY",
    "LiveViews",
    "MjCheck",
    "Scratch",
    "StateSummary",
    "as_slice",
    "cached_end_summary",
    "end_summary",
    "energy_scale",
    "frame_skip",
    "live_data",
    "make_invariant",
    "max_abs",
    "max_of",
    "missing_reset",
    "mujoco_env",
    "step_weights",
]

END_STATE_KEY = "physlink.mujoco.end_state"
STANDARD_GRAVITY = 9.80665  # m/s^2, the reference acceleration of the dimensionless scales

FloatArray = NDArray[np.float64]


def mujoco_env(env: Any, invariant: str) -> Any:
    """Return the unwrapped env if it carries a MuJoCo ``model`` and ``data``.

    Raises:
        NotApplicableError: When the env is not MuJoCo-based (e.g. CartPole-v1).
    """
    base = getattr(env, "unwrapped", env)
    model, data = getattr(base, "model", None), getattr(base, "data", None)
    if not isinstance(model, mujoco.MjModel) or not isinstance(data, mujoco.MjData):
        raise NotApplicableError(
            got=f"invariant {invariant!r} on {type(base).__name__}, which has no MuJoCo "
            "model/data (env.unwrapped.model is not a mujoco.MjModel)",
            expected="a MuJoCo-based env such as HalfCheetah-v5 (gymnasium MujocoEnv)",
            fix="drop this invariant for non-MuJoCo envs, or use finite()/obs_bounds()/"
            "energy_balance() which need no simulator",
        )
    return base


def live_data(env: Any) -> Any:
    """The live ``MjData`` of an env or of its unwrapped base."""
    return getattr(env, "unwrapped", env).data


def as_slice(index: NDArray[np.intp]) -> Any:
    """A slice for a contiguous increasing index array (cheaper to apply), else the array."""
    if index.size and np.array_equal(index, np.arange(index[0], index[0] + index.size)):
        return slice(int(index[0]), int(index[0]) + index.size)
    return index


def frame_skip(env: Any) -> int:
    """Number of ``mj_step`` substeps per env step (``env.frame_skip``, 1 when absent)."""
    return max(1, int(getattr(env, "frame_skip", 1)))


def step_weights(model: Any, substeps: int) -> tuple[float, float]:
    """Weights ``(w0, w1)`` with ``sum_k v_k ≈ w0·v_0 + w1·v_N`` over the N substeps of a step.

    Semi-implicit integrators (Euler, implicit, implicitfast, discrete) update
    ``q_{k+1} = q_k + h·v_{k+1}``, so ``Δq = h·Σ_{k=1..N} v_k``; interpolating the velocity
    linearly between the step's end points gives ``w0 = (N−1)/2, w1 = (N+1)/2`` (exact for
    N = 1 and for constant acceleration). RK4 integrates the velocity continuously, and the
    trapezoid ``w0 = w1 = N/2`` is exact for constant acceleration.
    """
    n = float(substeps)
    if int(model.opt.integrator) == int(mujoco.mjtIntegrator.mjINT_RK4):
        return n / 2.0, n / 2.0
    return (n - 1.0) / 2.0, (n + 1.0) / 2.0


class StateSummary(NamedTuple):
    """Energy and generalized momentum of one state, from a scratch evaluation.

    Attributes:
        potential: Gravity plus spring potential energy (``mj_energyPos``), J.
        kinetic: ``½·vᵀ·M(q)·v`` (armature included), J.
        momentum: Generalized momentum ``M(q)·v`` (a copy), or None when not asked for.
        geom_xpos: ``(ngeom, 3)`` geom centres (a copy), or None when not asked for.
    """

    potential: float
    kinetic: float
    momentum: FloatArray | None
    geom_xpos: FloatArray | None


class Scratch:
    """A private ``MjData`` on the env's model: position-level pipeline only, no collisions.

    ``summarize`` runs ``mj_kinematics``, ``mj_comPos``, ``mj_tendon`` (when there are
    tendons), ``mj_makeM``, ``mj_energyPos`` and ``mj_mulM``, never ``mj_forward``.
    """

    def __init__(self, model: Any) -> None:
        self.model = model
        self.data = d = mujoco.MjData(model)
        self._mv = np.zeros(model.nv)
        self._tendons = model.ntendon > 0
        self._qpos, self._qvel, self._energy, self._geoms = d.qpos, d.qvel, d.energy, d.geom_xpos
        self._last: StateSummary | None = None  # the summary of the state now in self.data

    def __reduce__(self) -> tuple[type[Scratch], tuple[Any]]:
        return (Scratch, (self.model,))

    def summarize(self, qpos: FloatArray, qvel: FloatArray, full: bool = True) -> StateSummary:
        """Energy of the state ``(qpos, qvel)``, and its momentum and geoms when ``full``."""
        m, d, mv = self.model, self.data, self._mv
        mujoco.mju_copy(self._qpos, qpos)
        mujoco.mju_copy(self._qvel, qvel)
        mujoco.mj_kinematics(m, d)
        mujoco.mj_comPos(m, d)
        if self._tendons:
            mujoco.mj_tendon(m, d)
        mujoco.mj_makeM(m, d)
        mujoco.mj_energyPos(m, d)
        if full:
            mujoco.mj_mulM(m, d, mv, qvel)
            kinetic = 0.5 * float(mv.dot(qvel))
            summary = StateSummary(float(self._energy[0]), kinetic, mv.copy(), self._geoms.copy())
        else:
            mujoco.mj_energyVel(m, d)
            potential, kinetic = self._energy.tolist()
            summary = StateSummary(potential, kinetic, None, None)
        self._last = summary
        return summary

    def complete(self, summary: StateSummary) -> StateSummary | None:
        """Add momentum and geoms to the energies-only ``summary`` of the state still held."""
        if self._last is not summary:
            return None
        mujoco.mj_mulM(self.model, self.data, self._mv, self._qvel)
        full = summary._replace(momentum=self._mv.copy(), geom_xpos=self._geoms.copy())
        self._last = full
        return full


def end_summary(transition: Any, scratch: Scratch, live: LiveViews,
                full: bool = True) -> StateSummary:
    """The post-step state summary, computed once per step and shared through the cache.

    ``full=False`` asks for energies only (momentum and geoms may then be None).
    """
    data = live.data
    cache = transition.get("cache")
    hit = None if cache is None else cache.get(END_STATE_KEY)
    if hit is not None and hit[0] is data:
        cached: StateSummary = hit[1]
        if not full or cached.momentum is not None:
            return cached
        upgraded: StateSummary | None = hit[2].complete(cached)  # on the scratch that made it
        if upgraded is not None:
            cache[END_STATE_KEY] = (data, upgraded, hit[2])
            return upgraded
    summary = scratch.summarize(live.qpos, live.qvel, full)
    if cache is not None:
        cache[END_STATE_KEY] = (data, summary, scratch)
    return summary


def cached_end_summary(transition: Any) -> StateSummary | None:
    """The full post-step summary if another invariant already computed it this step."""
    cache = transition.get("cache")
    hit = None if cache is None else cache.get(END_STATE_KEY)
    if hit is not None and hit[0] is transition["env"].data and hit[1].momentum is not None:
        summary: StateSummary = hit[1]
        return summary
    return None


def missing_reset(invariant: str) -> ConfigurationError:
    """The error of a check called before its ``on_reset`` ever ran."""
    return ConfigurationError(
        got=f"invariant {invariant!r} checked a step before on_reset gave it a start state",
        expected="on_reset(env, obs) called after every env.reset",
        fix="use the check through InvariantWrapper, or call check.on_reset(env, obs) after "
        "each env.reset when driving it by hand",
    )


def max_abs(values: list[float]) -> float:
    """``max |v|`` of a list; NaN when a value is NaN (Python's max would drop it)."""
    total = sum(values)
    if total != total:
        return math.nan
    return max(max(values), -min(values))


def max_of(values: list[float]) -> float:
    """``max v`` of a non-empty list; NaN when a value is NaN."""
    total = sum(values)
    return max(values) if total == total else math.nan


class LiveViews:
    """Numpy views on the arrays of one live ``MjData``, made once.

    Every ``data.qpos`` access builds a new numpy view (~0.4 µs); the arrays themselves live as
    long as the ``MjData``, so a check keeps these views and rebuilds them only when the env's
    ``data`` object changes.
    """

    __slots__ = ("data", "geom_xpos", "qfrc_actuator", "qfrc_applied", "qfrc_constraint",
                 "qfrc_fluid", "qfrc_gravcomp", "qpos", "qvel", "xfrc_applied")

    def __init__(self, data: Any) -> None:
        self.data = data
        self.qpos: FloatArray = data.qpos
        self.qvel: FloatArray = data.qvel
        self.qfrc_actuator: FloatArray = data.qfrc_actuator
        self.qfrc_applied: FloatArray = data.qfrc_applied
        self.qfrc_constraint: FloatArray = data.qfrc_constraint
        self.qfrc_fluid: FloatArray = data.qfrc_fluid
        self.qfrc_gravcomp: FloatArray = data.qfrc_gravcomp
        self.xfrc_applied: FloatArray = data.xfrc_applied
        self.geom_xpos: FloatArray = data.geom_xpos  # of the last substep's forward pass


class MjCheck:
    """Base of the bound MuJoCo checks: lazy scratch data and live views, dropped when pickled.

    Subclasses take ``(model, substeps, **options)`` and set ``name``.
    """

    name = ""
    transient: tuple[str, ...] = ("_scratch", "_views")  # rebuilt lazily after unpickling
    #: What a check needs beyond ``qpos``/``qvel`` at the ends of a step, which recorded data
    #: cannot carry (forces, contacts, warning counters of the live step); empty when the
    #: recorded states are enough, so :func:`physlink_gym.audit` can replay it offline.
    needs_live_step = "the simulator's live step"

    def __init__(self) -> None:
        self._scratch: Scratch | None = None
        self._views: LiveViews | None = None

    def _live(self, data: Any) -> LiveViews:
        views = self._views
        if views is None or views.data is not data:
            views = self._views = LiveViews(data)
        return views

    def __getstate__(self) -> dict[str, Any]:
        return {k: None if k in self.transient else v for k, v in self.__dict__.items()}

    def _scratch_for(self, model: Any) -> Scratch:
        if self._scratch is None or self._scratch.model is not model:
            self._scratch = Scratch(model)
        return self._scratch


def _bind(cls: type[MjCheck], env: Any, **options: Any) -> Any:
    base = mujoco_env(env, cls.name)
    return cls(base.model, frame_skip(base), **options)  # type: ignore[call-arg]


def make_invariant(cls: type[MjCheck], tolerance: float, mode: Mode, description: str,
                   **options: Any) -> Invariant:
    """An :class:`Invariant` whose binder builds ``cls`` on MuJoCo envs only (picklable)."""
    return Invariant(
        name=cls.name, tolerance=tolerance, mode=mode, requires=("mujoco",),
        binder=functools.partial(_bind, cls, **options), description=description,
    )


def energy_scale(model: Any) -> float:
    """Model energy scale ``E_ref`` (J) that makes energy residuals dimensionless.

    ``E_ref = Σ_a |gear_a|·F_a·(1 m or rad) + M·g0·(1 m)``: the work of every actuator at full
    force over a unit displacement plus lifting the whole model by 1 m at standard gravity.
    ``F_a`` is ``max|forcerange|`` when force-limited, else ``|gain|·max|ctrlrange|`` when
    control-limited, else ``|gain|``.
    """
    gear = np.abs(model.actuator_gear[:, 0])
    gain = np.abs(model.actuator_gainprm[:, 0])
    ctrl = np.abs(model.actuator_ctrlrange).max(axis=1, initial=0.0)
    force = np.abs(model.actuator_forcerange).max(axis=1, initial=0.0)
    cap = np.where(model.actuator_forcelimited != 0, force,
                   np.where(model.actuator_ctrllimited != 0, gain * ctrl, gain))
    return float(np.sum(gear * cap)) + float(model.body_subtreemass[0]) * STANDARD_GRAVITY
