"""MuJoCo invariants: known answers on tiny MJCF models, normal runs, blow-ups, reward safety."""

from __future__ import annotations

import math
import pickle

import gymnasium as gym
import mujoco
import numpy as np
import pytest

from physlink_gym.errors import ConfigurationError
from physlink_gym.invariants import _mjutil
from physlink_gym.invariants.core import NotApplicableError
from physlink_gym.invariants.mujoco import (
    joint_limits,
    kinematic_consistency,
    momentum,
    mujoco_energy,
    sim_health,
)

G0 = _mjutil.STANDARD_GRAVITY
FACTORIES = [joint_limits, sim_health, kinematic_consistency, mujoco_energy, momentum]

BALL = """
<mujoco><option timestep="0.01" integrator="Euler"/>
  <worldbody>{floor}
    <body name="ball" pos="0 0 {z}"><freejoint/><geom type="sphere" size="0.1" mass="2"/></body>
  </worldbody>
</mujoco>"""

ARM = """
<mujoco><compiler angle="radian"/><option timestep="0.01" integrator="Euler"/>
  <worldbody>
    <body name="upper"><joint name="h" type="hinge" axis="0 1 0" range="-0.5 0.5" limited="true"/>
      <geom type="capsule" fromto="0 0 0 0.3 0 0" size="0.02" mass="1"/>
      <body name="lower" pos="0.3 0 0"><joint name="spin" type="hinge" axis="0 1 0"/>
        <geom type="capsule" fromto="0 0 0 0.3 0 0" size="0.02" mass="1"/></body>
    </body>
    <body name="cart" pos="1 0 0"><joint name="s" type="slide" axis="1 0 0" range="-1 1"
        limited="true"/><geom type="box" size="0.1 0.1 0.1" mass="1"/></body>
  </worldbody>
  <actuator><motor joint="s" gear="1"/></actuator>
</mujoco>"""


class TinyEnv:
    """Stand-in for an unwrapped MujocoEnv: model, data, frame_skip and a plain step."""

    def __init__(self, xml: str, frame_skip: int = 1) -> None:
        self.model = mujoco.MjModel.from_xml_string(xml)
        self.data = mujoco.MjData(self.model)
        self.frame_skip = frame_skip
        mujoco.mj_forward(self.model, self.data)

    @property
    def unwrapped(self) -> TinyEnv:
        return self

    def step(self) -> None:
        for _ in range(self.frame_skip):
            mujoco.mj_step(self.model, self.data)


def ball(z: float = 10.0, floor: bool = False) -> TinyEnv:
    plane = '<geom type="plane" size="5 5 0.1"/>' if floor else ""
    return TinyEnv(BALL.format(z=z, floor=plane))


def start(env, *checks):
    """Bind-time protocol of the wrapper: on_reset hooks after a reset."""
    for c in checks:
        if hasattr(c, "on_reset"):
            c.on_reset(env.unwrapped, None)
    return checks[0] if len(checks) == 1 else list(checks)


def hooked_step(env, checks, action=None, mid_step=None):
    """One step as the wrapper does it (``mid_step`` edits the state just before it)."""
    if mid_step is not None:
        mid_step(env.unwrapped.data)
    if hasattr(env, "action_space"):
        result = env.step(action)
    else:
        env.step()
        result = None
    transition = {"env": env.unwrapped, "cache": {}}
    return [c(transition) for c in checks], result


def run_gym(env_id, factories, steps, seed=0, kick=None, live_forward=False):
    """Random-action rollout; returns residuals (steps × checks), rewards and observations."""
    env = gym.make(env_id)
    checks = [f().bind(env) for f in factories]
    obs, _ = env.reset(seed=seed)
    for c in checks:
        if hasattr(c, "on_reset"):
            c.on_reset(env.unwrapped, obs)
    rng = np.random.default_rng(seed)
    residuals, rewards, observations = [], [], [obs]
    for t in range(steps):
        action = rng.uniform(env.action_space.low, env.action_space.high)
        if kick is not None and t == kick[0]:
            env.unwrapped.data.qvel[:] = kick[1]
        res, (obs, reward, term, trunc, _) = hooked_step(env, checks, action)
        if live_forward:  # what the checks must never do: mj_forward on the live data
            mujoco.mj_forward(env.unwrapped.model, env.unwrapped.data)
        residuals.append(res)
        rewards.append(reward)
        observations.append(obs)
        if term or trunc:
            obs, _ = env.reset()
            for c in checks:
                if hasattr(c, "on_reset"):
                    c.on_reset(env.unwrapped, obs)
    return np.array(residuals, dtype=float).reshape(steps, -1), rewards, observations


# ----------------------------------------------------------------- known answers, tiny models
def test_joint_limits_golden_exceedance_ignores_unlimited_joints():
    env = TinyEnv(ARM)
    check = joint_limits().bind(env)
    q = env.data.qpos  # [h, spin, s]
    q[:] = [0.8, 100.0, -1.25]
    assert check({"env": env}) == pytest.approx(0.3, abs=1e-12)  # h is 0.3 rad past 0.5
    q[:] = [0.2, 100.0, -1.25]
    assert check({"env": env}) == pytest.approx(0.25, abs=1e-12)  # the slide, 0.25 m past -1
    q[:] = [0.5, -7.0, 1.0]
    assert check({"env": env}) == 0.0  # on the stops exactly
    q[0] = np.nan
    assert math.isnan(check({"env": env}))  # NaN never passes


def test_joint_limits_not_applicable_without_limited_joints():
    with pytest.raises(NotApplicableError, match="no limited hinge/slide joint"):
        joint_limits().bind(ball())


def test_sim_health_nan_qvel_counts_warning_and_rewound_time():
    env = ball()
    check = start(env, sim_health().bind(env))
    for _ in range(5):
        assert hooked_step(env, [check])[0] == [0.0]
    env.data.qvel[2] = np.nan  # MuJoCo warns BADQVEL and resets itself inside mj_step
    assert hooked_step(env, [check])[0] == [2.0]  # +1 BADQVEL, +1 time 0.05 -> 0.01
    assert env.data.time == pytest.approx(0.01)


def test_sim_health_bad_ctrl_counts_one():
    env = TinyEnv(ARM)
    check = start(env, sim_health().bind(env))
    env.data.ctrl[0] = np.inf
    assert hooked_step(env, [check])[0] == [1.0]
    assert env.data.warning[mujoco.mjtWarning.mjWARN_BADCTRL].number == 1


def test_sim_health_ignores_warnings_that_are_not_bad_state():
    env = ball()
    check = start(env, sim_health().bind(env))
    warn = mujoco.mjtWarning
    env.data.warning[warn.mjWARN_CONTACTFULL].number += 3  # a capacity warning, not a bad state
    assert hooked_step(env, [check])[0] == [0.0]
    env.data.warning[warn.mjWARN_CONTACTFULL].number += 1
    env.data.warning[warn.mjWARN_BADQACC].number += 2  # with it, a bad-state count of 2
    assert hooked_step(env, [check])[0] == [2.0]


def test_kinematics_exact_for_one_euler_substep_and_flags_teleport():
    env = ball()
    env.data.qvel[:] = [1.0, -2.0, 3.0, 5.0, -4.0, 2.0]  # tumbling: quaternion path
    check = start(env, kinematic_consistency().bind(env))
    for _ in range(20):
        assert hooked_step(env, [check])[0][0] < 1e-12

    def teleport(data):
        data.qpos[0] += 0.7

    assert hooked_step(env, [check], mid_step=teleport)[0][0] == pytest.approx(0.7, abs=1e-9)


def test_kinematics_wraps_hinge_angles():
    env = TinyEnv(ARM)
    env.data.qvel[1] = 3.0
    check = start(env, kinematic_consistency().bind(env))

    def wrap(data):
        data.qpos[1] -= 2 * math.pi  # same physical angle, unwrapped bookkeeping

    assert hooked_step(env, [check], mid_step=wrap)[0][0] < 1e-9


def test_energy_free_fall_residual_is_the_euler_energy_error():
    env = ball()
    check = start(env, mujoco_energy().bind(env))
    h, g = 0.01, 9.81
    # semi-implicit Euler in free fall: ΔE = −½·m·g²·h² per step; E_ref = m·g0 (no actuators)
    expected = 0.5 * g**2 * h**2 / G0
    for _ in range(10):
        assert hooked_step(env, [check])[0][0] == pytest.approx(expected, rel=1e-6)


def test_energy_counts_actuator_and_applied_work_golden():
    xml = """<mujoco><option timestep="0.01" integrator="Euler" gravity="0 0 0"/>
      <worldbody><body><joint name="s" type="slide" axis="1 0 0"/>
        <geom type="box" size="0.1 0.1 0.1" mass="1"/></body></worldbody>
      <actuator><motor joint="s" gear="1"/></actuator></mujoco>"""
    env = TinyEnv(xml)
    check = start(env, mujoco_energy().bind(env))
    env.data.ctrl[0] = 3.0  # motor force: its work is f·Δq exactly
    env.data.qfrc_applied[0] = 0.5
    # Euler: ΔKE = f·Δx − ½·h²·f²/m with f = 3.5 N; E_ref = gear·gain·1 + m·g0
    scale = 1.0 + G0
    expected = 0.5 * 0.01**2 * 3.5**2 / scale
    for _ in range(20):
        kinetic0 = 0.5 * env.data.qvel[0] ** 2
        assert hooked_step(env, [check])[0][0] == pytest.approx(expected, rel=1e-6)
    gain = 0.5 * env.data.qvel[0] ** 2 - kinetic0
    assert gain / scale > 30 * expected  # uncounted work would show up 30× over


def test_energy_blow_up_is_huge_and_nan_is_nan():
    env = ball()
    check = start(env, mujoco_energy().bind(env))

    def blow(data):
        data.qvel[:3] = 1e6

    assert hooked_step(env, [check], mid_step=blow)[0][0] > 1e6
    env.step()
    env.data.qvel[0] = np.nan  # a NaN end state (MuJoCo itself would reset on the next step)
    assert math.isnan(check({"env": env, "cache": {}}))


def test_momentum_free_fall_closes_and_mid_step_kick_has_known_residual():
    env = ball()
    check = start(env, momentum().bind(env))
    for _ in range(10):
        assert hooked_step(env, [check])[0][0] < 1e-9
    env.data.xfrc_applied[1, :3] = [3.0, 0.0, -4.0]  # an applied push is part of the impulse
    assert hooked_step(env, [check])[0][0] < 1e-9

    def kick(data):
        data.qvel[0] += 1.0  # 2 kg·m/s from nowhere, mid-step

    # residual = m·Δv / (m·g0·dt) = 1 / (9.80665 · 0.01)
    assert hooked_step(env, [check], mid_step=kick)[0][0] == pytest.approx(1 / (G0 * 0.01))


@pytest.mark.parametrize("z", [0.1, 0.13])  # resting on the floor; 3 cm above it
def test_momentum_is_zero_in_contact_or_within_clearance(z):
    env = ball(z=z, floor=True)
    check = start(env, momentum().bind(env))

    def kick(data):
        data.qvel[0] += 1.0

    assert hooked_step(env, [check], mid_step=kick)[0] == [0.0]
    far = ball(z=1.0, floor=True)
    check = start(far, momentum().bind(far))
    assert hooked_step(far, [check], mid_step=kick)[0][0] > 10.0


def test_momentum_not_applicable_to_fixed_base():
    xml = ('<mujoco><worldbody><body><joint type="hinge"/><geom size="0.1"/></body>'
           "</worldbody></mujoco>")
    with pytest.raises(NotApplicableError, match="fixed-base"):
        momentum().bind(TinyEnv(xml))


def test_energy_and_momentum_share_one_scratch_evaluation_per_step(monkeypatch):
    calls = []
    original = _mjutil.Scratch.summarize
    monkeypatch.setattr(_mjutil.Scratch, "summarize",
                        lambda self, q, v, full=True: calls.append(full) or original(self, q, v,
                                                                                    full))
    env = ball()
    checks = start(env, mujoco_energy().bind(env), momentum().bind(env))
    for _ in range(10):
        hooked_step(env, checks)
    # two reset-state evaluations (energy's, momentum's first start), then one per step: energy
    # computes the end energies and momentum completes that same evaluation with M·v
    assert len(calls) == 2 + 10 and calls.count(True) == 1


@pytest.mark.parametrize("factory", [sim_health, kinematic_consistency, mujoco_energy, momentum])
def test_missing_on_reset_is_reported_not_guessed(factory):
    env = ball()
    check = factory().bind(env)
    env.step()
    with pytest.raises(ConfigurationError, match="on_reset"):
        check({"env": env, "cache": {}})


@pytest.mark.parametrize("factory", FACTORIES)
def test_not_applicable_on_cartpole(factory):
    env = gym.make("CartPole-v1")
    with pytest.raises(NotApplicableError) as err:
        factory().bind(env)
    assert "CartPoleEnv" in err.value.got and err.value.expected and err.value.fix


def test_bound_checks_and_invariants_pickle():
    env = gym.make("InvertedPendulum-v5")
    for factory in FACTORIES:
        inv = pickle.loads(pickle.dumps(factory()))
        check = pickle.loads(pickle.dumps(inv.bind(env)))
        obs, _ = env.reset(seed=0)
        if hasattr(check, "on_reset"):
            check.on_reset(env.unwrapped, obs)
        res, _ = hooked_step(env, [check], np.zeros(1))
        assert 0.0 <= res[0] <= inv.tolerance


# ----------------------------------------------------------------- Gymnasium MuJoCo envs
@pytest.mark.parametrize("env_id", ["InvertedPendulum-v5", "HalfCheetah-v5"])
def test_normal_operation_passes_default_tolerances(env_id):
    residuals, _, _ = run_gym(env_id, FACTORIES, 300)
    tolerances = np.array([f().tolerance for f in FACTORIES])
    assert np.isfinite(residuals).all()
    assert (residuals <= tolerances).all(), residuals.max(axis=0)
    assert residuals[:, 1].max() == 0.0  # sim_health is exactly quiet


def test_inverted_pendulum_books_close_tightly():
    residuals, _, _ = run_gym("InvertedPendulum-v5", [mujoco_energy, momentum], 200)
    assert residuals[:, 0].max() < 1e-3 and residuals[:, 1].max() < 1e-4


@pytest.mark.parametrize(("value", "env_id"), [(1e6, "HalfCheetah-v5"), (np.nan, "HalfCheetah-v5"),
                                              (1e6, "Ant-v5")])
def test_injected_blow_up_fails_sim_health_on_that_step_only(value, env_id):
    residuals, _, _ = run_gym(env_id, [sim_health], 12, kick=(10, value))
    assert residuals[10, 0] >= 1.0  # MuJoCo warned and reset itself inside mj_step
    assert residuals[:10, 0].max() == 0.0 and residuals[11, 0] == 0.0


def test_unstable_simulation_fails_energy_and_kinematics_before_mujoco_resets():
    env = gym.make("HalfCheetah-v5")
    env.reset(seed=0)
    env.unwrapped.model.opt.timestep *= 10  # a 0.1 s substep: the springs go unstable
    checks = start(env, *(f().bind(env) for f in (sim_health, mujoco_energy,
                                                    kinematic_consistency)))
    flagged = {c.name: None for c in checks}
    rng = np.random.default_rng(0)
    for t in range(6):
        res, _ = hooked_step(env, checks, rng.uniform(-1, 1, 6))
        for c, r, inv in zip(checks, res, (sim_health(), mujoco_energy(),
                                           kinematic_consistency()), strict=True):
            if flagged[c.name] is None and inv.is_violation(r):
                flagged[c.name] = t
    assert flagged["mujoco_energy"] == 0 and flagged["kinematic_consistency"] == 0
    assert flagged["sim_health"] is not None and flagged["sim_health"] > 0


@pytest.mark.parametrize("env_id", ["HalfCheetah-v5", "Ant-v5"])
def test_checks_leave_rewards_and_observations_unchanged(env_id):
    _, bare_rewards, bare_obs = run_gym(env_id, [], 60, seed=1)
    _, rewards, obs = run_gym(env_id, FACTORIES, 60, seed=1)
    assert rewards == bare_rewards
    assert all(np.array_equal(a, b) for a, b in zip(obs, bare_obs, strict=True))
    if env_id == "Ant-v5":  # the test can fail: a live mj_forward changes Ant's trajectory
        _, forward_rewards, _ = run_gym(env_id, [], 60, seed=1, live_forward=True)
        assert forward_rewards != bare_rewards


# ----------------------------------------------------------------- through InvariantWrapper
def test_end_to_end_through_invariant_wrapper():
    from physlink_gym.invariants.builtin import action_bounds, finite
    from physlink_gym.wrappers import InvariantWarning, InvariantWrapper

    env = InvariantWrapper(gym.make("HalfCheetah-v5"),
                           [finite(), action_bounds(), *(f() for f in FACTORIES)])
    env.reset(seed=0)
    env.action_space.seed(0)
    for _ in range(100):
        *_, info = env.step(env.action_space.sample())
        assert info["physlink"]["valid"], info["physlink"]["residuals"]
    clone = pickle.loads(pickle.dumps(env))  # as SubprocVecEnv ships it: checks re-bind
    for _ in range(20):
        *_, info = clone.step(clone.action_space.sample())
        assert info["physlink"]["valid"], info["physlink"]["residuals"]
    env.unwrapped.data.qvel[:] = 1e6  # a blow-up between steps
    *_, info = env.step(env.action_space.sample())
    record = info["physlink"]
    assert not record["valid"] and record["violated"]["sim_health"]
    statuses = env.compliance_report().statuses
    assert statuses["sim_health"] == "FAIL" and statuses["joint_limits"] == "PASS"

    with pytest.warns(InvariantWarning, match="NOT_APPLICABLE"):
        cartpole = InvariantWrapper(gym.make("CartPole-v1"),
                                    [finite(), sim_health(), momentum()])
    statuses = cartpole.compliance_report().statuses
    assert statuses == {"finite": "PASS", "sim_health": "NOT_APPLICABLE",
                        "momentum": "NOT_APPLICABLE"}
