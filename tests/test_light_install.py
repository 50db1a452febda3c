"""The light install: the wrapper, invariants, reports, trajectories and envs need no agent."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

SCRIPT = textwrap.dedent(
    """
    import importlib.abc, sys
    BLOCKED = {"torch", "stable_baselines3", "matplotlib", "safetensors", "tensorboard",
               "tqdm", "rich"}

    class Block(importlib.abc.MetaPathFinder):  # as if these were not installed
        def find_spec(self, name, path, target=None):
            if name.split(".")[0] in BLOCKED:
                raise ModuleNotFoundError(f"No module named {name!r}", name=name)
            return None

    sys.meta_path.insert(0, Block())
    import gymnasium as gym
    import physlink_gym
    import physlink_gym.envs
    from physlink_gym import ComplianceReport, InvariantWrapper, invariants, valid_mask
    from physlink_gym.data import Trajectories, record_trajectories
    from physlink_gym.errors import ConfigurationError

    env = InvariantWrapper(gym.make("Pendulum-v1"), [invariants.finite(),
                           invariants.action_bounds(), invariants.pendulum_energy()])
    env.reset(seed=0)
    for _ in range(20):
        *_, info = env.step(env.action_space.sample())
    assert valid_mask(info).tolist() == [True]
    report = env.compliance_report()
    report.export(sys.argv[1] + "/report.json")
    assert ComplianceReport.from_json(sys.argv[1] + "/report.json").steps == 20
    frames = InvariantWrapper(gym.make("physlink/SpringMass-v0", render_mode="rgb_array"),
                              [invariants.finite()])
    frames.reset(seed=0)
    frames.step(frames.action_space.sample())
    assert frames.render().shape == (128, 128, 3)
    data = record_trajectories(env, n_steps=25, seed=0)
    data.save(sys.argv[1] + "/t.npz")
    assert len(Trajectories.load(sys.argv[1] + "/t.npz")) == len(data)
    for missing in ("DreamerV3",):
        try:
            getattr(physlink_gym, missing)
        except ConfigurationError as exc:
            assert "physlink-gym[agent]" in str(exc), exc
        else:
            raise AssertionError("DreamerV3 imported without torch")
    try:
        report.plot()
    except ConfigurationError as exc:
        assert "physlink-gym[viz]" in str(exc), exc
    else:
        raise AssertionError("plot() without matplotlib")
    assert not [m for m in sys.modules if m.split(".")[0] in BLOCKED]
    print("light install OK")
    """
)


def test_wrapper_invariants_reports_and_envs_need_no_agent_extra(tmp_path: Path) -> None:
    out = subprocess.run([sys.executable, "-c", SCRIPT, str(tmp_path)], capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "light install OK" in out.stdout
