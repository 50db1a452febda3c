"""Safe checkpoints: round trips, atomic writes, refusal of anything that is not ours."""

from __future__ import annotations

import json
import os
import pickle
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save as safetensors_save

from physlink_gym._version import __version__
from physlink_gym.checkpoint import (
    FORMAT_VERSION,
    MEMBERS,
    atomic_write,
    flatten_state,
    load_checkpoint,
    save_checkpoint,
    unflatten_state,
)
from physlink_gym.errors import (
    CheckpointCorruptError,
    CheckpointVersionError,
    PhysLinkError,
    ValidationError,
)


def _tensors() -> dict[str, torch.Tensor]:
    weight = torch.randn(4, 3)
    return {
        "net.weight": weight,
        "net.weight_t": weight.t(),  # a non-contiguous view sharing memory
        "step": torch.tensor(7, dtype=torch.int64),
        "mask": torch.tensor([True, False]),
        "half": torch.randn(5, dtype=torch.bfloat16),
    }


def test_round_trip(tmp_path: Path) -> None:
    tensors = _tensors()
    path = save_checkpoint(tmp_path / "model.zip", tensors, {"class": "DreamerV3", "n": [1, 2]})
    assert path == tmp_path / "model.zip"
    with zipfile.ZipFile(path) as archive:
        assert sorted(archive.namelist()) == sorted(MEMBERS)
        assert all(i.compress_type == zipfile.ZIP_STORED for i in archive.infolist())
    loaded, meta = load_checkpoint(path)
    assert set(loaded) == set(tensors)
    for name, value in tensors.items():
        assert loaded[name].dtype == value.dtype and torch.equal(loaded[name], value)
    assert meta == {
        "class": "DreamerV3", "n": [1, 2],
        "physlink_gym_version": __version__, "format_version": FORMAT_VERSION,
    }  # fmt: skip


def test_unserialisable_metadata_is_refused_before_writing(tmp_path: Path) -> None:
    with pytest.raises(ValidationError, match="JSON"):
        save_checkpoint(tmp_path / "m.zip", {}, {"fn": print})
    with pytest.raises(ValidationError):
        save_checkpoint(tmp_path / "m.zip", {"x": np.zeros(2)}, {})  # type: ignore[dict-item]
    assert list(tmp_path.iterdir()) == []


def test_failed_write_keeps_previous_file_and_leaves_no_temp(tmp_path: Path) -> None:
    path = tmp_path / "ckpt.zip"
    save_checkpoint(path, {"w": torch.ones(3)}, {"step": 1})
    before = path.read_bytes()

    def crash(handle) -> None:
        handle.write(b"half a checkpoint")
        raise RuntimeError("disk on fire")

    with pytest.raises(RuntimeError, match="disk on fire"):
        atomic_write(path, crash)
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["ckpt.zip"]
    assert load_checkpoint(path)[1]["step"] == 1


def test_atomic_write_creates_parents_and_replaces(tmp_path: Path) -> None:
    path = tmp_path / "a" / "b" / "file.pkl"
    atomic_write(path, lambda f: f.write(b"one"))
    atomic_write(path, lambda f: f.write(b"two"))
    assert path.read_bytes() == b"two"
    assert [p.name for p in path.parent.iterdir()] == ["file.pkl"]
    umask = os.umask(0)
    os.umask(umask)
    assert path.stat().st_mode & 0o777 == 0o666 & ~umask  # not mkstemp's 0o600


class _Payload:
    """A pickle whose loading would create a marker file."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def _zip(path: Path, members: dict[str, bytes]) -> Path:
    with zipfile.ZipFile(path, "w") as archive:
        for name, data in members.items():
            archive.writestr(name, data)
    return path


def _valid_members() -> dict[str, bytes]:
    meta = {"physlink_gym_version": __version__, "format_version": FORMAT_VERSION}
    return {
        "metadata.json": json.dumps(meta).encode(),
        "tensors.safetensors": safetensors_save({"w": torch.ones(2)}),
    }


def test_corrupt_and_foreign_files_are_refused_without_running_code(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    evil = pickle.dumps(_Payload(marker))
    assert not marker.exists()
    good = save_checkpoint(tmp_path / "good.zip", {"w": torch.ones(1000)}, {"a": 1})
    raw = good.read_bytes()
    cases = {
        "missing": tmp_path / "nope.zip",
        "empty": tmp_path / "empty.zip",
        "truncated": tmp_path / "truncated.zip",
        "garbage": tmp_path / "garbage.zip",
        "pickle": tmp_path / "raw.pkl",
        "sb3": _zip(tmp_path / "sb3.zip", {"data": b"{}", "policy.pth": evil,
                                            "pytorch_variables.pth": evil}),
        "extra": _zip(tmp_path / "extra.zip", {**_valid_members(), "payload.pkl": evil}),
        "missing_member": _zip(tmp_path / "half.zip", {"metadata.json": b"{}"}),
        "bad_json": _zip(tmp_path / "json.zip", {**_valid_members(), "metadata.json": b"{"}),
        "json_list": _zip(tmp_path / "list.zip", {**_valid_members(), "metadata.json": b"[]"}),
        "no_version": _zip(tmp_path / "nov.zip", {**_valid_members(), "metadata.json": b"{}"}),
        "bad_tensors": _zip(tmp_path / "st.zip", {**_valid_members(), "tensors.safetensors": evil}),
    }  # fmt: skip
    cases["empty"].write_bytes(b"")
    cases["truncated"].write_bytes(raw[: len(raw) - 100])
    cases["garbage"].write_bytes(np.random.default_rng(0).bytes(4096))
    cases["pickle"].write_bytes(evil)
    for name, path in cases.items():
        with pytest.raises(CheckpointCorruptError) as info:
            load_checkpoint(path)
        assert "Got:" in str(info.value) and "Fix:" in str(info.value), name
        if name == "sb3":
            assert "Stable-Baselines3" in str(info.value)
    assert not marker.exists()
    control = tmp_path / "control"
    pickle.loads(pickle.dumps(_Payload(control)))  # the payload is live: unpickling runs it
    assert control.exists()


def test_version_mismatch(tmp_path: Path) -> None:
    major, minor, *_ = __version__.split(".")
    other = f"{major}.{int(minor) + 1}.0"
    meta = {"physlink_gym_version": other, "format_version": FORMAT_VERSION}
    path = _zip(
        tmp_path / "old.zip", {**_valid_members(), "metadata.json": json.dumps(meta).encode()}
    )
    with pytest.raises(CheckpointVersionError) as info:
        load_checkpoint(path)
    assert info.value.checkpoint_version == other
    assert info.value.current_version == __version__
    assert isinstance(info.value, PhysLinkError)
    patch = {**meta, "physlink_gym_version": f"{major}.{minor}.99"}  # patch releases load
    path = _zip(
        tmp_path / "p.zip", {**_valid_members(), "metadata.json": json.dumps(patch).encode()}
    )
    assert torch.equal(load_checkpoint(path)[0]["w"], torch.ones(2))


def _adam_state() -> dict:
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Linear(4, 1))
    opt = torch.optim.Adam(net.parameters(), lr=1e-3, betas=(0.9, 0.99))
    for _ in range(2):
        opt.zero_grad()
        net(torch.randn(8, 3)).pow(2).mean().backward()
        opt.step()
    return opt.state_dict()


def _assert_same(a, b) -> None:
    assert type(a) is type(b), (a, b)
    if isinstance(a, torch.Tensor):
        assert a.dtype == b.dtype and torch.equal(a, b)
    elif isinstance(a, dict):
        assert list(a) == list(b)
        for key in a:
            _assert_same(a[key], b[key])
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b)
        for x, y in zip(a, b, strict=True):
            _assert_same(x, y)
    else:
        assert a == b


def test_flatten_adam_state_round_trips_through_a_checkpoint(tmp_path: Path) -> None:
    state = _adam_state()
    assert 0 in state["state"]  # int keys
    tensors, skeleton = flatten_state({"optimizer": state})
    save_checkpoint(tmp_path / "opt.zip", tensors, {"skeleton": skeleton})
    loaded, meta = load_checkpoint(tmp_path / "opt.zip")
    restored = unflatten_state(meta["skeleton"], loaded)["optimizer"]
    _assert_same(restored, {"state": dict(state["state"]), "param_groups": state["param_groups"]})
    # The restored state is usable by a fresh optimizer.
    net = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Linear(4, 1))
    torch.optim.Adam(net.parameters()).load_state_dict(restored)


def test_flatten_handles_mixed_trees_and_refuses_objects() -> None:
    tree = {
        "a": (1, 2.5, None, True, "s", float("inf")), 3: [np.arange(3), np.float32(1.5)],
        None: {"deep": {"deeper": torch.zeros(2)}}, "a/b": torch.ones(1), "x": {"b": torch.ones(1)},
    }  # fmt: skip
    tree["a/x"] = torch.full((1,), 2.0)
    tensors, skeleton = flatten_state(tree)
    json.loads(json.dumps(skeleton))  # JSON-able
    back = unflatten_state(json.loads(json.dumps(skeleton)), tensors)
    assert back["a"] == (1, 2.5, None, True, "s", float("inf"))
    assert np.array_equal(back[3][0], np.arange(3)) and back[3][1] == 1.5
    assert torch.equal(back["a/x"], torch.full((1,), 2.0)) and list(back) == list(tree)
    with pytest.raises(ValidationError, match="object"):
        flatten_state({"bad": object()})
    with pytest.raises(ValidationError, match="key"):
        flatten_state({(1, 2): 3})
    with pytest.raises(CheckpointCorruptError):
        unflatten_state({"__tensor__": "absent"}, tensors)
    with pytest.raises(CheckpointCorruptError):
        unflatten_state({"plain": "dict"}, tensors)
