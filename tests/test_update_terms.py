"""Every term of the update, pinned where a plausible mistake would leave the losses unchanged.

The first-update golden test (``test_update.py``) compares loss *values*; some mistakes do not
move them: the ``dyn`` and ``rep`` KL terms are equal in value, so swapping their scales changes
no loss and not even the total; on the first update the slow critic is a copy of the critic;
an EMA checked during warm-up (learning rate 0) never sees the critic move. These tests check
what those mistakes do change: the gradient the optimiser receives, what the losses depend on,
and the slow critic after an update with a moving critic.

Every expected value below comes from the reference, not from this code: the loss scales are
``configs.yaml``'s ``loss_scales`` and ``slowvalue.rate`` (danijar/dreamerv3), typed here by hand.
"""

from __future__ import annotations

import copy

import pytest
import torch

from physlink_gym.agents.dreamerv3 import update
from physlink_gym.agents.dreamerv3.config import make_config
from physlink_gym.agents.dreamerv3.learner import DreamerV3Learner

OBS, ACT, B, T = 5, 3, 4, 16

#: configs.yaml ``loss_scales: {rec: 1, rew: 1, con: 1, dyn: 1, rep: 0.1, policy: 1, value: 1,
#: repval: 0.3}`` (``rec`` is our ``dec``).
REFERENCE_SCALES = {"dec": 1.0, "rew": 1.0, "con": 1.0, "dyn": 1.0, "rep": 0.1, "policy": 1.0,
                    "value": 1.0, "repval": 0.3}
#: configs.yaml ``slowvalue: {rate: 0.02, every: 1}``.
REFERENCE_SLOW_RATE = 0.02


# One torch thread per test (the fixture is in conftest.py).
pytestmark = pytest.mark.usefixtures("one_thread")


def _batch(seed: int = 1) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    is_first = torch.zeros(B, T, dtype=torch.bool)
    is_first[1, 7] = True
    is_terminal = torch.zeros(B, T, dtype=torch.bool)
    is_terminal[1, 6] = True
    return {
        "obs": torch.randn(B, T, OBS, generator=gen) * 3,
        "action": torch.rand(B, T, ACT, generator=gen) * 2 - 1,
        "reward": torch.randn(B, T, generator=gen) * 5,
        "is_first": is_first, "is_terminal": is_terminal,
        "valid": torch.ones(B, T, dtype=torch.bool),
    }  # fmt: skip


def _learner(**overrides: object) -> DreamerV3Learner:
    """A debug learner whose heads pass gradients and whose slow critic is not the critic."""
    torch.manual_seed(0)
    cfg = make_config("debug", **{"lr": 1e-3, "warmup": 0, **overrides})
    learner = DreamerV3Learner(cfg, OBS, ACT, discrete=False)
    with torch.no_grad():  # the zero-initialised outputs would pass no gradient
        for head in (learner.reward_head.out, learner.critic.out, learner.slow_critic.out):
            head.weight.normal_(0.0, 0.05)
        for p in learner.slow_critic.parameters():  # a slow critic some updates behind
            p.add_(torch.randn_like(p) * 0.05)
    return learner


def _inputs(learner: DreamerV3Learner, seed: int = 5) -> tuple[dict, update.Noise]:
    data = learner.prepare_batch(_batch())
    torch.manual_seed(seed)
    return data, update.draw_noise(learner, B, T)


def _params(learner: DreamerV3Learner) -> list[torch.Tensor]:
    return list(learner.optimizer.param_groups[0]["params"])


def _names(learner: DreamerV3Learner) -> list[str]:
    by_id = {id(p): n for n, p in learner.named_parameters()}
    return [by_id[id(p)] for p in _params(learner)]


def _term_grads(learner: DreamerV3Learner, data: dict, noise: update.Noise
                ) -> dict[str, list[torch.Tensor]]:
    """The gradient of each unscaled loss term with respect to every optimised parameter."""
    losses, _ = update.compute_losses(learner, data, noise)
    params = _params(learner)
    grads = {}
    for key, loss in losses.items():
        g = torch.autograd.grad(loss, params, retain_graph=True, allow_unused=True)
        grads[key] = [torch.zeros_like(p) if x is None else x for p, x in zip(params, g,
                                                                                strict=True)]
    return grads


def _applied_grads(learner: DreamerV3Learner, data: dict, noise: update.Noise
                   ) -> tuple[list[torch.Tensor], dict[str, torch.Tensor]]:
    """The gradients ``train_step`` hands to the optimiser, and its metrics."""
    seen: list[list[torch.Tensor]] = []
    apply = learner.optimizer.apply

    def spy(grads: list[torch.Tensor], **kwargs: object) -> torch.Tensor:
        seen.append([g.detach().clone() for g in grads])
        return apply(grads, **kwargs)  # type: ignore[arg-type]

    learner.optimizer.apply = spy  # type: ignore[method-assign]
    lr = torch.tensor(learner.config.lr)
    metrics = update.train_step(learner, data, noise, lr)
    return seen[0], metrics


def test_loss_scales_are_the_references() -> None:
    cfg = make_config("1m")
    ours = {k: getattr(cfg, f"scale_{k}") for k in REFERENCE_SCALES}
    assert ours == REFERENCE_SCALES
    assert cfg.slow_critic_rate == REFERENCE_SLOW_RATE and cfg.slow_critic_every == 1


def test_update_gradient_is_the_reference_weighted_sum_of_its_terms() -> None:
    """The optimiser gets sum_k scale_k * grad(L_k), scales from the reference (dyn != rep)."""
    learner = _learner()
    data, noise = _inputs(learner)
    terms = _term_grads(copy.deepcopy(learner), data, noise)
    assert set(terms) == set(REFERENCE_SCALES)
    applied, metrics = _applied_grads(learner, data, noise)
    total = sum(REFERENCE_SCALES[k] * float(metrics[f"loss/{k}"]) for k in REFERENCE_SCALES)
    assert float(metrics["loss/total"]) == pytest.approx(total, rel=1e-6)
    names = _names(learner)
    for i, name in enumerate(names):
        expected = sum(REFERENCE_SCALES[k] * terms[k][i] for k in REFERENCE_SCALES)
        torch.testing.assert_close(applied[i], expected, rtol=1e-4, atol=1e-7, msg=name)
    # The KL terms are equal in value but not in where their gradients land: the prior's own
    # layers learn from dyn alone (rep holds the prior fixed), so a swap of the two scales
    # moves those gradients tenfold and fails above.
    prior = [i for i, n in enumerate(names) if n.startswith("rssm.prior_")]
    assert prior, names
    for i in prior:
        assert float(terms["rep"][i].abs().max()) == 0.0
        assert float(terms["dyn"][i].abs().max()) > 0.0


@pytest.mark.parametrize(("term", "flag"), [("rew", "reward_grad"), ("repval", "repval_grad")])
def test_reward_and_replay_value_terms_train_the_world_model_features(term: str,
                                                                      flag: str) -> None:
    """Reference ``reward_grad: True`` and ``repval_grad: True``: both losses reach the encoder
    and the RSSM through the posterior features; with the flag off they reach neither."""
    for on in (True, False):
        learner = _learner(**{flag: on})
        data, noise = _inputs(learner)
        grads = _term_grads(learner, data, noise)[term]
        names = _names(learner)
        for prefix in ("encoder.", "rssm."):
            reached = max(float(g.abs().max()) for g, n in zip(grads, names, strict=True)
                          if n.startswith(prefix))
            assert (reached > 0.0) is on, (term, flag, on, prefix, reached)


def test_slow_critic_regulariser_reads_the_slow_critic() -> None:
    """value and repval regularise towards the *slow* critic: moving it moves both losses
    (the online critic is unchanged); without the regulariser it moves neither."""
    for slowreg in (1.0, 0.0):
        learner = _learner(slowreg=slowreg)
        data, noise = _inputs(learner)
        before, _ = update.compute_losses(copy.deepcopy(learner), data, noise)
        with torch.no_grad():
            for p in learner.slow_critic.parameters():
                p.add_(torch.randn_like(p) * 0.2)
        after, _ = update.compute_losses(learner, data, noise)
        for key in ("value", "repval"):
            moved = abs(float(after[key].detach()) - float(before[key].detach()))
            if slowreg:
                assert moved > 1e-4, key
            else:
                assert moved == 0.0, key
        for key in ("dyn", "dec", "rew", "con", "policy"):
            assert float(after[key].detach()) == float(before[key].detach()), key


def test_slow_critic_ema_step_with_a_moving_critic() -> None:
    """After one update at a learning rate > 0: slow <- slow + 0.02 (critic_new - slow)."""
    learner = _learner()
    slow_before = [p.detach().clone() for p in learner.slow_critic.parameters()]
    critic_before = [p.detach().clone() for p in learner.critic.parameters()]
    data, noise = _inputs(learner)
    metrics = update.train_step(learner, data, noise, torch.tensor(learner.config.lr))
    assert float(metrics["learning_rate"]) > 0.0 and float(metrics["skipped"]) == 0.0
    moved = 0.0
    for old, slow, fast, fast_old in zip(slow_before, learner.slow_critic.parameters(),
                                         learner.critic.parameters(), critic_before, strict=True):
        moved = max(moved, float((fast - fast_old).detach().abs().max()))
        torch.testing.assert_close(slow.detach(), old + REFERENCE_SLOW_RATE * (fast.detach() - old),
                                   rtol=1e-6, atol=1e-8)
    assert moved > 1e-4  # the critic did move, so a wrong rate could not pass


def test_a_loss_term_without_a_scale_fails_loudly(monkeypatch: pytest.MonkeyPatch) -> None:
    """One scale table (DreamerV3Config.loss_scales): a term missing from it is an error, not
    a term silently left out of the total."""
    from physlink_gym.agents.dreamerv3.config import DreamerV3Config

    learner = _learner()
    data, noise = _inputs(learner)
    full = DreamerV3Config.loss_scales
    monkeypatch.setattr(DreamerV3Config, "loss_scales",
                        property(lambda self: {k: v for k, v in full.fget(self).items()
                                               if k != "repval"}))
    with pytest.raises(KeyError, match="repval"):
        update.train_step(learner, data, noise, torch.tensor(1e-3))


def test_world_model_loss_total_uses_the_same_scales() -> None:
    from physlink_gym import DreamerV3
    from physlink_gym.data import record_trajectories

    model = DreamerV3("MlpPolicy", "Pendulum-v1", preset="debug", seed=0, sequence_length=16)
    data = record_trajectories(model.env.envs[0], n_episodes=1, seed=0)
    out = model.world_model_loss(data)
    expected = sum(REFERENCE_SCALES[k] * out[k] for k in ("dyn", "rep", "dec", "rew", "con"))
    assert out["total"] == pytest.approx(expected, rel=1e-6)
