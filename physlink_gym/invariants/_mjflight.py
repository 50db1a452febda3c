"""The momentum check of :func:`physlink_gym.invariants.mujoco.momentum` and its model analysis.

Root translations (degrees of freedom that move a whole tree), the rare impulses on them, and
the contact clearance that certifies a flight phase. Analysis reads the ``MjModel`` once at
bind (and a private ``MjData`` for the static geometry of planes); per-step parts work on plain
Python lists, which beat numpy calls on arrays this small right after ``mj_step`` has run.
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple

import mujoco
import numpy as np
from numpy.typing import NDArray

from physlink_gym.invariants._mjutil import (
    STANDARD_GRAVITY,
    FloatArray,
    LiveViews,
    MjCheck,
    StateSummary,
    as_slice,
    cached_end_summary,
    end_summary,
    live_data,
    max_abs,
    missing_reset,
)
from physlink_gym.invariants.core import NotApplicableError

__all__ = ["Clearance", "FlightMomentum", "RareImpulses", "RootTranslations", "root_translations"]


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
    Evaluated in plain Python on ``geom_xpos.tolist()``: one numpy call, which matters right
    after ``mj_step`` has evicted numpy's code from the caches (~2 µs per call there).
    """

    def __init__(self, model: Any) -> None:
        plane = model.geom_type == mujoco.mjtGeom.mjGEOM_PLANE
        root = model.body_rootid[model.geom_bodyid]
        ctype, caff = model.geom_contype, model.geom_conaffinity
        grid = np.meshgrid(np.arange(model.ngeom), np.arange(model.ngeom), indexing="ij")
        a, b = grid[0].ravel(), grid[1].ravel()
        keep = (root[a] != 0) & (root[b] != root[a]) & ~plane[a] & ((a < b) | (root[b] == 0))
        keep &= ((ctype[a] & caff[b]) | (ctype[b] & caff[a])) != 0
        a, b = a[keep], b[keep]
        data = mujoco.MjData(model)
        mujoco.mj_kinematics(model, data)  # planes sit on static bodies: normals are constant
        pad = model.geom_rbound[a] + model.geom_margin[a] + model.geom_margin[b]
        on_plane = plane[b]
        normal = data.geom_xmat[b[on_plane], 6:9]
        offset = pad[on_plane] + np.einsum("ij,ij->i", normal, data.geom_xpos[b[on_plane]])
        # gap = n·x_geom − (n·x_plane + pad) for planes; |x_a − x_b| − pad for the others
        self._planes = [(int(g), *n, c) for g, n, c in
                        zip(a[on_plane], normal.tolist(), offset.tolist(), strict=True)]
        self._spheres = [(int(i), int(j), float(p)) for i, j, p in zip(
            a[~on_plane], b[~on_plane], pad[~on_plane] + model.geom_rbound[b[~on_plane]],
            strict=True)]

    def __call__(self, geom_xpos: FloatArray) -> float:
        """Smallest certified gap (m) in the state with geom centres ``geom_xpos``; inf if none."""
        if not (self._planes or self._spheres):
            return math.inf
        x = geom_xpos.tolist()
        gaps = [nx * x[g][0] + ny * x[g][1] + nz * x[g][2] - c for g, nx, ny, nz, c in self._planes]
        gaps += [math.dist(x[i], x[j]) - p for i, j, p in self._spheres]
        gap: float = min(gaps)
        return gap


class RareImpulses:
    """Impulses on root translations that most models never have, or zeros (cheaply).

    Fluid forces (``qfrc_fluid`` at the end state × Δt), Cartesian pushes (``xfrc_applied``
    forces on the tree, constant over the step) and root-slide springs (``−k·Δt·(q̄ − q_ref)``
    with the mid-step position ``q̄``).
    """

    def __init__(self, model: Any, roots: RootTranslations, dt: float) -> None:
        self._roots, self._dt, self._n = roots, dt, roots.dofs.size
        self._stiffness = model.jnt_stiffness[model.dof_jntid[roots.dofs]]
        self._spring = model.qpos_spring[roots.qpos]
        self._sprung = bool(np.any(self._stiffness))
        self._fluid = bool(model.opt.density > 0 or model.opt.viscosity > 0)
        self._no_push = np.zeros(model.nbody * 6).tobytes()

    def __call__(self, data: Any, dq: list[float]) -> list[float]:
        """Per root translation, the impulse (N·s) of the rare forces over the step."""
        pushed = data.xfrc_applied.tobytes() != self._no_push
        if not (pushed or self._fluid or self._sprung):
            return [0.0] * self._n
        roots, dt, extra = self._roots, self._dt, np.zeros(self._n)
        if self._fluid:
            extra += dt * data.qfrc_fluid[roots.dofs]
        if pushed:
            pushes = roots.trees @ data.xfrc_applied[:, :3]
            extra += dt * np.sum(pushes * roots.axes, axis=1)
        if self._sprung:
            mid = data.qpos[roots.qpos] - np.asarray(dq) / 2.0
            extra -= dt * self._stiffness * (mid - self._spring)
        result: list[float] = extra.tolist()
        return result


class FlightMomentum(MjCheck):
    """The bound check of :func:`physlink_gym.invariants.mujoco.momentum`."""

    name = "momentum"
    needs_live_step = "the contacts and applied forces of the step"

    def __init__(self, model: Any, substeps: int, clearance: float = 0.05) -> None:
        super().__init__()
        roots = root_translations(model)
        if roots.dofs.size == 0:
            raise NotApplicableError(
                got="a fixed-base MuJoCo model (no free/slide joint on a child of the world)",
                expected="a floating or sliding base whose translation moves its whole tree",
                fix="drop momentum() for fixed-base envs; mujoco_energy() still applies")
        self._dofs, self._qpos = as_slice(roots.dofs), as_slice(roots.qpos)
        self._dt = dt = model.opt.timestep * substeps
        self._gravity = (dt * roots.mass * (roots.axes @ model.opt.gravity)).tolist()
        self._damping = model.dof_damping[roots.dofs].tolist()
        self._scale = (np.maximum(roots.mass, 1e-9) * STANDARD_GRAVITY * dt).tolist()
        self._other = RareImpulses(model, roots, dt)
        self._clearance, self._min_gap = Clearance(model), clearance
        self._ready = False
        self._q0 = np.zeros(model.nq)
        self._v0 = np.zeros(model.nv)
        self._start: StateSummary | None = None  # summary of the start state, when known
        self._free0 = False  # is the start in flight?
        self._gap0: float | None = None  # the start's clearance, when known

    def _free(self, live: LiveViews) -> bool:
        return live.data.ncon == 0 and not any(live.qfrc_constraint[self._dofs].tolist())

    def _roll(self, live: LiveViews, end: StateSummary | None, gap: float | None = None,
              free: bool | None = None) -> None:
        """Make the current live state the start of the next step (``gap``: its clearance)."""
        self._free0, self._ready = self._free(live) if free is None else free, True
        if self._free0:
            np.copyto(self._q0, live.qpos)
            np.copyto(self._v0, live.qvel)
            self._start, self._gap0 = end, gap

    def on_reset(self, env: Any, obs: Any) -> None:
        self._roll(self._live(live_data(env)), None)

    def _residual(self, live: LiveViews, start: StateSummary, end: StateSummary) -> float:
        d, dt = self._dofs, self._dt
        assert end.momentum is not None and start.momentum is not None  # full summaries
        gain = (end.momentum[d] - start.momentum[d]).tolist()
        dq = (live.qpos[self._qpos] - self._q0[self._qpos]).tolist()
        force = (live.qfrc_actuator[d] + live.qfrc_applied[d]).tolist()
        extra = self._other(live, dq)
        return max_abs([
            (g - w - dt * f + b * x - e) / s for g, w, f, b, x, e, s in zip(
                gain, self._gravity, force, self._damping, dq, extra, self._scale, strict=True)
        ])

    def __call__(self, transition: Any) -> float:
        if not self._ready:
            raise missing_reset(self.name)
        env = transition["env"]
        live = self._live(env.data)
        free = self._free(live)
        # the live geoms are one substep old: a cheap filter before the scratch evaluation
        if not (self._free0 and free) or self._clearance(live.geom_xpos) < self._min_gap:
            self._roll(live, cached_end_summary(transition), free=free)
            return 0.0
        scratch = self._scratch_for(env.model)
        end = end_summary(transition, scratch, live)
        assert end.geom_xpos is not None  # a full summary
        gap = self._clearance(end.geom_xpos)
        residual = 0.0
        if gap >= self._min_gap:  # flight at the end: check the start (cheap when it was ours)
            start = self._start or scratch.summarize(self._q0, self._v0)
            assert start.geom_xpos is not None
            if self._start is None or self._gap0 is None:
                self._gap0 = self._clearance(start.geom_xpos)
            if self._gap0 >= self._min_gap:
                residual = self._residual(live, start, end)
        self._roll(live, end, gap, free)
        return residual
