"""Dict observations of vectors and scalars (MultiInputPolicy): the keys side by side."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest
import torch
from gymnasium import spaces
from stable_baselines3.common.evaluation import evaluate_policy

from physlink_gym import DreamerV3
from physlink_gym.agents.dreamerv3.persistence import space_from_json, space_to_json
from physlink_gym.errors import ConfigurationError, PhysLinkError

TINY = dict(preset="debug", learning_starts=30, batch_size=2, sequence_length=8,
            train_ratio=16, seed=0)


class Goal(gym.Env):
    """A point that moves towards a goal: state, goal and the step count as Dict keys."""

    def __init__(self) -> None:
        self.observation_space = spaces.Dict({
            "state": spaces.Box(-5, 5, (3,), np.float64),
            "goal": spaces.Box(-1, 1, (2,), np.float32),
            "t": spaces.Box(0, 100, (), np.float32)})
        self.action_space = spaces.Box(-1, 1, (2,), np.float32)

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.k, self.s = 0, self.np_random.normal(size=3)
        self.g = self.np_random.uniform(-1, 1, 2).astype(np.float32)
        return self._obs(), {}

    def _obs(self):
        return {"state": self.s.copy(), "goal": self.g.copy(), "t": np.float32(self.k)}

    def step(self, action):
        self.k += 1
        self.s[:2] += 0.1 * np.asarray(action)
        return self._obs(), -float(np.linalg.norm(self.s[:2] - self.g)), False, self.k >= 12, {}


def test_a_dict_env_learns_exactly_as_its_flattened_twin() -> None:
    """The keys go side by side in the order FlattenObservation uses: the same seed gives the
    same replay and the same weights, bit for bit."""
    as_dict = DreamerV3("MultiInputPolicy", Goal(), **TINY).learn(60)
    flat = DreamerV3("MlpPolicy", gym.wrappers.FlattenObservation(Goal()), **TINY).learn(60)
    assert as_dict.policy.obs_dim == flat.policy.obs_dim == 6 and as_dict._n_updates > 0
    for key, value in flat.replay_buffer.state_dict().items():
        np.testing.assert_array_equal(as_dict.replay_buffer.state_dict()[key], value,
                                      err_msg=key)
    for (name, a), b in zip(as_dict.policy.state_dict().items(),
                            flat.policy.state_dict().values(), strict=True):
        assert torch.equal(a, b), name


def test_predict_save_load_evaluate_and_resume(tmp_path) -> None:
    model = DreamerV3("MultiInputPolicy", Goal(), **TINY).learn(40)
    obs, _ = Goal().reset(seed=1)
    action, state = model.predict(obs, deterministic=True)
    assert action.shape == (2,) and state[0].shape[0] == 1
    batch = {k: np.stack([v, v]) for k, v in obs.items()}  # a VecEnv's dict of [n, ...]
    actions, _ = model.predict(batch, deterministic=True)
    assert actions.shape == (2, 2)  # a batch of two: the same action up to rounding
    np.testing.assert_allclose(actions[0], action, rtol=1e-5, atol=1e-7)
    model.save(tmp_path / "m")
    model.save_replay_buffer(tmp_path / "r.npz")
    loaded = DreamerV3.load(tmp_path / "m", env=Goal())
    assert loaded.observation_space == model.observation_space
    np.testing.assert_array_equal(loaded.predict(obs, deterministic=True)[0], action)
    assert np.isfinite(evaluate_policy(loaded, Goal(), n_eval_episodes=2)[0])
    loaded.load_replay_buffer(tmp_path / "r.npz")
    loaded.learn(20, reset_num_timesteps=False)
    assert loaded.num_timesteps == 60
    with pytest.raises(PhysLinkError, match="without \\['goal'\\]"):
        model.predict({"state": obs["state"], "t": obs["t"]})


def test_a_key_that_is_not_a_vector_is_refused_by_name() -> None:
    class WithImage(Goal):
        def __init__(self) -> None:
            super().__init__()
            self.observation_space = spaces.Dict({
                **self.observation_space.spaces,
                "camera": spaces.Box(0, 255, (8, 8, 3), np.uint8)})

    with pytest.raises(ConfigurationError, match="'camera'") as info:
        DreamerV3("MultiInputPolicy", WithImage(), preset="debug")
    assert "FilterObservation" in str(info.value)


def test_dict_spaces_round_trip_through_json_and_bad_ones_are_refused() -> None:
    space = Goal().observation_space
    assert space_from_json(space_to_json(space)) == space
    for bad in ({"type": "Dict", "spaces": []},
                {"type": "Dict", "spaces": [["a", {"type": "Discrete", "n": 2}]]},
                {"type": "Dict", "spaces": [["a", space_to_json(space)]]},  # nested Dict
                {"type": "Dict", "spaces": [["a", {"type": "Box", "low": [[0]], "high": [[1]],
                                                   "shape": [1, 1], "dtype": "float32"}]]},
                {"type": "Box", "low": 0.0, "high": 1.0, "shape": [], "dtype": "float32"}):
        with pytest.raises(ConfigurationError):
            space_from_json(bad)


def test_vecnormalize_of_a_dict_env_stores_raw_observations() -> None:
    from stable_baselines3.common.vec_env import DummyVecEnv, VecNormalize

    venv = VecNormalize(DummyVecEnv([Goal, Goal]))
    model = DreamerV3("MultiInputPolicy", venv, **TINY).learn(60)
    state = model.replay_buffer.state_dict()
    obs = state["obs"][:, : int(state["count"].min())]  # [envs, steps, 6]: goal, state, t
    steps = obs[..., 5]
    assert steps.max() == 12 and set(np.unique(steps)) <= set(range(13))  # raw counts
    assert np.isfinite(evaluate_policy(model, venv, n_eval_episodes=2)[0])


def test_recorded_dict_trajectories_fit_a_dict_model() -> None:
    from physlink_gym.data import record_trajectories

    model = DreamerV3("MultiInputPolicy", Goal(), **TINY)
    data = record_trajectories(Goal(), model, n_episodes=2, seed=0)
    flat = record_trajectories(gym.wrappers.FlattenObservation(Goal()), n_episodes=2, seed=0)
    assert data.obs.shape == (2 * 13, 6)
    np.testing.assert_array_equal(data.obs[0], flat.obs[0])  # the same layout as flattening
    model.fit(data, gradient_steps=2)
    assert model._n_updates == 2


class Robot(gym.Env):
    """State, goal and a camera image as Dict keys; ``fault`` writes one value into a key."""

    def __init__(self, fault=None) -> None:
        self.observation_space = spaces.Dict({
            "state": spaces.Box(-1, 1, (3,), np.float32),
            "goal": spaces.Box(-1, 1, (2,), np.float32),
            "camera": spaces.Box(0, 255, (4, 4, 3), np.uint8)})
        self.action_space = spaces.Box(-1, 1, (2,), np.float32)
        self.fault = fault

    def _obs(self):
        return {k: np.zeros(v.shape, v.dtype) for k, v in self.observation_space.spaces.items()}

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        return self._obs(), {}

    def step(self, action):
        obs = self._obs()
        if self.fault:
            obs[self.fault[0]][0] = self.fault[1]
        return obs, 0.0, False, False, {}


FAULTS = [None, ("goal", 1.5), ("state", -3.0), ("state", np.nan)]
# residuals of finite, obs_bounds (every Box key) and obs_bounds(key="state"), by hand
EXPECTED = [(0.0, 0.0, 0.0), (0.0, 0.5, 0.0), (0.0, 2.0, 2.0), (1.0, np.nan, np.nan)]


def _checks():
    from physlink_gym import invariants

    return [invariants.finite(), invariants.obs_bounds(),
            invariants.obs_bounds(key="state", name="state_bounds")]


@pytest.mark.parametrize(("fault", "expected"), list(zip(FAULTS, EXPECTED, strict=True)))
def test_invariants_check_every_key_or_the_one_named(fault, expected) -> None:
    from physlink_gym import InvariantWrapper

    env = InvariantWrapper(Robot(fault), _checks())
    env.reset(seed=0)
    record = env.step(np.zeros(2, np.float32))[4]["physlink"]
    got = tuple(record["residuals"][k] for k in ("finite", "obs_bounds", "state_bounds"))
    np.testing.assert_array_equal(got, expected)
    assert record["valid"] is (fault is None)


def test_the_batched_wrapper_checks_dict_observations_alike() -> None:
    from physlink_gym.vec import BatchedInvariantWrapper

    venv = gym.vector.SyncVectorEnv([lambda f=f: Robot(f) for f in FAULTS])
    env = BatchedInvariantWrapper(venv, _checks())
    env.reset(seed=0)
    record = env.step(np.zeros((len(FAULTS), 2), np.float32))[4]["physlink"]
    for k, name in enumerate(("finite", "obs_bounds", "state_bounds")):
        np.testing.assert_array_equal(record["residuals"][name], [e[k] for e in EXPECTED])
    np.testing.assert_array_equal(record["valid"], [f is None for f in FAULTS])


def test_a_key_that_is_not_there_is_not_applicable() -> None:
    from physlink_gym import invariants
    from physlink_gym.invariants import NotApplicableError

    with pytest.raises(NotApplicableError, match="'arm'"):
        invariants.obs_bounds(key="arm").bind(Robot())
    with pytest.raises(NotApplicableError, match="Dict"):
        invariants.obs_bounds(key="state").bind(gym.make("Pendulum-v1"))


def test_mlp_keys_choose_the_keys_and_leave_an_image_out() -> None:
    """policy_kwargs={"mlp_keys": ...} (reference: re.match on each key) reads only those
    keys: a Dict env with a camera learns exactly as its filtered and flattened twin."""
    class WithCamera(Goal):
        def __init__(self) -> None:
            super().__init__()
            self.observation_space = spaces.Dict({
                **self.observation_space.spaces,
                "camera": spaces.Box(0, 255, (8, 8, 3), np.uint8)})

        def _obs(self):
            return {**super()._obs(), "camera": np.full((8, 8, 3), self.k, np.uint8)}

    keys = "^(goal|state)$"
    chosen = DreamerV3("MultiInputPolicy", WithCamera(), policy_kwargs={"mlp_keys": keys},
                       **TINY).learn(60)
    twin_env = gym.wrappers.FlattenObservation(
        gym.wrappers.FilterObservation(WithCamera(), ["goal", "state"]))
    twin = DreamerV3("MlpPolicy", twin_env, **TINY).learn(60)
    assert chosen.policy.obs_keys == ("goal", "state") and chosen.policy.obs_dim == 5
    for (name, a), b in zip(chosen.policy.state_dict().items(),
                            twin.policy.state_dict().values(), strict=True):
        assert torch.equal(a, b), name
    with pytest.raises(ConfigurationError, match="mlp_keys"):
        DreamerV3("MultiInputPolicy", WithCamera(), policy_kwargs={"mlp_keys": "^nothing$"},
                  preset="debug")
    with pytest.raises(ConfigurationError, match="mlp_keys"):
        DreamerV3("MultiInputPolicy", WithCamera(), policy_kwargs={"mlp_keys": "(["},
                  preset="debug")
