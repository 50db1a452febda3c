"""RayVecEnv: an SB3 ``VecEnv`` whose sub-envs live in Ray actors (the ``ray`` extra).

SAC, PPO and DreamerV3 collect across a Ray cluster (or the cores of one machine) with no
other change: the sub-envs are built inside actors from the same ``env_fns`` a
``SubprocVecEnv`` takes, ``envs_per_actor`` per actor, and stepped in parallel. The step
semantics are SB3's ``DummyVecEnv``'s (an ended episode is reset at once;
``info["terminal_observation"]`` holds its last observation and ``TimeLimit.truncated`` says
whether it was cut short).

An actor that dies (its node lost, the process killed) is restarted with fresh envs: the
episodes it held end as *truncated* (``done`` True, ``TimeLimit.truncated`` True, the last
observation seen as ``terminal_observation``, reward 0, ``info["actor_restarted"]`` True),
the event is counted (:attr:`RayVecEnv.actor_restarts`) and logged as a warning, and
training goes on.

Example (needs ``pip install "physlink-gym[ray]"``)::

    import gymnasium as gym
    from stable_baselines3 import SAC
    from physlink_gym.vec import RayVecEnv

    venv = RayVecEnv([lambda: gym.make("Pendulum-v1")] * 8, envs_per_actor=2)
    SAC("MlpPolicy", venv).learn(10_000)
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Callable, Sequence
from typing import Any

import gymnasium as gym
import numpy as np
from stable_baselines3.common.vec_env.base_vec_env import VecEnv, VecEnvIndices, VecEnvStepReturn

from physlink_gym.errors import ConfigurationError
from physlink_gym.vec._actor import EnvGroup

__all__ = ["RayVecEnv"]

_LOG = logging.getLogger("physlink_gym")


def _ray() -> Any:
    try:
        import ray
    except ModuleNotFoundError as exc:
        from physlink_gym import missing_extra

        raise missing_extra(exc, "RayVecEnv") from None
    return ray


class RayVecEnv(VecEnv):
    """Sub-envs in Ray actors behind SB3's ``VecEnv`` API (see the module docstring).

    Args:
        env_fns: One env factory per sub-env, pickled to the actors with cloudpickle: a
            lambda or a function of your script travels by value; a function of a module
            travels by reference, so the workers must be able to import that module.
        envs_per_actor: Sub-envs per actor (the last actor may hold fewer).
        ray_address: Passed to ``ray.init`` when Ray is not initialised yet (None: a local
            Ray on this machine; ``"auto"``: the running cluster).
        actor_options: Ray actor options, e.g. ``{"num_cpus": 1}`` (the default).
        max_restarts: Restarts of dead actors allowed over the env's life before an error.
        start_timeout: Seconds to wait for the actors to start before a clear error (an actor
            that cannot be placed, e.g. more actors than free CPUs, would otherwise wait
            forever).
    """

    def __init__(self, env_fns: Sequence[Callable[[], gym.Env]], *, envs_per_actor: int = 1,
                 ray_address: str | None = None, actor_options: dict[str, Any] | None = None,
                 max_restarts: int = 100, start_timeout: float = 300.0) -> None:
        ray = _ray()
        fns = list(env_fns)
        if not fns or not all(callable(f) for f in fns):
            raise ConfigurationError(got=f"env_fns={env_fns!r}",
                                     expected="a non-empty list of env factories",
                                     fix="pass [lambda: gym.make('Pendulum-v1')] * 8")
        if isinstance(envs_per_actor, bool) or not isinstance(envs_per_actor, int) or (
                envs_per_actor < 1):
            raise ConfigurationError(got=f"envs_per_actor={envs_per_actor!r}",
                                     expected="an int >= 1", fix="pass envs_per_actor=2")
        if not ray.is_initialized():
            ray.init(address=ray_address, ignore_reinit_error=True, log_to_driver=False)
        options = dict(actor_options or {"num_cpus": 1})
        self._remote = ray.remote(**options)(EnvGroup)
        self._groups = [fns[i:i + envs_per_actor] for i in range(0, len(fns), envs_per_actor)]
        self._actors = [self._remote.remote(group) for group in self._groups]
        self._offsets = np.cumsum([0] + [len(g) for g in self._groups])
        self.start_timeout = float(start_timeout)
        spaces = self._wait_started(ray, options)
        obs_space, act_space, render_mode = spaces[0]
        for k, (obs_k, act_k, _) in enumerate(spaces):
            if obs_k != obs_space or act_k != act_space:
                for actor in self._actors:
                    ray.kill(actor)
                raise ConfigurationError(
                    got=f"actor {k}'s envs have spaces {obs_k}, {act_k}",
                    expected=f"the same spaces in every sub-env: {obs_space}, {act_space}",
                    fix="build every sub-env from factories of the same env")
        super().__init__(len(fns), obs_space, act_space)
        self.render_mode = render_mode
        self.max_restarts = int(max_restarts)
        self.actor_restarts = 0
        self._last_obs: list[Any] = [None] * len(fns)
        self._pending: list[Any] = []
        self._actions: Any = None

    def _wait_started(self, ray: Any, options: dict[str, Any]) -> list[Any]:
        refs = [actor.spaces.remote() for actor in self._actors]
        ready, _ = ray.wait(refs, num_returns=len(refs), timeout=self.start_timeout)
        if len(ready) < len(refs):
            free = ray.available_resources().get("CPU", 0.0)
            for actor in self._actors:
                ray.kill(actor)
            self._actors = []
            raise ConfigurationError(
                got=f"{len(refs) - len(ready)} of {len(refs)} Ray actors not started after "
                f"{self.start_timeout:g} s (each asks {options}; the cluster has {free:g} CPUs "
                "free)",
                expected="room on the cluster for every actor",
                fix="hold more envs per actor (envs_per_actor), ask less per actor "
                "(actor_options={'num_cpus': 0.5}), close other RayVecEnvs, or add nodes")
        return list(ray.get(refs))

    # ------------------------------------------------------------------ stepping
    def reset(self) -> Any:
        """Reset every sub-env (seeds and options from ``seed()`` / ``set_options()``)."""
        ray = _ray()
        refs = [actor.reset.remote(self._seeds[lo:hi], self._options[lo:hi])
                for actor, lo, hi in self._spans()]
        results = [r for group in ray.get(refs) for r in group]
        self._reset_seeds()
        self._reset_options()
        self.reset_infos = [info for _, info in results]
        self._last_obs = [obs for obs, _ in results]
        return np.stack(self._last_obs)

    def step_async(self, actions: np.ndarray) -> None:
        """Send each actor its sub-envs' actions."""
        self._actions = actions
        self._pending = [actor.step.remote(list(actions[lo:hi]))
                         for actor, lo, hi in self._spans()]

    def step_wait(self) -> VecEnvStepReturn:
        """Collect the results; an actor that died is restarted and its episodes truncated."""
        ray = _ray()
        results: list[Any] = []
        for k, ref in enumerate(self._pending):
            try:
                results.extend(ray.get(ref))
            except (ray.exceptions.RayActorError, ray.exceptions.WorkerCrashedError) as exc:
                results.extend(self._restart(k, exc))
        self._pending = []
        obs = [r[0] for r in results]
        self._last_obs = obs
        rewards = np.array([r[1] for r in results], np.float32)
        dones = np.array([r[2] for r in results], bool)
        return np.stack(obs), rewards, dones, [r[3] for r in results]

    def _restart(self, k: int, exc: BaseException) -> list[Any]:
        ray = _ray()
        self.actor_restarts += 1
        if self.actor_restarts > self.max_restarts:
            raise ConfigurationError(
                got=f"{self.actor_restarts} restarts of dead Ray actors ({exc})",
                expected=f"at most max_restarts={self.max_restarts}",
                fix="check the cluster's health or the env's memory use; raise max_restarts")
        lo, hi = int(self._offsets[k]), int(self._offsets[k + 1])
        message = (f"physlink_gym: Ray actor {k} (sub-envs {lo}..{hi - 1}) died "
                   f"({type(exc).__name__}); restarted, its episodes end as truncated "
                   f"(restart {self.actor_restarts})")
        _LOG.warning(message)
        warnings.warn(message, RuntimeWarning, stacklevel=3)
        self._actors[k] = self._remote.remote(self._groups[k])
        fresh = ray.get(self._actors[k].reset.remote([None] * (hi - lo), [{}] * (hi - lo)))
        return [(obs, 0.0, True, {"terminal_observation": self._last_obs[lo + i],
                                  "TimeLimit.truncated": True, "actor_restarted": True,
                                  "reset_info": info})
                for i, (obs, info) in enumerate(fresh)]

    def _spans(self) -> list[tuple[Any, int, int]]:
        return [(actor, int(self._offsets[k]), int(self._offsets[k + 1]))
                for k, actor in enumerate(self._actors)]

    # ------------------------------------------------------------------ VecEnv plumbing
    def _local(self, indices: VecEnvIndices) -> list[tuple[int, list[int], list[int]]]:
        """``(actor, local indices, global indices)`` for the requested sub-envs."""
        wanted = self._get_indices(indices)
        by_actor: dict[int, tuple[list[int], list[int]]] = {}
        for i in wanted:
            k = int(np.searchsorted(self._offsets, i, side="right") - 1)
            local, glob = by_actor.setdefault(k, ([], []))
            local.append(i - int(self._offsets[k]))
            glob.append(i)
        return [(k, local, glob) for k, (local, glob) in sorted(by_actor.items())]

    def _gather(self, call: Callable[[Any, list[int]], Any], indices: VecEnvIndices) -> list[Any]:
        ray = _ray()
        parts = self._local(indices)
        values = ray.get([call(self._actors[k], local) for k, local, _ in parts])
        by_index = {g: v for (_, _, glob), vals in zip(parts, values, strict=True)
                    for g, v in zip(glob, vals, strict=True)}
        return [by_index[i] for i in self._get_indices(indices)]

    def get_attr(self, attr_name: str, indices: VecEnvIndices = None) -> list[Any]:
        """An attribute of each requested sub-env (looked up through its wrappers)."""
        return self._gather(lambda a, local: a.get_attr.remote(attr_name, local), indices)

    def set_attr(self, attr_name: str, value: Any, indices: VecEnvIndices = None) -> None:
        """Set an attribute on each requested sub-env."""
        ray = _ray()
        ray.get([self._actors[k].set_attr.remote(attr_name, value, local)
                 for k, local, _ in self._local(indices)])

    def env_method(self, method_name: str, *method_args: Any, indices: VecEnvIndices = None,
                   **method_kwargs: Any) -> list[Any]:
        """Call a method of each requested sub-env, e.g. ``"compliance_report"``."""
        return self._gather(lambda a, local: a.env_method.remote(
            method_name, local, method_args, method_kwargs), indices)

    def env_is_wrapped(self, wrapper_class: type[gym.Wrapper],
                       indices: VecEnvIndices = None) -> list[bool]:
        """Whether each requested sub-env is wrapped in ``wrapper_class``."""
        return self._gather(lambda a, local: a.is_wrapped.remote(wrapper_class, local), indices)

    def get_images(self) -> Sequence[np.ndarray | None]:
        """Each sub-env's ``render()`` (with ``render_mode="rgb_array"``)."""
        ray = _ray()
        return [img for group in ray.get([a.render.remote() for a in self._actors])
                for img in group]

    def close(self) -> None:
        """Close the envs and end the actors."""
        ray = _ray()
        for actor in self._actors:
            try:
                ray.get(actor.close.remote(), timeout=30)
            except (ray.exceptions.RayActorError, ray.exceptions.GetTimeoutError):
                pass
            ray.kill(actor)
        self._actors = []
