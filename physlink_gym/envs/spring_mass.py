"""``physlink/SpringMass-v0``: a damped harmonic oscillator pushed by a bounded force.

``m·ẍ = u − k·x − c·ẋ``, stepped by the implicit midpoint rule, which for this linear system
has the closed form ``(I − ½dt·A)·s' = (I + ½dt·A)·s + dt·b``. With ``v̄ = (x' − x)/dt`` the
midpoint velocity, it satisfies exactly

    ``E(s') − E(s) = u·(x' − x) − c·(x' − x)²/dt``,   ``E = ½m·v² + ½k·x²``,

so energy bookkeeping closes to round-off (and energy is conserved exactly when ``u = c = 0``).

Example:
    >>> s1 = spring_mass_step(np.array([1.0, 0.0]), 0.0, m=1.0, k=4.0, c=0.0, dt=0.05)
    >>> [round(float(v), 9) for v in s1]   # [0.9975, -0.2] / 1.0025
    [0.995012469, -0.199501247]
    >>> round(float(spring_mass_energy(s1, m=1.0, k=4.0)), 12)
    2.0
"""

from __future__ import annotations

from typing import Any

import numpy as np
from gymnasium import spaces
from PIL import ImageDraw

from physlink_gym.envs.base import AnalyticEnv, FloatArray, disc

__all__ = ["SpringMassEnv", "spring_mass_energy", "spring_mass_step", "spring_mass_work"]


def spring_mass_step(state: Any, force: Any, *, m: float, k: float, c: float,
                     dt: float) -> FloatArray:
    """One implicit-midpoint step of ``[x, v]`` (broadcasts over leading batch dimensions)."""
    s = np.asarray(state, dtype=np.float64)
    u = np.asarray(force, dtype=np.float64).reshape(np.shape(s)[:-1])
    x, v = s[..., 0], s[..., 1]
    h = dt / 2.0
    # (I - hA) s' = (I + hA) s + dt b with A = [[0, 1], [-k/m, -c/m]], b = [0, u/m]
    rx = x + h * v
    rv = v + h * (-k / m * x - c / m * v) + dt * u / m
    a11, a12, a21, a22 = 1.0, -h, h * k / m, 1.0 + h * c / m
    det = a11 * a22 - a12 * a21
    x1 = (a22 * rx - a12 * rv) / det
    v1 = (a11 * rv - a21 * rx) / det
    return np.stack([x1, v1], axis=-1)


def spring_mass_energy(state: Any, *, m: float, k: float) -> Any:
    """``E = ½m·v² + ½k·x²`` (J)."""
    s = np.asarray(state, dtype=np.float64)
    return 0.5 * m * s[..., 1] ** 2 + 0.5 * k * s[..., 0] ** 2


def spring_mass_work(state: Any, force: Any, next_state: Any, *, c: float, dt: float) -> Any:
    """``W = u·Δx − c·Δx²/dt``: work of the force minus the damper's dissipation (J)."""
    dx = np.asarray(next_state, dtype=np.float64)[..., 0] - np.asarray(state)[..., 0]
    return np.asarray(force, dtype=np.float64).reshape(np.shape(dx)) * dx - c * dx**2 / dt


class SpringMassEnv(AnalyticEnv):
    """Drive a mass on a spring to rest at ``x = 0``.

    Observation ``[x (m), v (m/s)]`` (float64); action: force in [−1, 1] N; reward
    ``−(x² + 0.1·v² + 0.001·u²)``; never terminates (registered with a 200-step limit).

    Args:
        mass: ``m`` (kg). stiffness: ``k`` (N/m). damping: ``c`` (N·s/m). dt: step (s).
        render_mode: None or ``"rgb_array"``.
    """

    def __init__(self, mass: float = 1.0, stiffness: float = 4.0, damping: float = 0.1,
                 dt: float = 0.05, render_mode: str | None = None) -> None:
        self.m, self.k, self.c, self.dt = float(mass), float(stiffness), float(damping), dt
        self.observation_space = spaces.Box(-np.inf, np.inf, shape=(2,), dtype=np.float64)
        self.action_space = spaces.Box(-1.0, 1.0, shape=(1,), dtype=np.float32)
        super().__init__(render_mode)

    def _initial_state(self) -> FloatArray:
        return self.np_random.uniform(-1.0, 1.0, size=2)

    def _dynamics(self, state: FloatArray, action: FloatArray) -> FloatArray:
        return spring_mass_step(state, action[0], m=self.m, k=self.k, c=self.c, dt=self.dt)

    def _reward(self, state: FloatArray, action: FloatArray, next_state: FloatArray) -> float:
        x, v = next_state
        return -float(x * x + 0.1 * v * v + 0.001 * action[0] ** 2)

    def energy(self, obs: Any) -> float:
        """``½m·v² + ½k·x²`` of an observation (J)."""
        return float(spring_mass_energy(obs, m=self.m, k=self.k))

    def work(self, obs: Any, action: Any, next_obs: Any) -> float:
        """``u·Δx − c·Δx²/dt`` with ``u`` the clipped action (J)."""
        force = self.clip_action(action)[0]
        return float(spring_mass_work(obs, force, next_obs, c=self.c, dt=self.dt))

    def _draw(self, draw: ImageDraw.ImageDraw) -> None:
        px = 64.0 + 40.0 * float(np.clip(self._state[0], -1.4, 1.4))
        draw.line([(4.0, 64.0), (px, 64.0)], fill=(120, 120, 120), width=2)
        draw.line([(4.0, 40.0), (4.0, 88.0)], fill=(0, 0, 0), width=4)
        disc(draw, px, 64.0, 10.0, (200, 60, 40))
