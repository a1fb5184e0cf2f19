import math

import pytest
import torch

from posttrain.algorithms import KL_ESTIMATORS, kl_estimate

LOG2 = math.log(2.0)


def test_kl_estimators_by_hand() -> None:
    # Token 0: p = 0.5, q = 0.25, d = log p - log q = log 2, r = q / p = 0.5.
    #   k1 = 0.693147, k2 = 0.5 * 0.693147^2 = 0.240227, k3 = (0.5 - 1) - log 0.5 = 0.193147
    # Token 1: p = 0.25, q = 0.5, d = -log 2, r = 2.
    #   k1 = -0.693147, k2 = 0.240227, k3 = (2 - 1) - log 2 = 0.306853
    logprobs_BT = torch.tensor([[math.log(0.5), math.log(0.25)]], dtype=torch.float64)
    ref_logprobs_BT = torch.tensor([[math.log(0.25), math.log(0.5)]], dtype=torch.float64)
    expected = {
        "k1": [LOG2, -LOG2],
        "k2": [0.5 * LOG2**2, 0.5 * LOG2**2],
        "k3": [0.193147, 0.306853],
    }
    for kind, values in expected.items():
        torch.testing.assert_close(
            kl_estimate(logprobs_BT, ref_logprobs_BT, kind),
            torch.tensor([values], dtype=torch.float64),
            atol=1e-6,
            rtol=0,
        )


@pytest.mark.parametrize("seed", range(3))
def test_k2_and_k3_are_non_negative(seed: int) -> None:
    generator = torch.Generator().manual_seed(seed)
    logprobs_BT = 3 * torch.randn(16, 32, generator=generator)
    ref_logprobs_BT = 3 * torch.randn(16, 32, generator=generator)
    assert (kl_estimate(logprobs_BT, ref_logprobs_BT, "k2") >= 0).all()
    assert (kl_estimate(logprobs_BT, ref_logprobs_BT, "k3") >= 0).all()
    # k1 is signed: the same random pairs must give some negative values.
    assert (kl_estimate(logprobs_BT, ref_logprobs_BT, "k1") < 0).any()


def test_k1_and_k3_are_unbiased_for_kl_policy_to_reference() -> None:
    # Tokens are sampled from the policy p; the estimators must average to KL(p || q), not KL(q || p).
    generator = torch.Generator().manual_seed(0)
    p = torch.tensor([0.9, 0.05, 0.05], dtype=torch.float64)
    q = torch.tensor([0.4, 0.3, 0.3], dtype=torch.float64)
    kl_pq = (p * (p / q).log()).sum().item()  # 0.5507
    kl_qp = (q * (q / p).log()).sum().item()  # 0.7507
    samples = torch.multinomial(p, 200_000, replacement=True, generator=generator)
    logprobs = p.log()[samples].unsqueeze(0)
    ref_logprobs = q.log()[samples].unsqueeze(0)
    for kind in ("k1", "k3"):
        estimate = kl_estimate(logprobs, ref_logprobs, kind).mean().item()
        assert estimate == pytest.approx(kl_pq, abs=0.01), kind
        assert abs(estimate - kl_qp) > 0.1, kind
    # k2 is biased: E_p[0.5 d^2] = 0.4564 here, not KL(p || q).
    assert kl_estimate(logprobs, ref_logprobs, "k2").mean().item() == pytest.approx(0.4564, abs=0.01)


def test_log_ratio_clamp_keeps_k3_finite() -> None:
    # d = 100 would give exp(-d) underflow harmlessly, but d = -100 gives exp(100): inf in float32.
    logprobs_BT = torch.tensor([[0.0, -100.0]])
    ref_logprobs_BT = torch.tensor([[-100.0, 0.0]])
    k3 = kl_estimate(logprobs_BT, ref_logprobs_BT, "k3")
    # Clamped to |d| = 20: exp(-20) - 1 + 20 = 19.000000002, and exp(20) - 1 - 20 = 4.85165e8.
    torch.testing.assert_close(k3, torch.tensor([[19.0, math.exp(20) - 21]]))
    k1 = kl_estimate(logprobs_BT, ref_logprobs_BT, "k1", max_log_ratio=5.0)
    torch.testing.assert_close(k1, torch.tensor([[5.0, -5.0]]))


def test_unknown_kind_lists_kinds() -> None:
    assert KL_ESTIMATORS == ("k1", "k2", "k3")
    with pytest.raises(ValueError, match="k1, k2, k3"):
        kl_estimate(torch.zeros(1, 1), torch.zeros(1, 1), "k4")
