"""``physlink/ProjectileDrag-v0``: a point mass in 2-D under gravity, quadratic drag and thrust.

``m·v̇ = F − m·g·ŷ − c·|v|·v``, stepped by the implicit midpoint rule. The midpoint velocity
``v̄ = (v + v')/2 = (x' − x)/dt`` solves ``v̄·(1 + κ·|v̄|) = w`` with ``κ = c·dt/(2m)`` and
``w = v + (dt/2)·(F/m − g·ŷ)``, in closed form ``|v̄| = (√(1 + 4κ|w|) − 1)/(2κ)``. Because the
potential ``m·g·y`` is linear, the scheme satisfies exactly

    ``E(s') − E(s) = F·Δx − c·|Δx|³/dt²``,   ``E = ½m·|v|² + m·g·y``,   ``Δx = x' − x``.

The episode terminates when the mass falls below ``y = 0`` (no ground force is ever applied,
so the energy identity holds on that step too).

Example:
    >>> s1 = projectile_step(np.array([0.0, 1.0, 3.0, 0.0]), np.zeros(2), m=1.0, g=9.81,
    ...                      c=0.0, dt=0.1)
    >>> [round(float(v), 6) for v in s1]   # drag-free: exact parabola
    [0.3, 0.95095, 3.0, -0.981]
"""

from __future__ import annotations

from typing import Any

import numpy as np
from gymnasium import spaces
from PIL import ImageDraw

from physlink_gym.envs.base import AnalyticEnv, FloatArray, disc

__all__ = ["ProjectileDragEnv", "projectile_energy", "projectile_step", "projectile_work"]


def projectile_step(state: Any, thrust: Any, *, m: float, g: float, c: float,
                    dt: float) -> FloatArray:
    """One implicit-midpoint step of ``[x, y, vx, vy]`` (broadcasts over batch dimensions)."""
    s = np.asarray(state, dtype=np.float64)
    f = np.asarray(thrust, dtype=np.float64)
    pos, vel = s[..., :2], s[..., 2:]
    accel = f / m - np.array([0.0, g])
    w = vel + 0.5 * dt * accel
    speed = np.linalg.norm(w, axis=-1, keepdims=True)
    kappa = c * dt / (2.0 * m)
    if kappa > 0.0:
        # |v̄| = (sqrt(1 + 4κ|w|) − 1) / (2κ) = 2|w| / (1 + sqrt(1 + 4κ|w|)), stable at 0
        scale = 2.0 / (1.0 + np.sqrt(1.0 + 4.0 * kappa * speed))
    else:
        scale = np.ones_like(speed)
    mean = w * scale
    return np.concatenate([pos + dt * mean, 2.0 * mean - vel], axis=-1)


def projectile_energy(state: Any, *, m: float, g: float) -> Any:
    """``E = ½m·|v|² + m·g·y`` (J)."""
    s = np.asarray(state, dtype=np.float64)
    return 0.5 * m * np.sum(s[..., 2:] ** 2, axis=-1) + m * g * s[..., 1]


def projectile_work(state: Any, thrust: Any, next_state: Any, *, c: float, dt: float) -> Any:
    """``W = F·Δx − c·|Δx|³/dt²``: work of the thrust minus the drag dissipation (J)."""
    dx = np.asarray(next_state, dtype=np.float64)[..., :2] - np.asarray(state)[..., :2]
    dist = np.linalg.norm(dx, axis=-1)
    return np.sum(np.asarray(thrust, dtype=np.float64) * dx, axis=-1) - c * dist**3 / dt**2


class ProjectileDragEnv(AnalyticEnv):
    """Fly a thrust-controlled projectile as far right as possible before it lands.

    Observation ``[x, y (m), vx, vy (m/s)]`` (float64); action: thrust ``[Fx, Fy]`` in
    [−5, 5] N each; reward ``Δx − 0.001·|F|²``; terminates when ``y < 0``.

    Args:
        mass: ``m`` (kg). gravity: ``g`` (m/s²). drag: quadratic coefficient ``c`` (kg/m).
        dt: step (s). render_mode: None or ``"rgb_array"``.
    """

    def __init__(self, mass: float = 1.0, gravity: float = 9.81, drag: float = 0.05,
                 dt: float = 0.02, render_mode: str | None = None) -> None:
        self.m, self.g, self.c, self.dt = float(mass), float(gravity), float(drag), dt
        self.observation_space = spaces.Box(-np.inf, np.inf, shape=(4,), dtype=np.float64)
        self.action_space = spaces.Box(-5.0, 5.0, shape=(2,), dtype=np.float32)
        super().__init__(render_mode)

    def _initial_state(self) -> FloatArray:
        rng = self.np_random
        return np.array([0.0, rng.uniform(1.0, 2.0), rng.uniform(2.0, 5.0), rng.uniform(3.0, 6.0)])

    def _dynamics(self, state: FloatArray, action: FloatArray) -> FloatArray:
        return projectile_step(state, action, m=self.m, g=self.g, c=self.c, dt=self.dt)

    def _reward(self, state: FloatArray, action: FloatArray, next_state: FloatArray) -> float:
        return float(next_state[0] - state[0]) - 0.001 * float(action @ action)

    def _terminated(self, next_state: FloatArray) -> bool:
        return bool(next_state[1] < 0.0)

    def energy(self, obs: Any) -> float:
        """``½m·|v|² + m·g·y`` of an observation (J)."""
        return float(projectile_energy(obs, m=self.m, g=self.g))

    def work(self, obs: Any, action: Any, next_obs: Any) -> float:
        """``F·Δx − c·|Δx|³/dt²`` with ``F`` the clipped thrust (J)."""
        return float(projectile_work(obs, self.clip_action(action), next_obs, c=self.c,
                                     dt=self.dt))

    def _draw(self, draw: ImageDraw.ImageDraw) -> None:
        x, y = float(self._state[0]), float(self._state[1])
        px, py = 16.0 + 8.0 * (x % 13.0), 112.0 - 12.0 * float(np.clip(y, -0.5, 8.5))
        draw.line([(0.0, 114.0), (127.0, 114.0)], fill=(40, 140, 40), width=3)
        disc(draw, px, py, 5.0, (200, 120, 20))
