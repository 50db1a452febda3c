"""The body of one :class:`~physlink_gym.vec.RayVecEnv` actor.

Kept free of torch and SB3 imports: every Ray worker imports this module, and a light import
is a fast actor start (SB3's helpers load only when a method needs them).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import gymnasium as gym

__all__ = ["EnvGroup"]


class EnvGroup:
    """The body of one actor: ``len(env_fns)`` envs stepped in turn, SB3 autoreset semantics."""

    def __init__(self, env_fns: Sequence[Callable[[], gym.Env]]) -> None:
        self.envs = [fn() for fn in env_fns]

    def spaces(self) -> tuple[Any, Any, Any]:
        env = self.envs[0]
        return env.observation_space, env.action_space, getattr(env, "render_mode", None)

    def reset(self, seeds: Sequence[int | None], options: Sequence[dict[str, Any]]) -> list[Any]:
        out = []
        for env, seed, option in zip(self.envs, seeds, options, strict=True):
            obs, info = env.reset(seed=seed, options=option or None)
            out.append((obs, info))
        return out

    def step(self, actions: Sequence[Any]) -> list[Any]:
        out = []
        for env, action in zip(self.envs, actions, strict=True):
            obs, reward, terminated, truncated, info = env.step(action)
            done = bool(terminated or truncated)
            info = dict(info)
            info["TimeLimit.truncated"] = bool(truncated and not terminated)
            if done:
                info["terminal_observation"] = obs
                obs, reset_info = env.reset()
                info["reset_info"] = reset_info
            out.append((obs, float(reward), done, info))
        return out

    def get_attr(self, name: str, local: Sequence[int]) -> list[Any]:
        return [self.envs[i].get_wrapper_attr(name) for i in local]

    def set_attr(self, name: str, value: Any, local: Sequence[int]) -> None:
        for i in local:
            self.envs[i].set_wrapper_attr(name, value)

    def env_method(self, name: str, local: Sequence[int], args: Any, kwargs: Any) -> list[Any]:
        return [self.envs[i].get_wrapper_attr(name)(*args, **kwargs) for i in local]

    def is_wrapped(self, wrapper: type, local: Sequence[int]) -> list[bool]:
        from stable_baselines3.common.env_util import is_wrapped

        return [is_wrapped(self.envs[i], wrapper) for i in local]

    def render(self) -> list[Any]:
        return [env.render() for env in self.envs]

    def close(self) -> None:
        for env in self.envs:
            env.close()
