"""Built-in invariants on MuJoCo simulator state.

Each factory returns an :class:`~physlink_gym.invariants.core.Invariant` whose binder checks,
once per wrapped env, that the env is MuJoCo-based (else
:class:`~physlink_gym.invariants.core.NotApplicableError`) and precomputes index arrays. The
bound checks read the live ``MjData`` and never write to it; energy and momentum are evaluated
on a private scratch ``MjData`` (see :mod:`physlink_gym.invariants._mjutil`), once per step,
shared through ``transition["cache"]``.

A step is checked from the state the previous step ended in (or the reset state: checks need
``on_reset(env, obs)`` after every reset, which the wrapper calls) to the state after it: the
transition ``obs → next_obs`` the agent sees, so edits of the simulator between steps count.
Reusing the last end state is free, where a ``before_step`` snapshot would cost copies.

Default tolerances come from uniform random-action runs with resets (seed 0; 100k steps on
HalfCheetah/Walker2d-v5, 60k on Ant/Reacher-v5, 20k on InvertedPendulum, Hopper, Humanoid,
Swimmer, InvertedDoublePendulum, Pusher-v5); each docstring gives the measured maxima. A check
sees only the end points of a step of ``frame_skip`` substeps, so the books of the last three
checks close exactly only for one substep or forces constant over the step; elsewhere the
tolerance absorbs what end points cannot resolve: they catch blow-ups, resets and teleports.

Example:
    >>> import gymnasium as gym
    >>> env = gym.make("InvertedPendulum-v5")
    >>> check = sim_health().bind(env)
    >>> obs, _ = env.reset(seed=0)
    >>> check.on_reset(env.unwrapped, obs)
    >>> _ = env.step(env.action_space.sample())
    >>> check({"env": env.unwrapped, "cache": {}})
    0.0
"""

from __future__ import annotations

import math
from typing import Any

import mujoco
import numpy as np

from physlink_gym.invariants._mjflight import FlightMomentum
from physlink_gym.invariants._mjutil import (
    MjCheck,
    end_summary,
    energy_scale,
    live_data,
    make_invariant,
    max_abs,
    max_of,
    missing_reset,
    step_weights,
)
from physlink_gym.invariants.core import Invariant, Mode, NotApplicableError

__all__ = [
    "joint_limits",
    "kinematic_consistency",
    "momentum",
    "mujoco_energy",
    "sim_health",
]

_JNT = mujoco.mjtJoint
_WARN = mujoco.mjtWarning
_BAD = slice(int(_WARN.mjWARN_BADQPOS), int(_WARN.mjWARN_BADCTRL) + 1)  # QPOS, QVEL, QACC, CTRL
assert _BAD.stop - _BAD.start == 4


# --------------------------------------------------------------------------- joint limits
class _JointLimits(MjCheck):
    name = "joint_limits"
    needs_live_step = ""  # qpos only

    def __init__(self, model: Any, substeps: int) -> None:
        super().__init__()
        kind = np.isin(model.jnt_type, (int(_JNT.mjJNT_HINGE), int(_JNT.mjJNT_SLIDE)))
        joints = np.flatnonzero(kind & (model.jnt_limited != 0))
        if joints.size == 0:
            raise NotApplicableError(
                got=f"a MuJoCo model with no limited hinge/slide joint ({model.njnt} joints)",
                expected="at least one joint with limited='true' and a range",
                fix="drop joint_limits() for this env")
        # plain lists: a few Python float ops beat numpy calls on arrays this small
        self._limits = list(zip(model.jnt_qposadr[joints].tolist(),
                                *model.jnt_range[joints].T.tolist(), strict=True))

    def __call__(self, transition: Any) -> float:
        q = self._live(transition["env"].data).qpos.tolist()
        excess = max_of([max(q[i] - hi, lo - q[i]) for i, lo, hi in self._limits])
        return 0.0 if excess <= 0.0 else excess


def joint_limits(tolerance: float = 0.6, mode: Mode = "hard") -> Invariant:
    """Exceedance of the joint range of limited hinge and slide joints after the step.

    ``residual = max_j max(lo_j − q_j, q_j − hi_j, 0)`` over limited hinge/slide joints, in rad
    (hinge) or m (slide), with ``(lo_j, hi_j) = model.jnt_range[j]``. Ball and free joints are
    skipped. Joint limits are soft constraints in MuJoCo, so normal operation exceeds them.

    Measured max exceedance under random actions: 0 on InvertedPendulum-v5, 0.21 rad on
    HalfCheetah-v5 (99.9th percentile 0.12), 0.17 on Ant-v5 (0.16), 0.23 on Reacher-v5, 0.21
    on Humanoid-v5, and 0.48 on Walker2d-v5 (0.35), whose limits are the softest. The default
    0.6 passes all of them; 0.35 suits HalfCheetah/Ant with a 1.7× margin.

    Args:
        tolerance: Allowed exceedance (rad or m).
        mode: ``"hard"`` flags the transition, ``"soft"`` penalises it.
    """
    return make_invariant(_JointLimits, tolerance, mode, "limited joints within jnt_range")


# --------------------------------------------------------------------------- sim health
class _SimHealth(MjCheck):
    name = "sim_health"
    needs_live_step = "MuJoCo's warning counters and time during the step"
    transient = ("_scratch", "_data", "_number")

    def __init__(self, model: Any, substeps: int) -> None:
        super().__init__()
        self._counts: list[int] | None = None
        self._time = 0.0
        self._data: Any = None
        self._number: Any = None

    def _read(self, data: Any) -> list[int]:
        if data is not self._data:  # a view on the warning counters, made once per MjData
            self._data, self._number = data, data.warning.number
        # Every counter (one C-level copy); only the _BAD ones enter the residual.
        counts: list[int] = self._number.tolist()
        return counts

    def on_reset(self, env: Any, obs: Any) -> None:
        data = live_data(env)
        self._counts, self._time = self._read(data), data.time

    def __call__(self, transition: Any) -> float:
        before = self._counts
        if before is None:
            raise missing_reset(self.name)
        data = transition["env"].data
        after, time, start = self._read(data), data.time, self._time
        self._counts, self._time = after, time
        if after == before and time > start:
            return 0.0
        residual = 0.0 if time > start else 1.0
        for b, a in zip(before[_BAD], after[_BAD], strict=True):
            residual += a - b if a > b else (1.0 if a < b else 0.0)
        return residual


def sim_health(tolerance: float = 0.0, mode: Mode = "hard") -> Invariant:
    """MuJoCo's own alarms over the step: bad-state warnings and time not moving forward.

    ``residual = Σ_w max(n_w' − n_w, 0) + [any n_w' < n_w] + [t' ≤ t]`` over the warning counters
    ``n_w = data.warning[w].number`` for w in BADQPOS, BADQVEL, BADQACC, BADCTRL, and the
    simulation time ``t``. On a NaN or huge state MuJoCo warns and calls ``mj_resetData``
    silently inside ``mj_step``, which also zeroes the counters and rewinds the time; each
    sign counts 1. Normal operation gives exactly 0 (measured: 0 in every step of the runs
    above), so the default tolerance is 0.

    Args:
        tolerance: Allowed count (0: any alarm is a violation).
        mode: ``"hard"`` flags the transition, ``"soft"`` penalises it.
    """
    return make_invariant(_SimHealth, tolerance, mode, "no MuJoCo bad-state warning or reset")


# --------------------------------------------------------------------------- kinematics
class _Kinematics(MjCheck):
    name = "kinematic_consistency"
    needs_live_step = ""  # qpos and qvel only

    def __init__(self, model: Any, substeps: int) -> None:
        super().__init__()
        w0, w1 = step_weights(model, substeps)
        self._hw0, self._hw1 = -model.opt.timestep * w0, -model.opt.timestep * w1
        self._hinge = model.jnt_dofadr[model.jnt_type == int(_JNT.mjJNT_HINGE)].copy()
        self._q0: Any = None
        self._v0 = np.zeros(model.nv)
        self._err = np.zeros(model.nv)

    def on_reset(self, env: Any, obs: Any) -> None:
        data = live_data(env)
        self._q0 = data.qpos.copy()
        np.copyto(self._v0, data.qvel)

    def __call__(self, transition: Any) -> float:
        if self._q0 is None:
            raise missing_reset(self.name)
        env = transition["env"]
        live, err = self._live(env.data), self._err
        mujoco.mj_differentiatePos(env.model, err, 1.0, self._q0, live.qpos)
        mujoco.mju_addToScl(err, self._v0, self._hw0)
        mujoco.mju_addToScl(err, live.qvel, self._hw1)
        residual = max_abs(err.tolist())
        if residual > math.pi and self._hinge.size:  # hinge errors wrap to (−π, π]
            err[self._hinge] = np.remainder(err[self._hinge] + math.pi, 2 * math.pi) - math.pi
            residual = max_abs(err.tolist())
        np.copyto(self._q0, live.qpos)
        np.copyto(self._v0, live.qvel)
        return residual


def kinematic_consistency(tolerance: float = 1.0, mode: Mode = "hard") -> Invariant:
    """Position change over the step against the velocities, under the integrator's convention.

    ``residual = max_i |Δq_i − h·(w0·v_i + w1·v_i')|`` per degree of freedom, where ``Δq`` is
    ``mj_differentiatePos(q, q')`` (free/ball quaternions become rotation vectors, so
    rotations faster than π per step alias), ``h`` the substep, and ``(w0, w1)`` the weights of
    :func:`~physlink_gym.invariants._mjutil.step_weights`: ``(0, 1)`` for one semi-implicit
    Euler substep (``q' = q + h·v'``: exact, residual ~1e-16), ``((N−1)/2, (N+1)/2)`` for N
    substeps, ``(N/2, N/2)`` for RK4. Hinge errors are wrapped to (−π, π]. Units: rad or m.

    With ``frame_skip > 1`` the velocity inside the step is unknown, so the interpolation is
    only as good as the acceleration is constant; joint-limit bounces and contacts break it.
    Measured max under random actions: 0.002 on InvertedPendulum-v5, 0.65 on HalfCheetah-v5
    (99.9th percentile 0.46), 0.32 on Ant-v5, 0.06 on Walker2d-v5, 0.08 on Humanoid-v5. The
    default 1.0 catches a silent reset or a teleport by more than a radian/metre, not small
    integration errors; with ``frame_skip=1`` and Euler use a tolerance like 1e-9.

    Args:
        tolerance: Allowed mismatch (rad or m).
        mode: ``"hard"`` flags the transition, ``"soft"`` penalises it.
    """
    return make_invariant(_Kinematics, tolerance, mode, "Δq consistent with h·qvel")


# --------------------------------------------------------------------------- energy
class _Energy(MjCheck):
    name = "mujoco_energy"
    needs_live_step = "the actuator, applied and constraint forces of the step"

    def __init__(self, model: Any, substeps: int, constraint_work: bool = True) -> None:
        super().__init__()
        h = float(model.opt.timestep)
        w0, w1 = step_weights(model, substeps)
        self._h0, self._h1 = h * w0, h * w1
        self._damping = np.diag(model.dof_damping) if np.any(model.dof_damping) else None
        self._constraint_work = constraint_work
        self._other_passive = bool(model.opt.density > 0 or model.opt.viscosity > 0
                                   or np.any(model.body_gravcomp))
        self._scale = energy_scale(model)
        self._dq = np.zeros(model.nv)
        self._q0: Any = None
        self._start = (0.0, 0.0, 0.0)  # energy, Σ b·v², f_c·v of the start state

    def _powers(self, live: Any) -> tuple[float, float]:
        v = live.qvel
        damp = 0.0 if self._damping is None else float(
            mujoco.mju_mulVecMatVec(v, self._damping, v))
        power = float(live.qfrc_constraint.dot(v)) if self._constraint_work else 0.0
        return damp, power

    def on_reset(self, env: Any, obs: Any) -> None:
        base = getattr(env, "unwrapped", env)
        live = self._live(base.data)
        state = self._scratch_for(base.model).summarize(live.qpos, live.qvel, full=False)
        self._q0 = live.qpos.copy()
        self._start = (state.potential + state.kinetic, *self._powers(live))

    def __call__(self, transition: Any) -> float:
        if self._q0 is None:
            raise missing_reset(self.name)
        env = transition["env"]
        live, dq = self._live(env.data), self._dq
        end = end_summary(transition, self._scratch_for(env.model), live, full=False)
        mujoco.mj_differentiatePos(env.model, dq, 1.0, self._q0, live.qpos)
        energy0, damp0, power0 = self._start
        energy1 = end.potential + end.kinetic
        damp1, power1 = self._powers(live)
        work = float(live.qfrc_actuator.dot(dq)) + float(live.qfrc_applied.dot(dq))
        work += self._h0 * (power0 - damp0) + self._h1 * (power1 - damp1)
        if self._other_passive:
            work += float((live.qfrc_fluid + live.qfrc_gravcomp).dot(dq))
        np.copyto(self._q0, live.qpos)
        self._start = (energy1, damp1, power1)
        return abs(energy1 - energy0 - work) / self._scale


def mujoco_energy(tolerance: float = 3.0, mode: Mode = "hard", *,
                  constraint_work: bool = True) -> Invariant:
    """Energy balance of a MuJoCo step: gain of kinetic + potential energy against the work done.

    ``residual = |ΔE − W| / E_ref`` with ``E = ½·vᵀM(q)v + V(q)`` (gravity and springs,
    ``mj_energyPos``, computed on a scratch ``MjData``: ``data.energy`` is zero unless the energy
    flag is on and one substep stale) and the work over the step

    - actuators and applied forces: ``(qfrc_actuator + qfrc_applied)·Δq``, exact for motors
      with joint transmission (constant force over the step),
    - joint damping: ``−h·Σ_i b_i·(w0·v_i² + w1·v_i'²)`` (end-point quadrature of ``∫ b·v²``),
    - constraints (contacts, limits), when ``constraint_work``: ``h·(w0·f_c·v + w1·f_c'·v')``
      with ``f_c`` the live ``qfrc_constraint`` before and after the step,
    - fluid and gravity compensation when the model has them: ``(qfrc_fluid + qfrc_gravcomp)·Δq``.

    ``E_ref`` is :func:`~physlink_gym.invariants._mjutil.energy_scale` (HalfCheetah-v5: 617 J,
    Ant-v5: 1209 J, InvertedPendulum-v5: 452 J), so the residual is dimensionless.

    What the step-level books cannot close: semi-implicit Euler itself changes the energy by
    ``−½·ΔvᵀMΔv`` per substep (several J per substep on HalfCheetah, whose gear-120 motors move
    light links), and constraint forces vary within a substep, so end-point estimates of their
    work are rough. Measured max residual under random actions, with (without) constraint work:
    InvertedPendulum-v5 1e-4, Hopper-v5 0.02 (0.03), Humanoid-v5 0.05 (0.06), Walker2d-v5 0.11
    (0.12), HalfCheetah-v5 0.67 (0.20), Reacher-v5 1.16 (0.82), Ant-v5 1.52 (0.41): counting
    constraint work helps with 2–3 ms substeps and hurts with 10 ms ones. The default 3.0 is a
    blow-up detector: HalfCheetah-v5 with a 10× substep gives 15 on its first step and 5e4 on
    the next, before MuJoCo resets itself; ``qvel = 1e6`` on a free body gives ~1e11. On
    contact-free or finely stepped models tighten it (1e-3 for InvertedPendulum-v5, 0.3 for
    Hopper/Walker2d/Humanoid).

    Args:
        tolerance: Allowed unexplained energy per step, in units of ``E_ref``.
        mode: ``"hard"`` flags the transition, ``"soft"`` penalises it.
        constraint_work: Count the estimated work of constraint forces.
    """
    return make_invariant(_Energy, tolerance, mode, "ΔE equals the work of forces",
                          constraint_work=constraint_work)


# --------------------------------------------------------------------------- momentum
def momentum(tolerance: float = 2.0, mode: Mode = "hard", *, clearance: float = 0.05
             ) -> Invariant:
    """Linear momentum of each floating/sliding tree against the impulse, in flight phases.

    Along every root translation ``j`` (free-joint translations, leading slide joints of a body
    attached to the world; see :func:`~physlink_gym.invariants._mjflight.root_translations`)::

        residual = max_j |Δ(M·v)_j − I_j| / (m_j·g0·Δt)
        I_j = Δt·(m_j·g·axis_j + f_act,j + f_appl,j + f_fluid,j) − b_j·Δq_j − k_j·Δt·(q̄_j − q0_j)

    the change of the tree's momentum (armature included) minus the impulses of gravity,
    actuators, applied forces, root damping (exact: ``∫b·v = b·Δq``) and root springs, in units
    of one step's gravity impulse. Internal forces (limits, motors, self-contacts) cancel.

    Checked only in *flight*, else the residual is 0: no contact (``ncon == 0``) and no
    constraint force on the root translations before and after the step, and every geom that
    could touch the world or another tree at least ``clearance`` away (bounding spheres) at
    both ends. The clearance matters: contacts that begin and end inside a step are invisible at
    its end points; a 5 cm gap rules them out below a 2 m/s approach speed at Δt = 0.05 s.

    Measured max under random actions: InvertedPendulum-v5 (sliding cart, no contacts) 1e-5;
    flight steps of HalfCheetah-v5 0.69 (semi-implicit Euler: ``M(q)`` changes inside a
    substep), Swimmer-v5 0.07 (fluid forces), Ant-v5 (RK4) 0.017, Humanoid-v5 0.008. Without
    the clearance test, hidden contacts gave up to 5 (HalfCheetah) and 10 (Ant). The default
    2.0 passes normal flight and fails momentum from nowhere (a blow-up, a mid-step kick).

    Args:
        tolerance: Allowed momentum mismatch in units of ``m·g0·Δt``.
        mode: ``"hard"`` flags the transition, ``"soft"`` penalises it.
        clearance: Minimum certified gap (m) to other bodies for a step to count as flight.
    """
    return make_invariant(FlightMomentum, tolerance, mode,
                          "Δp equals the gravity impulse in flight", clearance=clearance)
