"""Trajectories from lists of per-step dicts and from/to Minari datasets."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
import pytest

from physlink_gym import Invariant, InvariantWrapper
from physlink_gym.data import Trajectories, record_trajectories
from physlink_gym.errors import ValidationError


def _steps(n: int, end_at: set[int], truncate_at: set[int] = frozenset()) -> list[dict[str, Any]]:
    steps = []
    for t in range(n):
        step = {"obs": [float(t), -float(t)], "action": [0.1 * t], "reward": float(t),
                "terminated": t in end_at, "truncated": t in truncate_at, "cost": 0.5 * t}
        if t in end_at or t in truncate_at or t == n - 1:
            step["next_obs"] = [100.0 + t, 0.0]
        steps.append(step)
    return steps


def test_from_list_builds_entries_episodes_and_extras() -> None:
    data = Trajectories.from_list(_steps(6, end_at={2}, truncate_at={4}))
    # Episodes: steps 0-2 (terminated), 3-4 (truncated), 5 (the list ends).
    assert data.num_episodes == 3 and len(data) == 6 + 3
    assert data.is_first.tolist() == [1, 0, 0, 0, 1, 0, 0, 1, 0]
    assert data.is_terminal.tolist() == [0, 0, 0, 1, 0, 0, 0, 0, 0]
    assert data.truncated.tolist() == [0, 0, 0, 0, 0, 0, 1, 0, 1]
    assert data.obs[:4, 0].tolist() == [0.0, 1.0, 2.0, 102.0]  # next_obs ends the episode
    assert data.obs[4:7, 0].tolist() == [3.0, 4.0, 104.0]
    assert data.reward.tolist() == [0, 0, 1, 2, 0, 3, 4, 0, 5]
    np.testing.assert_allclose(data.action[:, 0], [0, 0, .1, .2, 0, .3, .4, 0, .5], atol=1e-6)
    np.testing.assert_allclose(data.extras["cost"], [0, 0, .5, 1, 0, 1.5, 2, 0, 2.5])
    assert data.valid.all()


@pytest.mark.parametrize(("change", "message"), [
    (lambda s: s[1].pop("reward"), r"steps\[1\]\['reward'\] = missing"),
    (lambda s: s[2].__setitem__("obs", [1.0, 2.0, 3.0]), r"steps\[2\]\['obs'\]"),
    (lambda s: s[0].__setitem__("action", "left"), r"steps\[0\]\['action'\]"),
    (lambda s: s[3].__setitem__("terminated", 0.5), r"steps\[3\]\['terminated'\]"),
    (lambda s: s[2].pop("next_obs"), r"steps\[2\]\['next_obs'\] = missing"),
    (lambda s: s[1].__setitem__("cost", None), None),  # an extra may be absent: 0
])
def test_from_list_names_the_bad_step_and_key(change: Any, message: str | None) -> None:
    steps = _steps(5, end_at={2})
    change(steps)
    if message is None:
        assert Trajectories.from_list(steps).extras["cost"][2] == 0.0
        return
    with pytest.raises(ValidationError, match=message):
        Trajectories.from_list(steps)
    with pytest.raises(ValidationError, match="non-empty list"):
        Trajectories.from_list([])


def test_from_list_equals_recording_the_same_transitions() -> None:
    env = gym.make("Pendulum-v1", max_episode_steps=15)
    recorded = record_trajectories(env, n_episodes=2, seed=3)
    steps = []
    for ep in recorded.episodes():
        for t in range(1, len(ep)):
            steps.append({"obs": ep.obs[t - 1], "action": ep.action[t], "reward": ep.reward[t],
                          "terminated": bool(ep.is_terminal[t]),
                          "truncated": bool(ep.truncated[t]), "next_obs": ep.obs[t]})
    rebuilt = Trajectories.from_list(steps, action_space=env.action_space)
    for name in ("obs", "action", "reward", "is_first", "is_terminal", "is_last", "valid"):
        np.testing.assert_array_equal(getattr(rebuilt, name), getattr(recorded, name))
    assert rebuilt.meta["discrete"] is False


def test_minari_round_trip_is_exact(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("minari")
    monkeypatch.setenv("MINARI_DATASETS_PATH", str(tmp_path))
    flag = Invariant("every_third", lambda t: float(t["step"] % 3 == 0), tolerance=0.5)
    env = InvariantWrapper(gym.make("Pendulum-v1", max_episode_steps=30), [flag])
    data = record_trajectories(env, n_episodes=3, seed=0)
    assert 0 < (~data.valid).sum() < len(data)  # flagged entries travel too
    with pytest.warns(UserWarning):
        dataset = data.to_minari("physlink/test-pendulum-v0", env="Pendulum-v1")
    back = Trajectories.from_minari(dataset)
    for name in ("obs", "action", "reward", "is_first", "is_terminal", "is_last", "valid"):
        np.testing.assert_array_equal(getattr(back, name), getattr(data, name), err_msg=name)
    assert set(back.extras) == set(data.extras)
    for key in data.extras:
        np.testing.assert_array_equal(back.extras[key], data.extras[key])
    reloaded = Trajectories.from_minari("physlink/test-pendulum-v0")  # by id, from disk
    assert len(reloaded) == len(data)


def test_minari_discrete_actions(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("minari")
    monkeypatch.setenv("MINARI_DATASETS_PATH", str(tmp_path))
    data = record_trajectories(gym.make("CartPole-v1"), n_episodes=2, seed=1)
    with pytest.warns(UserWarning):
        dataset = data.to_minari("physlink/test-cartpole-v0", env="CartPole-v1")
    back = Trajectories.from_minari(dataset)
    np.testing.assert_array_equal(back.action, data.action)
    assert back.meta["discrete"] is True and back.meta["n_actions"] == 2


def test_to_minari_without_env_or_spaces(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The recorded env id gives the spaces; data of no registered env gets spaces inferred
    from its arrays; a write Minari refuses leaves no half-made dataset folder behind."""
    minari = pytest.importorskip("minari")
    monkeypatch.setenv("MINARI_DATASETS_PATH", str(tmp_path))
    data = record_trajectories(gym.make("Pendulum-v1", max_episode_steps=10), n_episodes=2,
                               seed=0)
    with pytest.warns(UserWarning):
        by_id = data.to_minari("physlink/by-id-v0")
    assert by_id.spec.action_space == gym.make("Pendulum-v1").action_space
    anonymous = Trajectories(**{k: getattr(data, k) for k in ("obs", "action", "reward",
                                                              "is_first", "is_terminal",
                                                              "is_last", "valid")},
                             meta={"discrete": False})
    with pytest.warns(UserWarning):
        inferred = anonymous.to_minari("physlink/inferred-v0")
    assert inferred.spec.observation_space.shape == (3,)
    back = Trajectories.from_minari("physlink/inferred-v0")
    np.testing.assert_array_equal(back.obs, data.obs)
    np.testing.assert_array_equal(back.action, data.action)
    with pytest.raises(ValidationError, match="nothing was written"):
        data.to_minari("not a valid id")
    with pytest.raises(ValidationError, match="shape"):  # Minari itself would write it
        data.to_minari("physlink/bad-v0", observation_space=gym.spaces.Box(-1, 1, (5,)),
                       action_space=gym.spaces.Box(-1, 1, (1,)))
    assert not (tmp_path / "physlink" / "bad-v0").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["physlink"]
    assert minari.list_local_datasets().keys() >= {"physlink/by-id-v0", "physlink/inferred-v0"}
