"""``physlink/DampedPendulum-v0``: a damped point-mass pendulum with a bounded torque.

``m·l²·θ̈ = u − m·g·l·sin θ − c·θ̇`` (``θ = 0`` hanging down), stepped by the midpoint discrete
gradient method: with ``ω̄ = (θ' − θ)/dt = (ω + ω')/2`` it solves

    ``m·l²·(ω' − ω)/dt = u − m·g·l·(cos θ − cos θ')/(θ' − θ) − c·ω̄``

by fixed-point iteration (a contraction for ``g·dt/(4·l) < 1``), so that exactly

    ``E(s') − E(s) = u·Δθ − c·Δθ²/dt``,   ``E = ½m·l²·ω² + m·g·l·(1 − cos θ)``.

The difference quotient is evaluated as ``sin(θ + Δθ/2)·sinc(Δθ/2)``, stable as ``Δθ → 0``.
Observations are ``[cos θ, sin θ, ω]``, so the work recovers ``Δθ`` by wrapping, which needs
``|Δθ| < π`` per step (``|ω| < 62 rad/s`` at ``dt = 0.05``; damping keeps ``|ω| ≲ u/c``).

Example:
    >>> s0 = np.array([np.pi / 2, 0.0])   # horizontal, at rest
    >>> s1 = pendulum_step(s0, 0.0, m=1.0, l=1.0, g=9.81, c=0.0, dt=0.05)
    >>> e0, e1 = pendulum_energy_of(s0, m=1.0, l=1.0, g=9.81), pendulum_energy_of(s1, m=1.0,
    ...                                                                          l=1.0, g=9.81)
    >>> bool(abs(e1 - e0) < 1e-12), round(float(s1[1]), 4)   # ω' ≈ −g·dt
    (True, -0.4905)
"""

from __future__ import annotations

from typing import Any

import numpy as np
from gymnasium import spaces
from PIL import ImageDraw

from physlink_gym.envs.base import AnalyticEnv, FloatArray, disc

__all__ = ["DampedPendulumEnv", "pendulum_energy_of", "pendulum_step"]

_ITERATIONS = 30


def pendulum_step(state: Any, torque: Any, *, m: float, l: float, g: float,  # noqa: E741
                  c: float, dt: float) -> FloatArray:
    """One discrete-gradient step of ``[θ, ω]`` (broadcasts over leading batch dimensions)."""
    s = np.asarray(state, dtype=np.float64)
    theta, omega = s[..., 0], s[..., 1]
    u = np.asarray(torque, dtype=np.float64).reshape(theta.shape)
    inertia = m * l * l
    mean = omega.copy()  # ω̄, the midpoint angular velocity
    for _ in range(_ITERATIONS):
        half = 0.5 * dt * mean
        grad = m * g * l * np.sin(theta + half) * np.sinc(half / np.pi)
        new = (2.0 * inertia * omega / dt + u - grad) / (2.0 * inertia / dt + c)
        done = bool(np.all(new == mean))
        mean = new
        if done:
            break
    return np.stack([theta + dt * mean, 2.0 * mean - omega], axis=-1)


def pendulum_energy_of(state: Any, *, m: float, l: float, g: float) -> Any:  # noqa: E741
    """``E = ½m·l²·ω² + m·g·l·(1 − cos θ)`` of ``[θ, ω]`` (J)."""
    s = np.asarray(state, dtype=np.float64)
    return 0.5 * m * l * l * s[..., 1] ** 2 + m * g * l * (1.0 - np.cos(s[..., 0]))


class DampedPendulumEnv(AnalyticEnv):
    """Swing a damped pendulum up to ``θ = π`` with a torque in [−2, 2] N·m.

    Observation ``[cos θ, sin θ, ω]`` (float64); reward
    ``−(angle_to_top² + 0.1·ω² + 0.001·u²)``; never terminates (200-step limit when registered).

    Args:
        mass: ``m`` (kg). length: ``l`` (m). gravity: ``g`` (m/s²). damping: ``c`` (N·m·s).
        dt: step (s). render_mode: None or ``"rgb_array"``.
    """

    def __init__(self, mass: float = 1.0, length: float = 1.0, gravity: float = 9.81,
                 damping: float = 0.05, dt: float = 0.05,
                 render_mode: str | None = None) -> None:
        self.m, self.l, self.g = float(mass), float(length), float(gravity)
        self.c, self.dt = float(damping), dt
        high = np.array([1.0, 1.0, np.inf])
        self.observation_space = spaces.Box(-high, high, dtype=np.float64)
        self.action_space = spaces.Box(-2.0, 2.0, shape=(1,), dtype=np.float32)
        super().__init__(render_mode)
        self._angle = np.zeros(2)

    @staticmethod
    def _obs(angle: FloatArray) -> FloatArray:
        return np.array([np.cos(angle[0]), np.sin(angle[0]), angle[1]])

    def _initial_state(self) -> FloatArray:
        self._angle = np.array([self.np_random.uniform(-np.pi, np.pi),
                                self.np_random.uniform(-1.0, 1.0)])
        return self._obs(self._angle)

    def reset(self, *, seed: int | None = None,
              options: dict[str, Any] | None = None) -> tuple[FloatArray, dict[str, Any]]:
        """Start an episode; ``options["state"]`` is an observation ``[cos θ, sin θ, ω]``."""
        obs, info = super().reset(seed=seed, options=options)
        self._angle = np.array([np.arctan2(obs[1], obs[0]), obs[2]])
        return obs, info

    def _dynamics(self, state: FloatArray, action: FloatArray) -> FloatArray:
        self._angle = pendulum_step(self._angle, action[0], m=self.m, l=self.l, g=self.g,
                                    c=self.c, dt=self.dt)
        return self._obs(self._angle)

    def _reward(self, state: FloatArray, action: FloatArray, next_state: FloatArray) -> float:
        to_top = np.arctan2(-next_state[1], -next_state[0])  # 0 when upright
        return -float(to_top**2 + 0.1 * next_state[2] ** 2 + 0.001 * action[0] ** 2)

    def energy(self, obs: Any) -> float:
        """``½m·l²·ω² + m·g·l·(1 − cos θ)`` of an observation (J)."""
        o = np.asarray(obs, dtype=np.float64)
        return float(0.5 * self.m * self.l**2 * o[2] ** 2 + self.m * self.g * self.l * (1 - o[0]))

    def work(self, obs: Any, action: Any, next_obs: Any) -> float:
        """``u·Δθ − c·Δθ²/dt`` with ``Δθ`` wrapped to (−π, π] and ``u`` clipped (J)."""
        o0, o1 = np.asarray(obs, dtype=np.float64), np.asarray(next_obs, dtype=np.float64)
        # angle of rotation from o0 to o1: atan2(sin(θ1 − θ0), cos(θ1 − θ0))
        d = float(np.arctan2(o0[0] * o1[1] - o0[1] * o1[0], o0[0] * o1[0] + o0[1] * o1[1]))
        return float(self.clip_action(action)[0]) * d - self.c * d * d / self.dt

    def _draw(self, draw: ImageDraw.ImageDraw) -> None:
        end = (64.0 + 48.0 * float(np.sin(self._angle[0])),
               64.0 + 48.0 * float(np.cos(self._angle[0])))
        draw.line([(64.0, 64.0), end], fill=(60, 60, 60), width=3)
        disc(draw, end[0], end[1], 8.0, (40, 90, 200))
        disc(draw, 64.0, 64.0, 3.0, (0, 0, 0))
