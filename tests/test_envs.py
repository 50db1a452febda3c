"""Analytic envs: Gymnasium API conformance, golden steps and exact energy bookkeeping."""

from __future__ import annotations

import pickle
import warnings

import gymnasium as gym
import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env

import physlink_gym.envs as penvs
from physlink_gym.envs.pendulum import pendulum_energy_of, pendulum_step
from physlink_gym.envs.projectile import projectile_energy, projectile_step, projectile_work
from physlink_gym.envs.spring_mass import spring_mass_energy, spring_mass_step, spring_mass_work
from physlink_gym.errors import ConfigurationError, PhysLinkError

IDS = list(penvs.ENV_IDS)


def _rollout(env_id: str, steps: int, seed: int = 0, scale: float = 1.5):
    """(obs, action, next_obs, terminated) tuples under random actions beyond the bounds."""
    env = gym.make(env_id)
    rng = np.random.default_rng(seed)
    obs, _ = env.reset(seed=seed)
    out = []
    for _ in range(steps):
        high = env.action_space.high * scale
        action = rng.uniform(-high, high)
        nxt, _, term, trunc, _ = env.step(action)
        out.append((obs, action, nxt, term))
        obs = nxt
        if term or trunc:
            obs, _ = env.reset()
    return env.unwrapped, out


@pytest.mark.parametrize("env_id", IDS)
def test_check_env_passes_without_api_errors(env_id):
    env = gym.make(env_id, render_mode="rgb_array")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        check_env(env.unwrapped)
    # only the benign "unbounded Box" / "unnormalised action range" advice is allowed
    assert all("infinity" in str(w.message) or "normalized" in str(w.message) for w in caught)
    env.reset(seed=0)
    frame = env.render()
    assert frame.shape == (128, 128, 3) and frame.dtype == np.uint8
    assert (frame != 255).any()  # something was drawn


@pytest.mark.parametrize("env_id", IDS)
def test_registered_under_physlink_namespace(env_id):
    assert env_id.startswith("physlink/") and env_id in gym.registry
    assert gym.registry[env_id].max_episode_steps == 200


@pytest.mark.parametrize("env_id", IDS)
def test_energy_bookkeeping_closes_to_roundoff(env_id):
    env, steps = _rollout(env_id, 400)
    worst = max(
        abs(env.energy(n) - env.energy(o) - env.work(o, a, n)) / max(1.0, abs(env.energy(n)))
        for o, a, n, _ in steps
    )
    assert worst < 1e-12


@pytest.mark.parametrize("env_id", IDS)
def test_energy_balance_detects_tampered_transition(env_id):
    env, steps = _rollout(env_id, 5)
    obs, action, nxt, _ = steps[2]
    tampered = np.array(nxt, dtype=np.float64)
    tampered[-1] += 0.5  # a velocity kick that no force explains
    residual = abs(env.energy(tampered) - env.energy(obs) - env.work(obs, action, tampered))
    assert residual > 1e-3


def test_energy_balance_invariant_passes_on_env_and_fails_on_kick():
    from physlink_gym.invariants.builtin import energy_balance

    env = gym.make("physlink/DampedPendulum-v0")
    u = env.unwrapped
    check = energy_balance(u.energy, u.transition_work, tolerance=1e-9).bind(env)
    obs, _ = env.reset(seed=3)
    for _ in range(100):
        action = np.array([1.7])
        nxt, *_ = env.step(action)
        assert check({"obs": obs, "action": action, "next_obs": nxt}) < 1e-9
        obs = nxt
    kicked = nxt + np.array([0.0, 0.0, 1.0])
    assert check({"obs": obs, "action": action, "next_obs": kicked}) > 1.0


def test_work_uses_the_clipped_action():
    env = gym.make("physlink/SpringMass-v0").unwrapped
    obs, _ = env.reset(seed=0)
    nxt, *_ = env.step(np.array([10.0]))  # clipped to 1.0 N
    assert env.work(obs, [10.0], nxt) == pytest.approx(env.work(obs, [1.0], nxt))
    assert env.energy(nxt) - env.energy(obs) == pytest.approx(env.work(obs, [1.0], nxt), abs=1e-12)


def test_spring_mass_golden_step_and_conservation():
    s1 = spring_mass_step(np.array([1.0, 0.0]), 0.0, m=1.0, k=4.0, c=0.0, dt=0.05)
    np.testing.assert_allclose(s1, [0.9975 / 1.0025, -0.2 / 1.0025], rtol=0, atol=1e-15)
    s = np.array([1.0, 0.0])
    for _ in range(1000):  # undamped, unforced: energy exactly conserved, for all time
        s = spring_mass_step(s, 0.0, m=1.0, k=4.0, c=0.0, dt=0.05)
    assert float(spring_mass_energy(s, m=1.0, k=4.0)) == pytest.approx(2.0, abs=1e-12)


def test_spring_mass_damping_dissipates_exactly_c_dx2_over_dt():
    s0 = np.array([0.3, -0.7])
    s1 = spring_mass_step(s0, 0.0, m=2.0, k=3.0, c=0.5, dt=0.1)
    loss = float(spring_mass_energy(s0, m=2.0, k=3.0) - spring_mass_energy(s1, m=2.0, k=3.0))
    assert loss == pytest.approx(0.5 * (s1[0] - s0[0]) ** 2 / 0.1, rel=1e-12)
    assert float(spring_mass_work(s0, 0.0, s1, c=0.5, dt=0.1)) == pytest.approx(-loss, rel=1e-12)


def test_pendulum_small_angle_period_matches_2pi_sqrt_l_over_g():
    s, dt = np.array([0.01, 0.0]), 0.001
    crossings, prev = [], s[0]
    for i in range(1, 5000):
        s = pendulum_step(s, 0.0, m=1.0, l=1.0, g=9.81, c=0.0, dt=dt)
        if prev > 0 >= s[0]:
            crossings.append(i * dt)
        prev = s[0]
    period = crossings[1] - crossings[0]
    assert period == pytest.approx(2 * np.pi / np.sqrt(9.81), rel=1e-3)


def test_pendulum_undamped_energy_exactly_conserved_even_at_large_steps():
    s = np.array([3.0, 0.0])  # near the top, strongly nonlinear
    e0 = float(pendulum_energy_of(s, m=1.0, l=1.0, g=9.81))
    for _ in range(500):
        s = pendulum_step(s, 0.0, m=1.0, l=1.0, g=9.81, c=0.0, dt=0.2)
    assert float(pendulum_energy_of(s, m=1.0, l=1.0, g=9.81)) == pytest.approx(e0, abs=1e-11)


def test_projectile_drag_free_is_an_exact_parabola():
    s = np.array([0.0, 1.0, 3.0, 4.0])
    for _ in range(10):
        s = projectile_step(s, np.zeros(2), m=1.0, g=9.81, c=0.0, dt=0.1)
    np.testing.assert_allclose(s, [3.0, 1.0 + 4.0 - 0.5 * 9.81, 3.0, 4.0 - 9.81], atol=1e-12)


def test_projectile_drag_dissipates_c_dx3_over_dt2():
    s0 = np.array([0.0, 5.0, 20.0, 0.0])
    s1 = projectile_step(s0, np.zeros(2), m=1.0, g=0.0, c=0.5, dt=0.1)
    assert s1[2] < 20.0 and s1[3] == 0.0
    loss = float(projectile_energy(s0, m=1.0, g=0.0) - projectile_energy(s1, m=1.0, g=0.0))
    assert loss == pytest.approx(0.5 * (s1[0] - s0[0]) ** 3 / 0.01, rel=1e-12)
    assert float(projectile_work(s0, np.zeros(2), s1, c=0.5, dt=0.1)) == pytest.approx(-loss)


def test_projectile_terminates_on_landing_with_energy_identity_intact():
    env, steps = _rollout("physlink/ProjectileDrag-v0", 400)
    landings = [(o, a, n) for o, a, n, term in steps if term]
    assert landings and all(n[1] < 0.0 for _, _, n in landings)
    o, a, n = landings[0]
    assert abs(env.energy(n) - env.energy(o) - env.work(o, a, n)) < 1e-9


@pytest.mark.parametrize(
    ("step", "kwargs", "state", "action"),
    [
        (spring_mass_step, {"m": 1.0, "k": 4.0, "c": 0.1, "dt": 0.05}, (2,), ()),
        (pendulum_step, {"m": 1.0, "l": 1.0, "g": 9.81, "c": 0.05, "dt": 0.05}, (2,), ()),
        (projectile_step, {"m": 1.0, "g": 9.81, "c": 0.05, "dt": 0.02}, (4,), (2,)),
    ],
)
def test_dynamics_vectorise_over_a_batch(step, kwargs, state, action):
    rng = np.random.default_rng(0)
    states = rng.normal(size=(5, *state))
    actions = rng.normal(size=(5, *action))
    batched = step(states, actions, **kwargs)
    single = np.stack([step(s, a, **kwargs) for s, a in zip(states, actions, strict=True)])
    np.testing.assert_allclose(batched, single, rtol=1e-13, atol=1e-13)


def test_make_vec_and_seeded_determinism():
    envs = gym.make_vec("physlink/SpringMass-v0", num_envs=3, vectorization_mode="sync")
    a, _ = envs.reset(seed=7)
    b, _ = envs.reset(seed=7)
    np.testing.assert_array_equal(a, b)
    obs, reward, *_ = envs.step(np.zeros((3, 1)))
    assert obs.shape == (3, 2) and reward.shape == (3,)


def test_reset_from_given_state_and_bad_state_rejected():
    env = gym.make("physlink/DampedPendulum-v0")
    env.reset(options={"state": [1.0, 0.0, 0.0]})  # hanging at rest
    nxt, *_ = env.step(np.zeros(1))
    np.testing.assert_allclose(nxt, [1.0, 0.0, 0.0], atol=1e-15)  # stays put
    with pytest.raises(ConfigurationError) as err:
        env.reset(options={"state": [np.nan, 0.0, 0.0]})
    assert isinstance(err.value, PhysLinkError) and "Fix:" in str(err.value)
    with pytest.raises(ConfigurationError):
        penvs.SpringMassEnv(render_mode="human")


def test_envs_pickle_and_render_none_without_mode():
    env = gym.make("physlink/ProjectileDrag-v0")
    env.reset(seed=0)
    clone = pickle.loads(pickle.dumps(env.unwrapped))
    np.testing.assert_array_equal(clone.step(np.ones(2))[0], env.unwrapped.step(np.ones(2))[0])
    assert env.unwrapped.render() is None
