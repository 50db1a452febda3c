"""Imagination compliance: the world model's decoded imagined transitions scored by invariants."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest
import torch
from stable_baselines3.common.logger import Logger

from physlink_gym import DreamerV3, InvariantWrapper, invariants
from physlink_gym.agents.dreamerv3.imagination import (
    ImaginationCallback,
    actor_imagination,
    open_loop_imagination,
)
from physlink_gym.data import record_trajectories
from physlink_gym.errors import ConfigurationError
from physlink_gym.invariants import Invariant, batch_invariant, register_invariant

SMALL = dict(preset="debug", learning_starts=64, batch_size=4, sequence_length=16,
             train_ratio=64, seed=0)  # fmt: skip


def _checks():
    return [invariants.finite(), invariants.obs_bounds(), invariants.pendulum_energy()]


@pytest.fixture(scope="module")
def trained():
    env = InvariantWrapper(gym.make("Pendulum-v1"), _checks())
    model = DreamerV3("MlpPolicy", env, **SMALL)
    model.learn(160)
    return model, env


def test_which_invariants_qualify_is_a_property_checked_at_construction():
    assert all(inv.transition_only for inv in _checks())
    assert invariants.energy_balance(lambda o: 0.0, lambda t: 0.0).transition_only
    assert batch_invariant("b", lambda b: b["reward"] * 0).transition_only
    assert not invariants.sim_health().transition_only
    assert not Invariant("plain", fn=lambda t: 0.0).transition_only
    with pytest.raises(ConfigurationError, match="transition_only"):
        Invariant("x", fn=lambda t: 0.0, requires=("mujoco",), transition_only=True)
    with pytest.raises(ConfigurationError, match="transition_only"):
        Invariant("x", fn=lambda t: 0.0, transition_only="yes")
    env = InvariantWrapper(gym.make("Pendulum-v1"), [])
    assert register_invariant(env, "r", lambda t: 0.0, 1.0, transition_only=True).transition_only


def test_actor_imagination_decodes_every_valid_start_without_touching_the_rng(trained):
    model, _ = trained
    batch = model.replay_buffer.sample(3, 16, rng=np.random.default_rng(1))
    batch["valid"][0, :5] = False
    state = torch.get_rng_state()
    imagined = actor_imagination(model, batch, seed=3)
    assert torch.equal(state, torch.get_rng_state())
    horizon = model.config.imag_horizon
    starts = int(batch["valid"].sum())
    assert imagined.num_episodes == starts and len(imagined) == starts * (horizon + 1)
    low, high = model.action_space.low, model.action_space.high
    moved = imagined.action[~imagined.is_first]
    assert (moved >= low).all() and (moved <= high).all()
    again = actor_imagination(model, batch, seed=3)
    np.testing.assert_array_equal(again.obs, imagined.obs)
    other = actor_imagination(model, batch, seed=4)
    assert not np.array_equal(other.obs, imagined.obs)


def test_callback_logs_imagination_tags_and_leaves_training_unchanged(tmp_path):
    def run(with_callback):
        env = InvariantWrapper(gym.make("Pendulum-v1"), _checks())
        model = DreamerV3("MlpPolicy", env, **SMALL)
        records = {}
        logger = Logger(None, [])
        original = logger.record
        def record(key, value, exclude=None):
            records[key] = value
            original(key, value, exclude)
        logger.record = record
        model.set_logger(logger)
        callback = ImaginationCallback(every_n_steps=50) if with_callback else None
        model.learn(160, callback=callback)
        return model, records, callback

    plain, _, _ = run(False)
    scored, records, callback = run(True)
    for a, b in zip(plain.policy.parameters(), scored.policy.parameters(), strict=True):
        assert torch.equal(a, b)
    assert 0.0 <= records["imagination/violation_rate/pendulum_energy"] <= 1.0
    assert "imagination/violation_rate/obs_bounds" in records
    assert records["imagination/residual/pendulum_energy"].ndim == 1
    assert records["time/imagination_check_ms"] > 0
    report = callback.last_report
    assert report.steps == 4 * 16 * scored.config.imag_horizon  # every start valid here


def test_callback_without_invariants_is_a_clear_error():
    model = DreamerV3("MlpPolicy", "Pendulum-v1", **SMALL)
    with pytest.raises(ConfigurationError, match="invariants"):
        model.learn(10, callback=ImaginationCallback())


def test_imagination_report_scores_open_loop_predictions(trained):
    model, env = trained
    data = record_trajectories(gym.make("Pendulum-v1"), n_episodes=2, seed=1)
    always = batch_invariant("always", lambda b: np.ones(len(b["reward"])), mode="hard")
    plain = Invariant("needs_sim", fn=lambda t: 0.0)
    report = model.imagination_report(data, [*_checks(), always, plain], steps=30, context=5)
    assert report.steps == 2 * 25 and report.episodes == 2
    assert report["always"].violations == 50
    assert report.statuses["needs_sim"] == "NOT_APPLICABLE"
    assert "transition_only" in report["needs_sim"].not_applicable
    # the same numbers as auditing the open-loop predictions directly
    from physlink_gym import audit

    imagined = open_loop_imagination(model, data, steps=30, context=5, episodes=2)
    _, direct = audit(imagined, _checks(), env=gym.make("Pendulum-v1"))
    for name in ("finite", "obs_bounds", "pendulum_energy"):
        assert report[name].violations == direct[name].violations
    from_env = model.imagination_report(env, steps=30, episodes=1)  # the wrapper's invariants
    assert [i.name for i in from_env.invariants] == ["finite", "obs_bounds", "pendulum_energy"]


def test_triptych_marks_the_imagined_steps_that_violate(trained, tmp_path):
    from physlink_gym.viz import _imagination_marks, learner_actions, open_loop_prediction

    model, _ = trained
    data = record_trajectories(gym.make("Pendulum-v1"), n_steps=40, seed=2)
    obs, actions = data.obs[:20], data.action[:20]
    pred = open_loop_prediction(model, obs, learner_actions(model, actions), context=5)
    always = batch_invariant("always", lambda b: np.ones(len(b["reward"])), mode="hard")
    marks = _imagination_marks(model, pred, actions, 5, [always], data)
    assert marks[:5] == [""] * 5  # observed steps are not imagination
    assert all(m == "imagined step violates: always" for m in marks[5:])
    path = model.visualize(data, tmp_path / "t.gif", steps=20, invariants=[always])
    assert path.stat().st_size > 1000


def test_imagination_report_defaults_to_the_training_envs_invariants(trained):
    """A bare env (or data) names no invariants: those of the model's own wrapped env apply."""
    model, _ = trained
    report = model.imagination_report(gym.make("Pendulum-v1"), steps=20, episodes=1)
    assert [i.name for i in report.invariants] == ["finite", "obs_bounds", "pendulum_energy"]
    bare = DreamerV3("MlpPolicy", "Pendulum-v1", **SMALL)
    with pytest.raises(ConfigurationError, match="invariants"):
        bare.imagination_report(gym.make("Pendulum-v1"), steps=20, episodes=1)
