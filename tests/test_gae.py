"""PPO's math (sttrl/algorithms/gae.py) on cases small enough to check by hand."""
import pytest
import torch

from sttrl.algorithms.gae import gae, token_rewards, value_loss, whiten
from sttrl.algorithms.grpo import grpo_loss

# two responses, lengths 3 and 2 (right-padded)
MASK = torch.tensor([[1.0, 1, 1], [1, 1, 0]])
VALUES = torch.tensor([[0.5, 0.2, 0.1], [0.3, 0.6, 99.0]])  # 99: padding, must not leak in


def test_the_outcome_reward_sits_on_each_responses_last_token():
    assert token_rewards([1.0, 0.5], MASK).tolist() == [[0, 0, 1], [0, 0.5, 0]]


def test_lambda_1_gamma_1_gives_reward_minus_value():
    adv, ret = gae(token_rewards([1.0, 0.0], MASK), VALUES, MASK, gamma=1.0, lambd=1.0)
    want = torch.tensor([[1 - 0.5, 1 - 0.2, 1 - 0.1], [0 - 0.3, 0 - 0.6, 0]])
    assert torch.allclose(adv, want)
    assert torch.allclose(ret, torch.tensor([[1.0, 1, 1], [0, 0, 0]]))  # Monte Carlo returns


def test_lambda_0_gives_the_one_step_td_error():
    adv, ret = gae(token_rewards([1.0, 0.0], MASK), VALUES, MASK, gamma=0.5, lambd=0.0)
    # delta_t = r_t + gamma V_{t+1} - V_t, with V = 0 after the last token
    want = torch.tensor([[0.5 * 0.2 - 0.5, 0.5 * 0.1 - 0.2, 1 - 0.1], [0.5 * 0.6 - 0.3, -0.6, 0]])
    assert torch.allclose(adv, want)
    assert torch.allclose(ret, (want + VALUES) * MASK)


def test_lambda_095_by_hand():
    adv, _ = gae(token_rewards([1.0, 0.0], MASK), VALUES, MASK)  # defaults: gamma 1, lambda 0.95
    # row 0: deltas -0.3, -0.1, 0.9; A2 = 0.9, A1 = -0.1 + 0.95 A2, A0 = -0.3 + 0.95 A1
    assert adv[0].tolist() == pytest.approx([0.41725, 0.755, 0.9])
    # row 1: deltas 0.3, -0.6; A1 = -0.6, A0 = 0.3 - 0.95 * 0.6
    assert adv[1].tolist() == pytest.approx([0.3 - 0.57, -0.6, 0.0])


def test_padding_changes_nothing():
    """A padded row gets exactly what it gets alone, and zeros where there is no token."""
    rewards = token_rewards([1.0, 1.0], MASK)
    adv, ret = gae(rewards, VALUES, MASK)
    alone, alone_ret = gae(torch.tensor([[0.0, 1.0]]), VALUES[1:, :2], torch.ones(1, 2))
    assert torch.equal(adv[1, :2], alone[0]) and torch.equal(ret[1, :2], alone_ret[0])
    assert adv[1, 2] == 0 and ret[1, 2] == 0


def test_whitening_uses_valid_tokens_only():
    x = torch.tensor([[1.0, 2, 3], [4, 5, 1000]])
    w = whiten(x, MASK)
    valid = w[MASK.bool()]
    assert valid.mean().abs() < 1e-6 and valid.std(unbiased=False) == pytest.approx(1, abs=1e-6)
    assert w[1, 2] == 0
    assert torch.allclose(valid, whiten(torch.tensor([[1.0, 2, 3, 4, 5]]), torch.ones(1, 5))[0])


def value_loss_and_grad(v: float, old: float = 0.0, ret: float = 1.0, clip: float = 0.2):
    values = torch.tensor([[v, 7.0]], requires_grad=True)  # the second token is padding
    loss, stats = value_loss(values, torch.tensor([[old, 0.0]]), torch.tensor([[ret, 0.0]]),
                             torch.tensor([[1.0, 0.0]]), clip)
    loss.backward()
    return loss.item(), values.grad[0].tolist(), stats


def test_the_value_clip():
    # inside the clip range: plain 0.5 (V - R)^2, gradient V - R
    loss, grad, stats = value_loss_and_grad(0.1)
    assert loss == pytest.approx(0.5 * 0.9**2) and grad == pytest.approx([-0.9, 0])
    assert stats["value_clip_frac"] == 0
    # moved past old + 0.2 towards R: the clipped error is the larger, so no further push
    loss, grad, stats = value_loss_and_grad(0.5)
    assert loss == pytest.approx(0.5 * 0.8**2) and grad == [0, 0]
    assert stats["value_clip_frac"] == 1
    # moved away from R: the unclipped error is the larger and pulls the value back
    loss, grad, _ = value_loss_and_grad(-0.5)
    assert loss == pytest.approx(0.5 * 1.5**2) and grad == pytest.approx([-1.5, 0])


def test_policy_loss_takes_per_token_advantages():
    lp = torch.log(torch.tensor([[0.5, 0.4, 0.3], [0.2, 0.6, 0.9]]))
    old = lp.detach() + 0.1
    per_response = grpo_loss(lp, old, None, torch.tensor([1.0, -2.0]), MASK)[0]
    per_token = grpo_loss(lp, old, None, torch.tensor([[1.0, 1, 1], [-2, -2, -2]]), MASK)[0]
    assert per_token == pytest.approx(per_response.item())
    # a token with zero advantage contributes nothing (no KL here)
    only_first = grpo_loss(lp, old, None, torch.tensor([[1.0, 0, 0], [0, 0, 0]]), MASK)[0]
    ratio = torch.exp(lp[0, 0] - old[0, 0])
    assert only_first == pytest.approx(-ratio.item())  # within the clip range


def test_the_value_clip_default_is_05():
    """OpenRLHF, verl and TTRL clip values at 0.5."""
    import inspect

    from sttrl.config import Config

    assert Config().value_clip == 0.5
    assert inspect.signature(value_loss).parameters["value_clip"].default == 0.5
