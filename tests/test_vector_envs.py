"""The wrapper per sub-env in SB3 and Gymnasium vector envs: infos, masks, reports, workers."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest
from gymnasium.vector import AutoresetMode
from stable_baselines3.common.env_util import make_vec_env
from stable_baselines3.common.vec_env import DummyVecEnv, SubprocVecEnv

from physlink_gym import invariants as inv
from physlink_gym.errors import PhysLinkError
from physlink_gym.invariants import Invariant
from physlink_gym.report import ComplianceReport
from physlink_gym.wrappers import InvariantWrapper, valid_mask

EPISODE = 6


def invariants():
    def boom(t):  # raises on the third step of every episode: an ERROR, never a dead worker
        if t["step"] == 2:
            raise RuntimeError("boom")
        return 0.0

    return [inv.finite(),
            Invariant("spin", fn=lambda t: abs(float(t["next_obs"][2])), tolerance=0.5),
            Invariant("boom", fn=boom, tolerance=0.1, mode="soft")]


def make_wrapped():
    return InvariantWrapper(gym.make("Pendulum-v1", max_episode_steps=EPISODE), invariants())


def expected_valid(obs_next):
    return np.abs(obs_next[:, 2]) <= 0.5


@pytest.mark.filterwarnings("ignore::physlink_gym.wrappers.InvariantWarning")
@pytest.mark.parametrize("vec_cls", [DummyVecEnv, SubprocVecEnv])
def test_sb3_vec_envs(vec_cls):
    # fork keeps the test fast (forkserver re-imports torch in each worker); the env factory is
    # still cloudpickled by SB3, and the reports come back through the worker pipes.
    kwargs = {"start_method": "fork"} if vec_cls is SubprocVecEnv else None
    venv = make_vec_env("Pendulum-v1", n_envs=2, seed=0, vec_env_cls=vec_cls,
                        env_kwargs={"max_episode_steps": EPISODE}, vec_env_kwargs=kwargs,
                        wrapper_class=InvariantWrapper,
                        wrapper_kwargs={"invariants": invariants()})
    try:
        venv.reset()
        n_flagged = 0
        for _ in range(2 * EPISODE):
            obs, _, dones, infos = venv.step(np.array([[2.0], [-2.0]]))
            final = np.array([i["terminal_observation"] if d else o
                              for o, d, i in zip(obs, dones, infos, strict=True)])
            mask = valid_mask(infos)
            assert mask.tolist() == expected_valid(final).tolist()
            n_flagged += int((~mask).sum())
        reports = venv.env_method("compliance_report")
        merged = ComplianceReport.merge(reports)
    finally:
        venv.close()
    assert all(r.steps == 2 * EPISODE and r.episodes == 2 for r in reports)
    assert merged["spin"].violations == merged.invalid_steps == n_flagged > 0
    assert merged["boom"].status == "ERROR" and merged["boom"].errors == 4  # 2 envs x 2 eps
    assert {r["env_index"] for r in merged.violations()} == {0, 1}


@pytest.mark.filterwarnings("ignore::physlink_gym.wrappers.InvariantWarning")
@pytest.mark.parametrize("mode", [AutoresetMode.NEXT_STEP, AutoresetMode.SAME_STEP])
@pytest.mark.parametrize("vec_cls", [gym.vector.SyncVectorEnv, gym.vector.AsyncVectorEnv])
def test_gymnasium_vector_envs(vec_cls, mode):
    envs = vec_cls([make_wrapped, make_wrapped], autoreset_mode=mode)
    try:
        envs.reset(seed=0)
        prev_done = np.zeros(2, bool)
        for _ in range(2 * EPISODE + 1):
            obs, _, te, tr, info = envs.step(np.array([[2.0], [-2.0]], np.float32))
            rec = info.get("physlink")
            if rec is not None:
                assert rec["valid"].dtype == bool and rec["cost"].dtype == np.float64
                assert rec["residuals"]["spin"].dtype == np.float64
                assert rec["violated"]["spin"].dtype == bool
            done = te | tr
            if mode == AutoresetMode.SAME_STEP and done.any():
                truth = expected_valid(np.stack(info["final_obs"][done]))
                assert valid_mask(info, num_envs=2)[done].tolist() == truth.tolist()
            elif mode == AutoresetMode.NEXT_STEP:
                mask = valid_mask(info, num_envs=2)
                assert mask[prev_done].tolist() == [False] * int(prev_done.sum())  # reset steps
                live = ~prev_done
                assert mask[live].tolist() == expected_valid(obs[live]).tolist()
            prev_done = done
        reports = envs.call("compliance_report")
    finally:
        envs.close()
    assert [r.episodes for r in reports] == [2, 2]
    assert all(r["boom"].errors == 2 for r in reports)
    merged = ComplianceReport.merge(reports)
    assert merged["spin"].violations == merged.invalid_steps > 0


def test_valid_mask_formats():
    assert valid_mask({"physlink": {"valid": False}}).tolist() == [False]
    assert valid_mask({}).tolist() == [False]                       # a single info, no record
    assert valid_mask({}, missing=True, num_envs=3).tolist() == [True] * 3
    # Gymnasium >= 1.0 batched dict, env 1 ended (SAME_STEP): its record is in final_info
    batched = {"physlink": {"valid": np.array([True, False])}, "_physlink": np.array([True, False]),
               "final_info": {"physlink": {"valid": np.array([False, True])},
                              "_physlink": np.array([False, True])},
               "_final_info": np.array([False, True])}
    assert valid_mask(batched).tolist() == [True, True]
    # Gymnasium < 1.0: final_info is an object array of single-env info dicts
    legacy = {"physlink": {"valid": np.array([True, True])}, "_physlink": np.array([True, False]),
              "final_info": np.array([None, {"physlink": {"valid": False}}], dtype=object),
              "_final_info": np.array([False, True])}
    assert valid_mask(legacy).tolist() == [True, False]
    with pytest.raises(PhysLinkError, match="info dict"):
        valid_mask(42)
