import pytest

from posttrain.algorithms import AdaptiveKLController, FixedKLController


def test_adaptive_kl_controller_by_hand() -> None:
    # target 6, horizon 10000, n_steps 256, beta 0.2:
    #   KL = 9:   e = clip(9/6 - 1) = clip(0.5) = 0.2  -> beta = 0.2 * (1 + 0.2 * 0.0256) = 0.201024
    #   KL = 3:   e = clip(-0.5) = -0.2                -> beta = 0.2 * (1 - 0.2 * 0.0256) = 0.198976
    #   KL = 6.6: e = 0.1 (inside the clip)            -> beta = 0.2 * (1 + 0.1 * 0.0256) = 0.200512
    for current_kl, expected in [(9.0, 0.201024), (3.0, 0.198976), (6.6, 0.200512)]:
        controller = AdaptiveKLController(init_kl_coef=0.2, target_kl=6.0, horizon=10_000)
        assert controller.update(current_kl, n_steps=256) == pytest.approx(expected)
        assert controller.kl_coef == pytest.approx(expected)


def test_adaptive_kl_controller_moves_towards_target() -> None:
    above = AdaptiveKLController(0.1, target_kl=1.0, horizon=100)
    below = AdaptiveKLController(0.1, target_kl=1.0, horizon=100)
    on_target = AdaptiveKLController(0.1, target_kl=1.0, horizon=100)
    for _ in range(5):
        above.update(2.0, n_steps=10)
        below.update(0.5, n_steps=10)
        on_target.update(1.0, n_steps=10)
    assert above.kl_coef > 0.1 > below.kl_coef
    assert on_target.kl_coef == pytest.approx(0.1)
    # Five steps of the clipped +-0.2 error, each scaled by 10/100: 0.1 * 1.02^5 and 0.1 * 0.98^5.
    assert above.kl_coef == pytest.approx(0.1 * 1.02**5)
    assert below.kl_coef == pytest.approx(0.1 * 0.98**5)


def test_kl_controller_state_round_trip() -> None:
    controller = AdaptiveKLController(0.2, target_kl=6.0, horizon=10_000)
    controller.update(12.0, n_steps=500)
    resumed = AdaptiveKLController(0.2, target_kl=6.0, horizon=10_000)
    resumed.load_state_dict(controller.state_dict())
    assert resumed.kl_coef == controller.kl_coef != 0.2
    assert resumed.update(1.0, 100) == controller.update(1.0, 100)

    fixed = FixedKLController(0.05)
    assert fixed.update(100.0, n_steps=1000) == 0.05
    restored = FixedKLController(1.0)
    restored.load_state_dict(fixed.state_dict())
    assert restored.kl_coef == 0.05


def test_adaptive_kl_controller_rejects_bad_settings() -> None:
    with pytest.raises(ValueError, match="target_kl"):
        AdaptiveKLController(0.1, target_kl=0.0, horizon=10)
    with pytest.raises(ValueError, match="horizon"):
        AdaptiveKLController(0.1, target_kl=1.0, horizon=0)
