"""Sequence replay: windows, episode boundaries, sanitising of flagged entries, persistence."""

from __future__ import annotations

import zipfile

import numpy as np
import pytest

from physlink_gym.agents.dreamerv3.replay import FIELDS, SequenceReplay
from physlink_gym.errors import CheckpointCorruptError, ConfigurationError, ValidationError


def _fill(rb: SequenceReplay, steps: int, start: int = 0, episode: int = 0, invalid=()) -> None:
    """Add ``steps`` entries per env; obs[0] = step index, obs[1] = env index, obs[2] = 1."""
    n = rb.n_envs
    for t in range(start, start + steps):
        obs = np.stack([np.full(n, t), np.arange(n), np.ones(n)], axis=1).astype(np.float32)
        first = np.full(n, episode > 0 and t % episode == 0)
        valid = np.full(n, t not in invalid)
        if t in invalid:
            obs[:, :] = np.nan
        rb.add(obs, np.full((n, 1), t), np.full(n, 0.5), first, np.zeros(n, bool), valid)


def _check_consecutive(batch: dict[str, np.ndarray]) -> None:
    step, env = batch["obs"][..., 0], batch["obs"][..., 1]
    valid = batch["valid"]
    # One env per window, consecutive steps (compare valid entries only; invalid ones are zeroed).
    for b in range(step.shape[0]):
        v = valid[b]
        assert len(set(env[b][v].tolist())) <= 1
        positions = np.flatnonzero(v)
        assert np.array_equal(np.diff(step[b][v]), np.diff(positions))


def test_construction_is_validated() -> None:
    with pytest.raises(ConfigurationError):
        SequenceReplay(capacity=1, n_envs=2, obs_dim=3, action_dim=1)
    with pytest.raises(ConfigurationError):
        SequenceReplay(capacity=10, n_envs=True, obs_dim=3, action_dim=1)  # type: ignore[arg-type]
    rb = SequenceReplay(capacity=10, n_envs=2, obs_dim=3, action_dim=1)
    with pytest.raises(ValidationError, match="shape"):
        rb.add(np.zeros((2, 4)), np.zeros((2, 1)), np.zeros(2), *(np.zeros(2, bool),) * 3)
    with pytest.raises(ValidationError, match="action"):
        rb.add(np.zeros((2, 3)), np.zeros(2), np.zeros(2), *(np.zeros(2, bool),) * 3)
    assert len(rb) == 0 and not rb.can_sample(1)
    with pytest.raises(ValidationError, match="can_sample"):
        rb.sample(2, 1)


def test_windows_are_consecutive_and_never_cross_the_write_head() -> None:
    rb = SequenceReplay(capacity=2 * 50, n_envs=2, obs_dim=3, action_dim=1, seed=1)
    _fill(rb, 130)  # wraps 2.6 times: oldest kept step is 80, newest 129
    assert len(rb) == 100 and rb.can_sample(50) and not rb.can_sample(51)
    batch = rb.sample(512, 10)
    _check_consecutive(batch)
    steps = batch["obs"][..., 0]
    assert steps.min() >= 80 and steps.max() <= 129
    # Uniform over the 41 start positions of each env: both extremes appear.
    assert {80, 120} <= set(steps[:, 0].tolist())
    assert set(batch["obs"][:, 0, 1].tolist()) == {0.0, 1.0}
    full = rb.sample(8, 50)  # the only window: the whole ring, in order
    assert np.array_equal(full["obs"][:, :, 0], np.tile(np.arange(80, 130), (8, 1)))


def test_sample_shapes_dtypes_and_episode_starts() -> None:
    rb = SequenceReplay(capacity=300, n_envs=3, obs_dim=3, action_dim=1, seed=0)
    _fill(rb, 100, episode=7)
    batch = rb.sample(16, 20)
    assert set(batch) == set(FIELDS)
    assert batch["obs"].shape == (16, 20, 3) and batch["obs"].dtype == np.float32
    assert batch["action"].shape == (16, 20, 1) and batch["reward"].shape == (16, 20)
    for key in ("is_first", "is_terminal", "valid"):
        assert batch[key].dtype == bool and batch[key].shape == (16, 20)
    steps = batch["obs"][..., 0]
    # The replay marks episode starts only; whether a window starts afresh is the learner's
    # choice (reset_window_start), so a window starting mid-episode keeps is_first False.
    assert np.array_equal(batch["is_first"], steps % 7 == 0)
    assert not batch["is_first"][:, 0].all()
    assert batch["valid"].all()


def test_invalid_entries_are_zeroed_and_cut_the_stream() -> None:
    bad = {10, 11, 25}
    rb = SequenceReplay(capacity=40, n_envs=1, obs_dim=3, action_dim=1, seed=0)
    _fill(rb, 40, invalid=bad)
    assert not rb.valid[0, sorted(bad)].any()
    batch = rb.sample(256, 40)
    assert np.isfinite(batch["obs"]).all()
    obs, first, valid = batch["obs"], batch["is_first"], batch["valid"]
    for t in range(40):
        if t in bad:
            assert not valid[:, t].any() and first[:, t].all()
            assert (obs[:, t] == 0).all() and (batch["action"][:, t] == 0).all()
            assert (batch["reward"][:, t] == 0).all()
        elif t - 1 in bad:
            assert first[:, t].all() and valid[:, t].all()
        elif t > 0:
            assert not first[:, t].any()


def test_non_finite_data_is_stored_as_invalid() -> None:
    rb = SequenceReplay(capacity=8, n_envs=2, obs_dim=2, action_dim=1, seed=0)
    for t in range(4):
        reward = np.array([np.inf if t == 3 else 0.0, 0.0])
        rb.add(np.zeros((2, 2)), np.zeros((2, 1)), reward, np.zeros(2), np.zeros(2), np.ones(2))
    assert rb.valid[0].tolist() == [True, True, True, False] and rb.valid[1].all()
    batch = rb.sample(64, 4)
    assert np.isfinite(batch["reward"]).all() and not batch["valid"][:, 3].all()
    assert batch["valid"][:, :3].all()


def test_sampling_is_weighted_by_env_counts() -> None:
    rb = SequenceReplay(capacity=2000, n_envs=2, obs_dim=3, action_dim=1, seed=3)
    for env, n in ((0, 1000), (1, 100)):
        obs = np.zeros((n, 3), np.float32)
        obs[:, 1] = env
        rb.add_entries(
            {"obs": obs, "action": np.zeros((n, 1)), "reward": np.zeros(n),
             "is_first": np.arange(n) == 0, "is_terminal": np.zeros(n, bool)},
            env_index=env,
        )  # fmt: skip
    assert len(rb) == 1100
    share = (rb.sample(4000, 1)["obs"][:, 0, 1] == 1).mean()
    assert share == pytest.approx(100 / 1100, abs=0.025)
    # Windows longer than env 1's stream come from env 0 only.
    assert (rb.sample(200, 101)["obs"][..., 1] == 0).all()


def test_add_entries_wraps_and_validates() -> None:
    rb = SequenceReplay(capacity=10, n_envs=1, obs_dim=1, action_dim=2, seed=0)
    n = 25
    entries = {
        "obs": np.arange(n, dtype=np.float32)[:, None], "action": np.zeros((n, 2)),
        "reward": np.arange(n), "is_first": np.arange(n) % 5 == 0,
        "is_terminal": np.zeros(n, bool), "valid": np.ones(n, bool), "is_last": np.zeros(n),
    }  # fmt: skip
    rb.add_entries(entries)
    assert len(rb) == 10
    assert rb.sample(3, 10)["obs"][0, :, 0].tolist() == list(range(15, 25))
    with pytest.raises(ValidationError):
        rb.add_entries({**entries, "reward": np.zeros(n - 1)})
    with pytest.raises(ValidationError):
        rb.add_entries(entries, env_index=1)
    with pytest.raises(ValidationError, match="is_terminal"):
        rb.add_entries({k: v for k, v in entries.items() if k != "is_terminal"})


def test_state_dict_round_trip_reproduces_future_samples() -> None:
    rb = SequenceReplay(capacity=60, n_envs=3, obs_dim=3, action_dim=1, seed=7)
    _fill(rb, 15, episode=4, invalid={5})
    rb.sample(4, 5)  # advance the generator
    clone = SequenceReplay(capacity=60, n_envs=3, obs_dim=3, action_dim=1, seed=99)
    clone.load_state_dict(rb.state_dict())
    assert len(clone) == len(rb)
    for _ in range(3):
        a, b = rb.sample(8, 6), clone.sample(8, 6)
        for key in FIELDS:
            assert np.array_equal(a[key], b[key])
    _fill(rb, 20, start=15)  # writing continues at the same place, wrapping identically
    _fill(clone, 20, start=15)
    assert np.array_equal(rb.sample(8, 20)["obs"], clone.sample(8, 20)["obs"])
    with pytest.raises(ValidationError):
        SequenceReplay(capacity=60, n_envs=2, obs_dim=3, action_dim=1).load_state_dict(
            rb.state_dict()
        )


def test_save_load_npz_round_trip(tmp_path) -> None:
    rb = SequenceReplay(capacity=40, n_envs=2, obs_dim=3, action_dim=1, seed=5)
    _fill(rb, 13, episode=5, invalid={2})
    path = tmp_path / "replay_buffer.pkl"  # SB3's CheckpointCallback uses this suffix
    assert rb.save(path) == path
    assert [p.name for p in tmp_path.iterdir()] == ["replay_buffer.pkl"]
    with np.load(path, allow_pickle=False) as data:  # plain npz, no pickle anywhere
        assert data["obs"].shape == (2, 13, 3)  # only the filled part is written
        assert int(data["count"].sum()) == 26
    loaded = SequenceReplay.load(path)
    assert (loaded.capacity, loaded.n_envs, loaded.obs_dim, loaded.action_dim) == (40, 2, 3, 1)
    for key in FIELDS:
        assert np.array_equal(getattr(loaded, key), getattr(rb, key), equal_nan=True)
    a, b = rb.sample(16, 7), loaded.sample(16, 7)
    assert all(np.array_equal(a[k], b[k]) for k in FIELDS)


def test_load_rejects_damaged_files(tmp_path) -> None:
    rb = SequenceReplay(capacity=40, n_envs=2, obs_dim=3, action_dim=1, seed=5)
    _fill(rb, 13)
    good = tmp_path / "good.npz"
    rb.save(good)
    raw = good.read_bytes()
    truncated = tmp_path / "truncated.npz"
    truncated.write_bytes(raw[: len(raw) // 2])
    garbage = tmp_path / "garbage.npz"
    garbage.write_bytes(b"not a zip at all")
    no_obs = tmp_path / "no_obs.npz"
    with zipfile.ZipFile(good) as src, zipfile.ZipFile(no_obs, "w") as dst:
        for name in src.namelist():
            if name != "obs.npy":
                dst.writestr(name, src.read(name))
    for path in (truncated, garbage, no_obs, tmp_path / "missing.npz"):
        with pytest.raises(CheckpointCorruptError):
            SequenceReplay.load(path)
