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
    "Clearance",
    "MjCheck",
    "RootTranslations",
    "Scratch",
    "StartState",
    "StateSummary",
    "end_summary",
    "energy_scale",
    "frame_skip",
    "make_invariant",
    "missing_before_step",
    "mujoco_env",
    "nonneg",
    "root_translations",
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
        momentum: Generalized momentum ``M(q)·v`` (a fresh array, never a view).
        geom_xpos: ``(ngeom, 3)`` geom centres (a copy), for contact clearances.
    """

    potential: float
    kinetic: float
    momentum: FloatArray
    geom_xpos: FloatArray


class Scratch:
    """A private ``MjData`` on the env's model: position-level pipeline only, no collisions.

    ``summarize`` runs ``mj_kinematics``, ``mj_comPos``, ``mj_tendon``, ``mj_makeM``,
    ``mj_energyPos`` and ``mj_mulM`` (about 4 µs on HalfCheetah), never ``mj_forward``.
    """

    def __init__(self, model: Any) -> None:
        self.model = model
        self.data = mujoco.MjData(model)
        self._mv = np.zeros(model.nv)

    def __reduce__(self) -> tuple[type[Scratch], tuple[Any]]:
        return (Scratch, (self.model,))

    def summarize(self, qpos: FloatArray, qvel: FloatArray) -> StateSummary:
        """Energy and momentum of the state ``(qpos, qvel)``."""
        m, d = self.model, self.data
        np.copyto(d.qpos, qpos)
        np.copyto(d.qvel, qvel)
        mujoco.mj_kinematics(m, d)
        mujoco.mj_comPos(m, d)
        mujoco.mj_tendon(m, d)
        mujoco.mj_makeM(m, d)
        mujoco.mj_energyPos(m, d)
        mujoco.mj_mulM(m, d, self._mv, d.qvel)
        kinetic = 0.5 * float(np.dot(d.qvel, self._mv))
        return StateSummary(float(d.energy[0]), kinetic, self._mv.copy(), d.geom_xpos.copy())


def end_summary(transition: Any, scratch: Scratch) -> StateSummary:
    """The post-step state summary, computed once per step and shared through the cache."""
    data = transition["env"].data
    cache = transition.get("cache")
    if cache is not None:
        hit = cache.get(END_STATE_KEY)
        if hit is not None and hit[0] is data:
            summary: StateSummary = hit[1]
            return summary
    summary = scratch.summarize(data.qpos, data.qvel)
    if cache is not None:
        cache[END_STATE_KEY] = (data, summary)
    return summary


class StartState:
    """The pre-step snapshot of one check: ``q0``, ``v0`` and (lazily) their summary.

    ``begin`` is called from ``before_step``. When the live state is bytewise the state the
    previous step ended in, the previous end summary is reused, so a step costs one scratch
    evaluation, not two. ``finish`` records the end state and disarms the snapshot, so a missing
    ``before_step`` is reported instead of silently reusing a stale one.
    """

    def __init__(self, model: Any) -> None:
        self.q0 = np.zeros(model.nq)
        self.v0 = np.zeros(model.nv)
        self.armed = False
        self._summary: StateSummary | None = None
        self._end_key = b""
        self._end_summary: StateSummary | None = None

    def reset(self) -> None:
        """Forget everything (after an env reset)."""
        self.armed, self._summary, self._end_key, self._end_summary = False, None, b"", None

    def begin(self, data: Any) -> None:
        """Snapshot the live state before a step."""
        np.copyto(self.q0, data.qpos)
        np.copyto(self.v0, data.qvel)
        same = self._end_summary is not None and self._end_key == self.q0.tobytes() + \
            self.v0.tobytes()
        self._summary = self._end_summary if same else None
        self.armed = True

    def summary(self, scratch: Scratch) -> StateSummary:
        """Summary of the snapshot (evaluated on the scratch data only when not reusable)."""
        if self._summary is None:
            self._summary = scratch.summarize(self.q0, self.v0)
        return self._summary

    def finish(self, data: Any, end: StateSummary | None) -> None:
        """Record the post-step state (its summary when known) and disarm."""
        self.armed = False
        if end is None:
            self._end_key, self._end_summary = b"", None
        else:
            self._end_key = data.qpos.tobytes() + data.qvel.tobytes()
            self._end_summary = end

    def require_armed(self, invariant: str) -> None:
        """Raise when ``before_step`` did not run before this step."""
        if not self.armed:
            raise missing_before_step(invariant)


def missing_before_step(invariant: str) -> ConfigurationError:
    """The error of a check called on a step whose ``before_step`` never ran."""
    return ConfigurationError(
        got=f"invariant {invariant!r} checked a step without a before_step snapshot",
        expected="before_step(env, action) called before every env.step",
        fix="use the check through InvariantWrapper, or call check.before_step(env, action) "
        "before each env.step when driving it by hand",
    )


def nonneg(r: float) -> float:
    """``max(r, 0)`` that keeps NaN (Python's ``max(0.0, nan)`` is 0.0)."""
    return 0.0 if r <= 0.0 else r


class MjCheck:
    """Base of the bound MuJoCo checks: a lazy scratch ``MjData``, dropped when pickled.

    Subclasses take ``(model, substeps, **options)`` and set ``name``.
    """

    name = ""

    def __init__(self) -> None:
        self._scratch: Scratch | None = None

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_scratch"] = None
        return state

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


class RootTranslations(NamedTuple):
    """Degrees of freedom that translate a whole kinematic tree along a fixed world axis.

    Attributes:
        dofs: Their indices in ``qvel``; qpos: their indices in ``qpos``.
        axes: ``(n, 3)`` world axes; mass: ``(n,)`` gravity-effective tree masses
            ``Σ m_b·(1 − gravcomp_b)``; trees: ``(n, nbody)`` tree membership.
    """

    dofs: NDArray[np.intp]
    qpos: NDArray[np.intp]
    axes: FloatArray
    mass: FloatArray
    trees: FloatArray


def root_translations(model: Any) -> RootTranslations:
    """Find each tree's leading free or slide joints (children of the world body).

    Only joints before the first hinge/ball of the root body count: their world axes are
    constant. Along such a degree of freedom ``j`` the generalized momentum ``(M·v)_j`` is the
    tree's linear momentum along the axis (plus armature), and Lagrange's equation reads
    ``d(M·v)_j/dt = m·(g·axis) + Q_j`` because translating the tree changes no inertia.
    """
    dofs: list[int] = []
    qpos: list[int] = []
    axes: list[FloatArray] = []
    roots: list[int] = []
    for body in range(1, model.nbody):
        if model.body_parentid[body] != 0:
            continue
        first = int(model.body_jntadr[body])
        for jnt in range(first, first + int(model.body_jntnum[body])):
            kind, dof, adr = model.jnt_type[jnt], model.jnt_dofadr[jnt], model.jnt_qposadr[jnt]
            if kind == mujoco.mjtJoint.mjJNT_FREE:
                dofs += [dof, dof + 1, dof + 2]
                qpos += [adr, adr + 1, adr + 2]
                axes += list(np.eye(3))
                roots += [body] * 3
            elif kind == mujoco.mjtJoint.mjJNT_SLIDE:
                axis = np.zeros(3)
                mujoco.mju_rotVecQuat(axis, model.jnt_axis[jnt], model.body_quat[body])
                dofs.append(dof)
                qpos.append(adr)
                axes.append(axis)
                roots.append(body)
                continue
            break
    trees = (model.body_rootid[None, :] == np.array(roots, dtype=int)[:, None]).astype(float)
    mass = trees @ (model.body_mass * (1.0 - model.body_gravcomp))
    return RootTranslations(np.array(dofs, dtype=np.intp), np.array(qpos, dtype=np.intp),
                            np.array(axes).reshape(-1, 3), mass, trees)


class Clearance:
    """Lower bound on the gap between geoms that could exert an external force on a tree.

    Pairs are every collidable geom of a moving tree (``contype``/``conaffinity`` compatible)
    with every geom of the world or of another tree. The gap is measured with bounding spheres
    (``geom_rbound``) and, for planes, along the plane normal, minus both margins: it never
    exceeds the true distance, so a positive clearance certifies "no contact in this state".
    """

    def __init__(self, model: Any) -> None:
        plane = model.geom_type == mujoco.mjtGeom.mjGEOM_PLANE
        root = model.body_rootid[model.geom_bodyid]
        ctype, caff = model.geom_contype, model.geom_conaffinity
        grid = np.meshgrid(np.arange(model.ngeom), np.arange(model.ngeom), indexing="ij")
        a, b = grid[0].ravel(), grid[1].ravel()
        keep = (root[a] != 0) & (root[b] != root[a]) & ~plane[a] & ((a < b) | (root[b] == 0))
        keep &= ((ctype[a] & caff[b]) | (ctype[b] & caff[a])) != 0
        self._a, self._b = a[keep], b[keep]
        self._plane = plane[self._b]
        data = mujoco.MjData(model)
        mujoco.mj_kinematics(model, data)  # planes sit on static bodies: normals are constant
        self._normal = data.geom_xmat[self._b].reshape(-1, 3, 3)[:, :, 2]
        rb, margin = model.geom_rbound, model.geom_margin
        self._pad = rb[self._a] + np.where(self._plane, 0.0, rb[self._b])
        self._pad += margin[self._a] + margin[self._b]

    def __call__(self, geom_xpos: FloatArray) -> float:
        """Smallest certified gap (m) in the state with geom centres ``geom_xpos``; inf if none."""
        if self._a.size == 0:
            return math.inf
        diff = geom_xpos[self._a] - geom_xpos[self._b]
        along = np.einsum("ij,ij->i", diff, self._normal)
        gap = np.where(self._plane, along, np.sqrt(np.einsum("ij,ij->i", diff, diff)))
        return float(np.min(gap - self._pad))
