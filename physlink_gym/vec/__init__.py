"""Many envs at once: batched checks for Gymnasium vector envs, and sub-envs in Ray actors.

:class:`BatchedInvariantWrapper` needs only the base install; :class:`RayVecEnv` needs the
``ray`` extra and loads lazily.
"""

from typing import Any

from physlink_gym.vec.batched import BatchedInvariantWrapper

__all__ = ["BatchedInvariantWrapper", "RayVecEnv"]


def __getattr__(name: str) -> Any:
    if name == "RayVecEnv":
        from physlink_gym.vec.ray_env import RayVecEnv

        return RayVecEnv
    raise AttributeError(f"module 'physlink_gym.vec' has no attribute {name!r}")
