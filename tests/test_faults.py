"""Fault suite: bad files, bad settings, misbehaving envs and invariants, bad command lines.

Every case ends in a counted violation, a skipped update or a clear PhysLinkError (Got /
Expected / Fix), never a raw exception from deep inside, a hang, a silent pass or lost data.
The fuzz tests at the end mutate valid files at random (a few dozen cases here; thousands with
``PHYSLINK_FUZZ_EXAMPLES=5000 python -m pytest -m slow tests/test_faults.py``).
"""

from __future__ import annotations

import json
import os
import pickle
import zipfile
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from physlink_gym import DreamerV3, Invariant, InvariantWrapper, PhysLinkError, invariants
from physlink_gym.agents.dreamerv3.replay import SequenceReplay
from physlink_gym.checkpoint import atomic_write
from physlink_gym.cli import main
from physlink_gym.data import Trajectories
from physlink_gym.errors import (
    CheckpointCorruptError,
    ConfigurationError,
    WriteError,
)
from physlink_gym.wrappers import ResetNeededError, StepAPIError, valid_mask

TINY = dict(preset="debug", learning_starts=10, batch_size=2, sequence_length=8,
            train_ratio=16, seed=0, buffer_size=4096)
FUZZ_EXAMPLES = int(os.environ.get("PHYSLINK_FUZZ_EXAMPLES", "5000"))


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A valid checkpoint (with an open env stream and optimizer state)."""
    path = tmp_path_factory.mktemp("faults") / "model.zip"
    model = DreamerV3("MlpPolicy", "Pendulum-v1", **TINY)
    model.learn(40)
    model.save(path)
    return path


def _rewrite(src: Path, dst: Path, *, meta: Any = None, tensors: bytes | None = None,
             extra: dict[str, bytes] | None = None, compress: int = zipfile.ZIP_STORED) -> Path:
    with zipfile.ZipFile(src) as zf:
        meta_bytes, tensor_bytes = zf.read("metadata.json"), zf.read("tensors.safetensors")
    if meta is not None:
        meta_bytes = json.dumps(meta).encode() if not isinstance(meta, bytes) else meta
    with zipfile.ZipFile(dst, "w", compression=compress) as zf:
        zf.writestr("metadata.json", meta_bytes)
        zf.writestr("tensors.safetensors", tensors if tensors is not None else tensor_bytes)
        for name, data in (extra or {}).items():
            zf.writestr(name, data)
    return dst


def _meta(path: Path) -> dict[str, Any]:
    with zipfile.ZipFile(path) as zf:
        meta: dict[str, Any] = json.loads(zf.read("metadata.json"))
    return meta


def _set(tree: dict[str, Any], dotted: str, value: Any) -> dict[str, Any]:
    node = tree
    *parents, last = dotted.split(".")
    for key in parents:
        node = node[key]
    node[last] = value
    return tree


# -- 1. checkpoint metadata of the wrong type or shape -------------------------------------------

METADATA_FAULTS = [
    ("data", [1, 2]), ("observation_space", "Box"), ("action_space", None),
    ("data.seed", "abc"), ("data.num_timesteps", -5), ("data.n_envs", 0),
    ("data.learning_rate", "fast"), ("data.config_overrides", {"lr": "x"}),
    ("data.config_overrides", {"deter": -1}), ("data.verbose", 1.5),
    ("data.tensorboard_log", 3), ("data.buffer_size", True), ("data.some_list", [1]),
    ("observation_space.dtype", "object"), ("observation_space.shape", [3, "x"]),
    ("action_space.type", "MultiDiscrete"), ("class", ["DreamerV3"]), ("policy_class", 7),
    ("config", "big"), ("format_version", 99),
]


@pytest.mark.parametrize(("field", "value"), METADATA_FAULTS)
def test_metadata_of_the_wrong_type_is_refused(ckpt: Path, tmp_path: Path, field: str,
                                               value: Any) -> None:
    bad = _rewrite(ckpt, tmp_path / "bad.zip", meta=_set(_meta(ckpt), field, value))
    with pytest.raises(PhysLinkError) as info:
        DreamerV3.load(bad)
    assert "Got:" in str(info.value) and "Fix:" in str(info.value)


@pytest.mark.parametrize(("key", "value"), [
    ("_setup_model", 1), ("env", "Pendulum-v1"), ("policy", None), ("log_folder", "/tmp/x"),
    ("__class__", "str"), ("_update_credit", 7.5), ("_current_progress_remaining", 3.0),
    ("sde_sample_freq", -9), ("_warned_no_update", 1), ("start_time", -1.0),
])
def test_metadata_sets_only_the_fields_save_writes(ckpt: Path, tmp_path: Path, key: str,
                                                   value: Any) -> None:
    """A key save() never writes, or one out of its type or range, is refused by name; the
    model is never built with it (it would replace a method or become an attribute)."""
    meta = _meta(ckpt)
    meta["data"][key] = value
    bad = _rewrite(ckpt, tmp_path / "bad.zip", meta=meta)
    with pytest.raises(CheckpointCorruptError, match=key):
        DreamerV3.load(bad)


def test_save_writes_only_the_fields_load_reads(tmp_path: Path) -> None:
    model = DreamerV3("MlpPolicy", "Pendulum-v1", **TINY)
    model.my_note = "kept in memory only"  # type: ignore[attr-defined]
    model.save(tmp_path / "m.zip")
    stored = set(_meta(tmp_path / "m.zip")["data"])
    from physlink_gym.agents.dreamerv3.checkpoint_checks import DATA_KEYS

    assert "my_note" not in stored and stored <= DATA_KEYS
    assert {"num_timesteps", "seed", "preset", "config_overrides"} <= stored
    with pytest.raises(ConfigurationError, match="my_note"):
        model.save(tmp_path / "m2.zip", include=["my_note"])
    assert not (tmp_path / "m2.zip").exists()


def _params_tree(meta: dict[str, Any], key: str) -> Any:
    return next(v for k, v in meta["params"]["__dict__"] if k == key)


def test_deeply_nested_params_are_refused_without_recursion(ckpt: Path, tmp_path: Path) -> None:
    meta = _meta(ckpt)
    nested: Any = 1
    for _ in range(600):
        nested = [nested]
    meta["params"]["__dict__"].append(["__resume__", nested])
    with pytest.raises(CheckpointCorruptError, match="nested"):
        DreamerV3.load(_rewrite(ckpt, tmp_path / "deep.zip", meta=meta))


def test_an_unknown_parameter_group_is_refused(ckpt: Path, tmp_path: Path) -> None:
    meta = _meta(ckpt)
    meta["params"]["__dict__"].append(["policy.critic_optimizer", 1])
    with pytest.raises(CheckpointCorruptError, match="keys"):
        DreamerV3.load(_rewrite(ckpt, tmp_path / "group.zip", meta=meta))


@pytest.mark.parametrize("fault", ["lr", "betas", "step", "groups", "moment_shape", "state_key"])
def test_a_damaged_optimizer_state_is_refused(ckpt: Path, tmp_path: Path, fault: str) -> None:
    meta = _meta(ckpt)
    opt = _params_tree(meta, "policy.optimizer")
    groups = next(v for k, v in opt["__dict__"] if k == "param_groups")
    group = groups[0]["__dict__"]
    if fault == "lr":
        next(item for item in group if item[0] == "lr")[1] = -1.0
    elif fault == "betas":
        next(item for item in group if item[0] == "betas")[1] = {"__tuple__": [0.9]}
    elif fault == "step":
        next(item for item in group if item[0] == "step")[1] = -3
    elif fault == "groups":
        groups.append(groups[0])
    else:
        state = next(v for k, v in opt["__dict__"] if k == "state")["__dict__"]
        if fault == "state_key":
            state[0][0] = 10_000
        else:  # point exp_avg of parameter 0 at the tensor of parameter 1 (another shape)
            first = state[0][1]["__dict__"]
            other = state[3][1]["__dict__"]
            first[0][1] = other[0][1]
    with pytest.raises(CheckpointCorruptError, match="optimizer"):
        DreamerV3.load(_rewrite(ckpt, tmp_path / "opt.zip", meta=meta))


def _retensor(src: Path, dst: Path, change: Any) -> Path:
    from safetensors.torch import load, save

    with zipfile.ZipFile(src) as zf:
        tensors = load(zf.read("tensors.safetensors"))
    change(tensors)
    return _rewrite(src, dst, tensors=save(tensors))


def _first_weight(tensors: dict[str, torch.Tensor]) -> str:
    # Sorted: safetensors does not keep the order of its keys from one process to the next.
    return min(k for k in tensors if k.startswith("policy/") and k.endswith("weight"))


TENSOR_FAULTS = {
    "nan_weight": lambda t: t[_first_weight(t)].view(-1).__setitem__(0, float("nan")),
    "inf_moment": lambda t: t[next(k for k in t if k.endswith("exp_avg_sq"))].fill_(float("inf")),
    "int_weight": lambda t: t.__setitem__(_first_weight(t), t[_first_weight(t)].to(torch.int32)),
    # One row more: a slice such as [:1] leaves a weight of one row (a scalar head) unchanged.
    "wrong_shape": lambda t: t.__setitem__(_first_weight(t), torch.cat(
        [t[_first_weight(t)], t[_first_weight(t)][:1]])),
    "rng_size": lambda t: t.__setitem__("__resume__/torch_rng", torch.zeros(7, dtype=torch.uint8)),
    "rng_dtype": lambda t: t.__setitem__("__resume__/torch_rng",
                                         t["__resume__/torch_rng"].float()),
    "numpy_rng": lambda t: t.__setitem__("__resume__/numpy_rng/1",
                                         torch.zeros(3, dtype=torch.int64)),
    "last_obs": lambda t: t.__setitem__("__resume__/last_obs", torch.zeros(1, 5)),
    "policy_state_nan": lambda t: t["__resume__/policy_state/0"].fill_(float("nan")),
}


@pytest.mark.parametrize("fault", sorted(TENSOR_FAULTS))
def test_damaged_tensors_are_refused_not_cast(ckpt: Path, tmp_path: Path, fault: str) -> None:
    bad = _retensor(ckpt, tmp_path / f"{fault}.zip", TENSOR_FAULTS[fault])
    with pytest.raises(CheckpointCorruptError) as info:
        DreamerV3.load(bad)
    assert "load() arguments" not in str(info.value)  # not blamed on the caller


def test_evaluate_on_a_nan_checkpoint_fails_in_one_line(ckpt: Path, tmp_path: Path,
                                                        capsys: pytest.CaptureFixture[str]) -> None:
    # Regression: it exited 0, printing "mean return nan ± nan".
    bad = _retensor(ckpt, tmp_path / "nan.zip", TENSOR_FAULTS["nan_weight"])
    assert main(["evaluate", str(bad), "--env", "Pendulum-v1", "--episodes", "1"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "NaN" in err[0]


# -- 2. the container: members, sizes, special files -------------------------------------------


def _zip_bomb(src: Path, dst: Path) -> Path:
    with zipfile.ZipFile(dst, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        with zipfile.ZipFile(src) as original:
            zf.writestr("metadata.json", original.read("metadata.json"))
        with zf.open("tensors.safetensors", "w", force_zip64=True) as member:
            block = bytes(1 << 20)
            for _ in range(1024):  # 1 GiB of zeros, about 1 MB on disk
                member.write(block)
    return dst


def _forged_size(src: Path, dst: Path) -> Path:
    data = bytearray(src.read_bytes())
    central = data.rfind(b"PK\x01\x02")  # the last member's central directory entry
    data[central + 24 : central + 28] = (2**31).to_bytes(4, "little")  # its size, uncompressed
    dst.write_bytes(bytes(data))
    return dst


def _encrypted(src: Path, dst: Path) -> Path:
    data = bytearray(src.read_bytes())
    for sig in (b"PK\x03\x04", b"PK\x01\x02"):
        start = 0
        while (start := data.find(sig, start)) != -1:
            offset = 6 if sig == b"PK\x03\x04" else 8
            data[start + offset] |= 0x1  # general purpose flag: encrypted
            start += 4
    dst.write_bytes(bytes(data))
    return dst


CONTAINER_FAULTS = {
    "empty": lambda s, d: (d.write_bytes(b""), d)[1],
    "random_bytes": lambda s, d: (d.write_bytes(os.urandom(4096)), d)[1],
    "truncated": lambda s, d: (d.write_bytes(s.read_bytes()[: len(s.read_bytes()) // 2]), d)[1],
    "flipped_header": lambda s, d: (d.write_bytes(b"XX" + s.read_bytes()[2:]), d)[1],
    "extra_member": lambda s, d: _rewrite(s, d, extra={"policy.pth": b"\x80\x04"}),
    "compressed": lambda s, d: _rewrite(s, d, compress=zipfile.ZIP_DEFLATED),
    "metadata_not_json": lambda s, d: _rewrite(s, d, meta=b"{not json"),
    "metadata_array": lambda s, d: _rewrite(s, d, meta=[1, 2, 3]),
    "tensors_garbage": lambda s, d: _rewrite(s, d, tensors=b"\x00" * 64),
    "zip_bomb": _zip_bomb,
    "forged_size": _forged_size,
    "encrypted": _encrypted,
    "directory": lambda s, d: (d.mkdir(), d)[1],
}


@pytest.mark.parametrize("fault", sorted(CONTAINER_FAULTS))
def test_damaged_containers_are_refused_quickly(ckpt: Path, tmp_path: Path, fault: str) -> None:
    import time

    bad = CONTAINER_FAULTS[fault](ckpt, tmp_path / "bad.zip")
    start = time.perf_counter()
    with pytest.raises(CheckpointCorruptError):
        DreamerV3.load(bad)
    assert time.perf_counter() - start < 1.0


@pytest.mark.skipif(not Path("/dev/zero").exists(), reason="no /dev/zero")
@pytest.mark.parametrize("how", ["device", "symlink", "fifo"])
@pytest.mark.parametrize("reader", ["checkpoint", "replay", "trajectories"])
def test_a_device_is_never_read(reader: str, how: str, tmp_path: Path) -> None:
    """A device, a link to one (named like a checkpoint) or a FIFO is refused before any read:
    /dev/zero would be read until memory runs out, a FIFO would block."""
    load = {"checkpoint": DreamerV3.load, "replay": SequenceReplay.load,
            "trajectories": Trajectories.load}[reader]
    path = Path("/dev/zero")
    if how == "symlink":
        path = tmp_path / "model.zip"
        path.symlink_to("/dev/zero")
    elif how == "fifo":
        path = tmp_path / "model.zip"
        os.mkfifo(path)
    with pytest.raises(CheckpointCorruptError, match="regular file"):
        load(path)


# -- 3. replay and trajectory files ---------------------------------------------------------------


@pytest.fixture(scope="module")
def replay_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    rb = SequenceReplay(capacity=64, n_envs=1, obs_dim=3, action_dim=1, seed=0)
    for t in range(20):
        rb.add(np.full((1, 3), t, np.float32), np.zeros((1, 1)), np.ones(1), np.array([t == 0]),
               np.zeros(1, bool), np.ones(1, bool))
    return rb.save(tmp_path_factory.mktemp("rb") / "rb.npz")


def _npz(src: Path, dst: Path, change: Any) -> Path:
    with np.load(src, allow_pickle=False) as data:
        arrays = {k: data[k] for k in data.files}
    change(arrays)
    with dst.open("wb") as fh:
        np.savez(fh, **arrays)
    return dst


REPLAY_FAULTS = {
    "nan_valid": lambda a: a["obs"].__setitem__((0, 3, 0), np.nan),
    "counters": lambda a: a.__setitem__("pos", np.array([999])),
    "config": lambda a: a.__setitem__("config", np.array([64, 1, 3])),
    "rng": lambda a: a.__setitem__("rng_state", np.array("not json")),
    "shape": lambda a: a.__setitem__("obs", a["obs"][:, :5]),
    "missing": lambda a: a.pop("valid"),
    "dtype": lambda a: a.__setitem__("valid", a["valid"].astype(np.float64)),
}


@pytest.mark.parametrize("fault", sorted(REPLAY_FAULTS))
def test_damaged_replay_files_are_refused(replay_file: Path, tmp_path: Path, fault: str) -> None:
    bad = _npz(replay_file, tmp_path / "rb.npz", REPLAY_FAULTS[fault])
    with pytest.raises(CheckpointCorruptError):
        SequenceReplay.load(bad)


def test_a_replay_file_loaded_into_a_model_checks_its_spaces(replay_file: Path) -> None:
    model = DreamerV3("MlpPolicy", "CartPole-v1", **TINY)  # obs 4, action 2: not this file's
    with pytest.raises(ConfigurationError, match="obs_dim"):
        model.load_replay_buffer(replay_file)


@pytest.mark.parametrize("fault", ["ragged", "meta", "version", "bytes"])
def test_damaged_trajectory_files_are_refused(tmp_path: Path, fault: str) -> None:
    n = 8
    data = Trajectories(obs=np.zeros((n, 3)), action=np.zeros((n, 1)), reward=np.zeros(n),
                        is_first=np.eye(1, n, dtype=bool)[0], is_terminal=np.zeros(n, bool),
                        is_last=np.zeros(n, bool), valid=np.ones(n, bool))
    path = data.save(tmp_path / "t.npz")
    if fault == "bytes":
        path.write_bytes(path.read_bytes()[:100])
    else:
        change = {"ragged": lambda a: a.__setitem__("reward", np.zeros(n - 1)),
                  "meta": lambda a: a.__setitem__("meta", np.array("{")),
                  "version": lambda a: a.__setitem__("format_version", np.array(9))}[fault]
        _npz(path, path, change)
    with pytest.raises(CheckpointCorruptError):
        Trajectories.load(path)


# -- 4. invariants and wrapped envs ---------------------------------------------------------------


class _Garbage(gym.Wrapper):  # type: ignore[type-arg]
    def __init__(self, env: gym.Env, what: str) -> None:  # type: ignore[type-arg]
        super().__init__(env)
        self.what = what

    def step(self, action: Any) -> Any:
        obs, reward, terminated, truncated, info = self.env.step(action)
        return {
            "info_none": (obs, reward, terminated, truncated, None),
            "reward_array": (obs, np.array([reward, reward]), terminated, truncated, info),
            "reward_none": (obs, None, terminated, truncated, info),
            "reward_str": (obs, "1.0", terminated, truncated, info),
            "cost_str": (obs, reward, terminated, truncated, {**info, "cost": "high"}),
            "returns_none": None,
            "four_tuple": (obs, reward, terminated, info),
        }[self.what]


@pytest.mark.parametrize("what", ["info_none", "reward_array", "reward_none", "reward_str",
                                  "cost_str", "returns_none", "four_tuple"])
def test_an_env_returning_garbage_gets_a_clear_error(what: str) -> None:
    env = InvariantWrapper(_Garbage(gym.make("Pendulum-v1"), what), [invariants.finite()])
    env.reset(seed=0)
    with pytest.raises(StepAPIError) as info:
        env.step(env.action_space.sample())
    assert "PendulumEnv" in str(info.value)


@pytest.mark.parametrize("exc", [SystemExit(3), GeneratorExit(), RuntimeError("x")])
def test_any_exception_from_an_invariant_is_an_error_not_a_crash(exc: BaseException) -> None:
    def boom(t: Any) -> float:
        raise exc

    env = InvariantWrapper(gym.make("Pendulum-v1"), [Invariant("boom", boom)])
    env.reset(seed=0)
    with pytest.warns(UserWarning, match="boom"):
        *_, info = env.step(env.action_space.sample())
    assert info["physlink"]["errors"] == 1 and info["physlink"]["valid"]


def test_keyboard_interrupt_still_interrupts() -> None:
    def stop(t: Any) -> float:
        raise KeyboardInterrupt

    env = InvariantWrapper(gym.make("Pendulum-v1"), [Invariant("stop", stop)])
    env.reset(seed=0)
    with pytest.raises(KeyboardInterrupt):
        env.step(env.action_space.sample())


def test_an_invariant_that_fails_on_a_nan_never_leaves_the_step_valid() -> None:
    def strict(t: Any) -> float:
        if not np.isfinite(t["next_obs"]).all():
            raise ValueError("cannot handle NaN")
        return 0.0

    class NaNObs(gym.Wrapper):  # type: ignore[type-arg]
        def step(self, action: Any) -> Any:
            obs, *rest = self.env.step(action)
            return (np.full_like(obs, np.nan), *rest)

    env = InvariantWrapper(NaNObs(gym.make("Pendulum-v1")), [Invariant("strict", strict)])
    env.reset(seed=0)
    with pytest.warns(UserWarning):
        *_, info = env.step(env.action_space.sample())
    assert info["physlink"]["errors"] == 1 and not info["physlink"]["valid"]


def test_reset_needed_is_gymnasiums_error_too() -> None:
    env = InvariantWrapper(gym.make("Pendulum-v1"), [invariants.finite()])
    with pytest.raises(gym.error.ResetNeeded):
        env.step(env.action_space.sample())
    assert issubclass(ResetNeededError, PhysLinkError)


def test_the_wrapper_pickles_after_its_spec_was_read_and_the_spec_is_json() -> None:
    env = InvariantWrapper(gym.make("Pendulum-v1"),
                           [invariants.finite(), Invariant("custom", lambda t: 0.0)])
    assert "InvariantWrapper" in env.spec.to_json()  # type: ignore[union-attr]
    clone = pickle.loads(pickle.dumps(env))
    clone.reset(seed=0)
    assert clone.step(clone.action_space.sample())[-1]["physlink"]["valid"]
    rebuilt = gym.make(InvariantWrapper(gym.make("Pendulum-v1"), ["finite"]).spec)
    assert [i.name for i in rebuilt._invariants] == ["finite"]  # type: ignore[attr-defined]


def test_valid_mask_finds_a_custom_info_key() -> None:
    record = {"valid": False, "cost": 0.0, "residuals": {}, "violated": {}}
    assert valid_mask([{"mine": record}, {"mine": {**record, "valid": True}}]).tolist() == [
        False, True]


# -- 5. saving and the command line ---------------------------------------------------------------


def test_saving_onto_a_folder_under_a_file_or_read_only_names_the_target(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "folder.zip").mkdir()
    with pytest.raises(WriteError, match=r"folder\.zip"):
        atomic_write(tmp_path / "folder.zip", lambda fh: fh.write(b"x"))
    (tmp_path / "file").write_text("x")
    with pytest.raises(WriteError, match="under a file"):
        atomic_write(tmp_path / "file" / "model.zip", lambda fh: fh.write(b"x"))

    def read_only(*args: Any, **kwargs: Any) -> int:
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(os, "open", read_only)
    with pytest.raises(WriteError, match="not writable") as info:
        atomic_write(tmp_path / "ro" / "model.zip", lambda fh: fh.write(b"x"))
    assert ".tmp" not in str(info.value)


def test_temporary_files_of_a_killed_save_are_cleaned_up(tmp_path: Path) -> None:
    stale = tmp_path / ".model.zip.0123456789ab.tmp"
    stale.write_bytes(b"half a checkpoint")
    os.utime(stale, (0, 0))  # untouched for decades: its writer is gone
    fresh = tmp_path / ".model.zip.ba9876543210.tmp"
    fresh.write_bytes(b"a save in progress")
    atomic_write(tmp_path / "model.zip", lambda fh: fh.write(b"new"))
    assert not stale.exists() and fresh.exists()
    assert (tmp_path / "model.zip").read_bytes() == b"new"


CLI_FAULTS = [
    (["train", "--env", "Pendulum-v1", "--device", "tpu", "--timesteps", "5"], "--device"),
    (["train", "--env", "Pendulum-v1", "--logdir", "{file}", "--timesteps", "5"], "is a file"),
    (["train", "--env", "Pendulum-v1", "--save", "{folder}.zip", "--timesteps", "5"], "folder"),
    (["train", "--env", "Pendulum-v1", "--save", "{file}/m", "--timesteps", "5"], "is a file"),
    (["report", "{ckpt}"], "compliance"),
    (["report", "{wrong_json}"], "ComplianceReport"),
    (["evaluate", "{folder}", "--env", "Pendulum-v1"], "regular file"),
    (["train", "--env", "Pendulum-v1", "--set", "lr=nan", "--timesteps", "5"], "lr"),
]


@pytest.mark.parametrize(("argv", "message"), CLI_FAULTS)
def test_every_cli_failure_is_one_line(ckpt: Path, tmp_path: Path, argv: list[str],
                                       message: str, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "file").write_text("x")
    (tmp_path / "folder").mkdir()
    (tmp_path / "folder.zip").mkdir()
    (tmp_path / "wrong.json").write_text("[1, 2]")
    paths = {"file": str(tmp_path / "file"), "folder": str(tmp_path / "folder"),
             "ckpt": str(ckpt), "wrong_json": str(tmp_path / "wrong.json")}
    args = [a.format(**paths) for a in argv] + (
        ["--logdir", str(tmp_path / "runs"), "--no-progress", "--eval-episodes", "0"]
        if argv[0] == "train" and "--logdir" not in argv else [])
    assert main(args) in (1, 2)
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("physlink-gym: error:") and message in err[0]
    assert not (tmp_path / "runs").exists() or not list((tmp_path / "runs").rglob("*.zip"))


def test_report_in_a_read_only_folder_fails_in_one_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from physlink_gym.report import ComplianceReport

    env = InvariantWrapper(gym.make("Pendulum-v1"), [invariants.finite()])
    env.reset(seed=0)
    env.step(env.action_space.sample())
    env.compliance_report().export(tmp_path / "compliance.json")

    def refuse(self: Any, path: Any = None) -> Any:
        raise PermissionError(13, "Permission denied", str(path))

    monkeypatch.setattr(ComplianceReport, "plot", refuse)
    assert main(["report", str(tmp_path)]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "cannot be written" in err[0]


# -- 6. fuzz: random mutations of valid files -----------------------------------------------------


def _loads_or_refuses(load: Any, path: Path) -> None:
    try:
        load(path)
    except PhysLinkError:
        pass  # a clear refusal; anything else propagates and fails the test


_JSON_VALUES = st.one_of(st.none(), st.booleans(), st.integers(-10**6, 10**6),
                         st.floats(allow_nan=True), st.text(max_size=8),
                         st.lists(st.integers(), max_size=3), st.dictionaries(st.text(max_size=4),
                                                                              st.integers(),
                                                                              max_size=2))


def _mutate_bytes(data: bytes, draw: Any) -> bytes:
    kind = draw(st.sampled_from(["flip", "truncate", "splice"]))
    if kind == "truncate":
        return data[: draw(st.integers(0, len(data)))]
    position = draw(st.integers(0, len(data) - 1))
    if kind == "flip":
        return data[:position] + bytes([data[position] ^ draw(st.integers(1, 255))]) + \
            data[position + 1 :]
    chunk = draw(st.binary(min_size=1, max_size=64))
    return data[:position] + chunk + data[position + len(chunk) :]


def _fuzz(examples: int) -> Any:
    return settings(max_examples=examples, deadline=None, derandomize=True,
                    suppress_health_check=[HealthCheck.function_scoped_fixture,
                                           HealthCheck.too_slow])


def _mutate_json(tree: Any, data: st.DataObject) -> Any:
    """One mutation somewhere in a JSON tree: a value of another type, a key added or removed,
    a deep nest, or a large array."""
    node: Any = tree
    while True:
        keys = list(node) if isinstance(node, dict) else list(range(len(node)))
        if not keys:
            return tree
        key = data.draw(st.sampled_from(keys))
        if isinstance(node[key], (dict, list)) and data.draw(st.booleans()):
            node = node[key]
            continue
        kind = data.draw(st.sampled_from(["value", "add", "remove", "nest", "big"]))
        if kind == "value":
            node[key] = data.draw(_JSON_VALUES)
        elif kind == "add" and isinstance(node, dict):
            node[data.draw(st.sampled_from(["_setup_model", "env", "policy", "x", "__dict__",
                                            "data", "params", "n_envs"]))] = data.draw(
                _JSON_VALUES)
        elif kind == "remove" and isinstance(node, dict):
            del node[key]
        elif kind == "nest":
            nested: Any = node[key]
            for _ in range(data.draw(st.integers(1, 800))):
                nested = [nested]
            node[key] = nested
        else:
            node[key] = [data.draw(st.integers(-5, 5))] * data.draw(st.integers(0, 200_000))
        return tree


def _checkpoint_fuzz(ckpt: Path, tmp_path: Path, data: st.DataObject) -> None:
    target = tmp_path / "fuzz.zip"
    if data.draw(st.booleans()):  # the metadata JSON mutated: types, keys, nesting, sizes
        _rewrite(ckpt, target, meta=_mutate_json(_meta(ckpt), data))
    else:
        target.write_bytes(_mutate_bytes(ckpt.read_bytes(), data.draw))
    _loads_or_refuses(DreamerV3.load, target)


def _trajectory_fuzz(traj_file: Path, tmp_path: Path, data: st.DataObject) -> None:
    """A trajectory npz mutated in its bytes, or member by member (dtype, shape, meta JSON)."""
    target = tmp_path / "fuzz_traj.npz"
    if data.draw(st.booleans()):
        target.write_bytes(_mutate_bytes(traj_file.read_bytes(), data.draw))
    else:
        def change(arrays: dict[str, np.ndarray]) -> None:
            name = data.draw(st.sampled_from(sorted(arrays)))
            kind = data.draw(st.sampled_from(["dtype", "shape", "drop", "meta", "values"]))
            if kind == "dtype":
                dtype = data.draw(st.sampled_from(["int8", "float64", "bool", "U3", "complex64"]))
                try:
                    arrays[name] = arrays[name].astype(dtype)
                except (TypeError, ValueError):  # e.g. the meta string to a number
                    arrays[name] = np.zeros(3, dtype)
            elif kind == "shape":
                arrays[name] = arrays[name].reshape(-1)[: data.draw(st.integers(0, 8))]
            elif kind == "drop":
                del arrays[name]
            elif kind == "meta":
                meta = json.loads(str(arrays["meta"]))
                arrays["meta"] = np.array(json.dumps(_mutate_json({"m": meta}, data).get("m")))
            elif arrays[name].dtype.kind == "f":
                arrays[name] = np.full_like(arrays[name], data.draw(st.floats()))

        _npz(traj_file, target, change)
    _loads_or_refuses(Trajectories.load, target)


def _replay_fuzz(replay_file: Path, tmp_path: Path, data: st.DataObject) -> None:
    target = tmp_path / "fuzz.npz"
    target.write_bytes(_mutate_bytes(replay_file.read_bytes(), data.draw))
    _loads_or_refuses(SequenceReplay.load, target)


# Thousands of cases in the default suite (about 20 ms each for a checkpoint, a few ms for the
# others); PHYSLINK_FUZZ_EXAMPLES raises the count of the slow runs.
@given(data=st.data())
@_fuzz(1500)
def test_fuzz_checkpoints(ckpt: Path, tmp_path: Path, data: st.DataObject) -> None:
    _checkpoint_fuzz(ckpt, tmp_path, data)


@given(data=st.data())
@_fuzz(1000)
def test_fuzz_replay_files(replay_file: Path, tmp_path: Path, data: st.DataObject) -> None:
    _replay_fuzz(replay_file, tmp_path, data)


@pytest.fixture(scope="module")
def traj_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    n = 12
    data = Trajectories(
        obs=np.arange(n * 3, dtype=np.float32).reshape(n, 3), action=np.zeros((n, 1), np.float32),
        reward=np.ones(n, np.float32), is_first=np.eye(1, n, dtype=bool)[0],
        is_terminal=np.zeros(n, bool), is_last=np.eye(1, n, n - 1, dtype=bool)[0],
        valid=np.ones(n, bool), meta={"env_id": "Pendulum-v1", "discrete": False})
    return data.save(tmp_path_factory.mktemp("traj") / "traj.npz")


@given(data=st.data())
@_fuzz(1500)
def test_fuzz_trajectory_files(traj_file: Path, tmp_path: Path, data: st.DataObject) -> None:
    _trajectory_fuzz(traj_file, tmp_path, data)


@pytest.mark.slow
@given(data=st.data())
@_fuzz(FUZZ_EXAMPLES)
def test_fuzz_checkpoints_thousands(ckpt: Path, tmp_path: Path, data: st.DataObject) -> None:
    _checkpoint_fuzz(ckpt, tmp_path, data)


@pytest.mark.slow
@given(data=st.data())
@_fuzz(FUZZ_EXAMPLES)
def test_fuzz_replay_files_thousands(replay_file: Path, tmp_path: Path,
                                     data: st.DataObject) -> None:
    _replay_fuzz(replay_file, tmp_path, data)


@pytest.mark.parametrize("kind", ["dev_zero", "fifo", "huge"])
def test_a_report_that_is_not_a_bounded_file_is_refused(tmp_path: Path, kind: str,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    """ComplianceReport.from_json reads only a regular file of a report's size: a link to
    /dev/zero or a FIFO would otherwise be read until memory runs out (or block forever)."""
    from physlink_gym import report as report_module
    from physlink_gym.report import ComplianceReport

    path = tmp_path / "compliance.json"
    if kind == "dev_zero":
        path.symlink_to("/dev/zero")
    elif kind == "fifo":
        os.mkfifo(path)
    else:
        monkeypatch.setattr(report_module, "MAX_REPORT_BYTES", 100)
        path.write_text(json.dumps({"pad": "x" * 200}))
    with pytest.raises(CheckpointCorruptError, match=r"compliance\.json"):
        ComplianceReport.from_json(path)


@pytest.mark.parametrize("what", ["model", "replay"])
def test_a_full_disk_is_a_clear_error_and_keeps_the_previous_file(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, what: str) -> None:
    import errno

    from physlink_gym import _files

    model = DreamerV3("MlpPolicy", "Pendulum-v1", **TINY)
    model.learn(12)
    path = tmp_path / ("model.zip" if what == "model" else "replay.npz")
    save = model.save if what == "model" else model.save_replay_buffer
    save(path)
    before = path.read_bytes()

    def full(fd: int) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(_files.os, "fsync", full)
    with pytest.raises(WriteError, match="No space left") as info:
        save(path)
    text = str(info.value)
    assert str(path) in text and "previous file there is intact" in text and "bytes" in text
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == [path.name]  # no temporary file left


def test_a_read_only_file_system_is_a_clear_error(tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    import errno

    from physlink_gym import _files

    real_open = _files.os.open

    def read_only(path: Any, *args: Any, **kwargs: Any) -> int:
        if str(path).endswith(".tmp"):
            raise OSError(errno.EROFS, "Read-only file system")
        return real_open(path, *args, **kwargs)

    monkeypatch.setattr(_files.os, "open", read_only)
    with pytest.raises(WriteError, match="Read-only file system") as info:
        atomic_write(tmp_path / "x.bin", lambda fh: fh.write(b"1"))
    assert "x.bin" in str(info.value) and "nothing was left there" in str(info.value)


def test_an_invariant_raising_in_a_subprocess_reaches_the_user_by_name() -> None:
    """SB3's SubprocVecEnv gives the parent only EOFError when a worker raises: the invariant's
    own error reaches the user all the same."""
    from faulty_envs import raising_invariant_env
    from stable_baselines3.common.vec_env import SubprocVecEnv

    from physlink_gym.errors import TrainingError

    venv = SubprocVecEnv([raising_invariant_env, raising_invariant_env])
    model = DreamerV3("MlpPolicy", venv, preset="debug", learning_starts=100, seed=0)
    try:
        with pytest.raises(TrainingError, match="invariant 'boomer' failed") as info:
            model.learn(50)
        assert "kaboom" in str(info.value) and "on_error='record'" in str(info.value)
    finally:
        for process in venv.processes:
            process.kill()
