"""Data-parallel DreamerV3: two CPU ranks under torchrun (gloo) keep identical weights."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from physlink_gym.agents.dreamerv3 import distributed

WORKER = Path(__file__).with_name("ddp_worker.py")


def torchrun(out: Path, ranks: int, *extra: str) -> list[dict[str, np.ndarray]]:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MPLBACKEND": "Agg"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone",
           f"--nproc_per_node={ranks}", str(WORKER), str(out), *extra]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    return [dict(np.load(out / f"rank{r}.npz")) for r in range(ranks)]


@pytest.fixture(scope="module")
def two_ranks(tmp_path_factory):
    out = tmp_path_factory.mktemp("ddp")
    return out, torchrun(out, 2)


def test_two_ranks_keep_identical_weights_on_their_own_data(two_ranks):
    _, (r0, r1) = two_ranks
    assert int(r0["world"]) == 2 and int(r1["rank_attr"]) == 1
    assert int(r0["updates"]) == int(r1["updates"]) > 4
    np.testing.assert_array_equal(r0["before"], r1["before"])  # rank 0's weights broadcast
    assert not np.array_equal(r0["after"], r0["before"])  # they trained
    np.testing.assert_array_equal(r0["after"], r1["after"])  # bit for bit after the updates
    assert r0["obs"].shape == r1["obs"].shape
    assert not np.allclose(r0["obs"], r1["obs"])  # each rank collected its own data


def test_return_percentiles_are_taken_over_all_ranks_returns(two_ranks):
    """Reference: one 5th/95th percentile over the whole batch of every device, not a mean of
    per-rank percentiles; checked against numpy's percentile of the union."""
    _, ranks = two_ranks
    union = np.concatenate([r["ret"][:, r["mask"][0] > 0].reshape(-1) for r in ranks])
    expected = np.percentile(union, [5, 95])
    for r in ranks:
        np.testing.assert_allclose(r["retnorm"][:2], expected, rtol=1e-5)
    per_rank_mean = np.mean([np.percentile(r["ret"][:, r["mask"][0] > 0], [5, 95])
                             for r in ranks], axis=0)
    assert not np.allclose(per_rank_mean, expected, rtol=1e-2)  # the two differ here
    # and the update itself reads both ranks' imagined starts (2 x batch 4 x length 8)
    for r in ranks:
        assert len(r["percentile_starts"]) and set(r["percentile_starts"]) == {2 * 4 * 8}


def test_only_rank_0_logs_and_writes_the_checkpoint(two_ranks):
    out, _ = two_ranks
    runs = sorted(p.name for p in (out / "tb").iterdir())
    assert runs == ["DreamerV3_1"]  # one TensorBoard run, rank 0's
    assert len(list((out / "tb" / "DreamerV3_1").glob("events.out.tfevents.*"))) == 1
    assert (out / "model.zip").is_file()


def test_the_checkpoint_resumes_on_one_rank_and_on_two(two_ranks, tmp_path):
    out, (r0, _) = two_ranks
    one = tmp_path / "one"
    one.mkdir()
    (solo,) = torchrun(one, 1, "--resume", str(out / "model.zip"))
    np.testing.assert_array_equal(solo["before"], r0["after"])
    assert not np.array_equal(solo["after"], solo["before"])
    two = tmp_path / "two"
    two.mkdir()
    a, b = torchrun(two, 2, "--resume", str(out / "model.zip"))
    np.testing.assert_array_equal(a["before"], r0["after"])
    np.testing.assert_array_equal(a["after"], b["after"])
    assert not np.array_equal(a["after"], solo["after"])  # two ranks' data, another step


def test_all_average_is_the_identity_without_a_group():
    t = [torch.ones(3), torch.zeros(2, 2)]
    assert distributed.all_average(t) is t
    assert distributed.rank() == 0 and distributed.world_size() == 1
