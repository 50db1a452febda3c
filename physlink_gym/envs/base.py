"""Base class of the analytic envs: exact energy, exact work, optional RGB rendering.

Every env here integrates its dynamics with an energy-consistent scheme (implicit midpoint or a
discrete gradient), so the discrete energy identity

    ``E(s') − E(s) = W(s, a, s')``

holds to floating-point round-off on every step, with ``W`` the work of the applied force
minus the energy dissipated by damping or drag. Both sides are computed from observations
alone, which is what :func:`physlink_gym.invariants.builtin.energy_balance` needs::

    energy_balance(env.unwrapped.energy, env.unwrapped.transition_work, tolerance=1e-9)
"""

from __future__ import annotations

from typing import Any, SupportsFloat

import gymnasium as gym
import numpy as np
from numpy.typing import NDArray
from PIL import Image, ImageDraw

from physlink_gym.errors import ConfigurationError

__all__ = ["AnalyticEnv", "FloatArray"]

FloatArray = NDArray[np.float64]


class AnalyticEnv(gym.Env[FloatArray, Any]):  # observations float64, actions float32
    """A deterministic physical system with exact ``energy`` and ``work`` functions.

    Subclasses set ``observation_space``, ``action_space``, ``dt`` and implement
    ``_initial_state``, ``_dynamics``, ``_reward``, ``energy``, ``work`` and ``_draw``.
    ``reset(options={"state": s})`` starts from a given observation instead of a random one.
    """

    metadata: dict[str, Any] = {"render_modes": ["rgb_array"], "render_fps": 20}  # noqa: RUF012
    dt: float = 0.05

    def __init__(self, render_mode: str | None = None) -> None:
        if render_mode is not None and render_mode not in self.metadata["render_modes"]:
            raise ConfigurationError(
                got=f"render_mode={render_mode!r}",
                expected="None or 'rgb_array'",
                fix="pass render_mode='rgb_array' to get frames from render()",
            )
        self.render_mode = render_mode
        # One frame per step: the frame rate follows this instance's time step.
        self.metadata = {**type(self).metadata, "render_fps": max(1, round(1.0 / self.dt))}
        shape = self.observation_space.shape
        assert shape is not None
        self._state: FloatArray = np.zeros(shape, dtype=np.float64)

    # -- physics, per subclass ------------------------------------------------------------
    def _initial_state(self) -> FloatArray:
        raise NotImplementedError

    def _dynamics(self, state: FloatArray, action: FloatArray) -> FloatArray:
        raise NotImplementedError

    def _reward(self, state: FloatArray, action: FloatArray, next_state: FloatArray) -> float:
        raise NotImplementedError

    def _terminated(self, next_state: FloatArray) -> bool:
        return False

    def _draw(self, draw: ImageDraw.ImageDraw) -> None:
        raise NotImplementedError

    def energy(self, obs: Any) -> float:
        """Total mechanical energy (J) of the state observed in ``obs``."""
        raise NotImplementedError

    def work(self, obs: Any, action: Any, next_obs: Any) -> float:
        """Work (J) done on the system from ``obs`` to ``next_obs`` under ``action``."""
        raise NotImplementedError

    # -- gymnasium API ----------------------------------------------------------------------
    def transition_work(self, transition: Any) -> float:
        """:meth:`work` of a transition dict (``obs``, ``action``, ``next_obs``)."""
        return self.work(transition["obs"], transition["action"], transition["next_obs"])

    def clip_action(self, action: Any) -> FloatArray:
        """The action the dynamics apply: cast to float64, clipped to the action space."""
        space = self.action_space
        assert isinstance(space, gym.spaces.Box)
        arr = np.asarray(action, dtype=np.float64).reshape(space.shape)
        return np.clip(arr, space.low, space.high)

    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[FloatArray, dict[str, Any]]:
        """Start an episode: a random state, or ``options["state"]`` when given."""
        super().reset(seed=seed)
        if options and "state" in options:
            state = np.asarray(options["state"], dtype=np.float64)
            if state.shape != self._state.shape or not np.all(np.isfinite(state)):
                raise ConfigurationError(
                    got=f"options['state'] of shape {state.shape}: {state!r}",
                    expected=f"a finite array of shape {self._state.shape}",
                    fix="pass an observation of this env as the initial state",
                )
            self._state = state.copy()
        else:
            self._state = self._initial_state()
        return self._state.copy(), {}

    def step(
        self, action: Any
    ) -> tuple[FloatArray, SupportsFloat, bool, bool, dict[str, Any]]:
        """Advance one ``dt``; reward, termination and info follow the subclass."""
        applied = self.clip_action(action)
        state = self._state
        next_state = self._dynamics(state, applied)
        reward = self._reward(state, applied, next_state)
        self._state = next_state
        info = {"energy": self.energy(next_state)}
        return next_state.copy(), reward, self._terminated(next_state), False, info

    def render(self) -> NDArray[np.uint8] | None:
        """An RGB frame (``render_mode="rgb_array"``), else None."""
        if self.render_mode != "rgb_array":
            return None
        image = Image.new("RGB", (128, 128), (255, 255, 255))
        self._draw(ImageDraw.Draw(image))
        frame: NDArray[np.uint8] = np.asarray(image, dtype=np.uint8).copy()
        return frame


def disc(draw: ImageDraw.ImageDraw, cx: float, cy: float, radius: float,
         color: tuple[int, int, int]) -> None:
    """Fill a disc centred at pixel ``(cx, cy)`` (x right, y down)."""
    draw.ellipse([cx - radius, cy - radius, cx + radius, cy + radius], fill=color)
