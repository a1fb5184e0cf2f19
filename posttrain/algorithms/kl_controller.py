"""Controllers for the KL-penalty coefficient of RLHF with a KL-shaped reward."""

from __future__ import annotations


class FixedKLController:
    """A KL coefficient that never changes; the same interface as ``AdaptiveKLController``.

    Args:
        kl_coef: The coefficient.
    """

    def __init__(self, kl_coef: float) -> None:
        self.kl_coef = float(kl_coef)

    def update(self, current_kl: float, n_steps: int) -> float:
        """Returns the unchanged coefficient; arguments are accepted for interface compatibility."""
        del current_kl, n_steps
        return self.kl_coef

    def state_dict(self) -> dict[str, float]:
        """Returns the state to save in a checkpoint."""
        return {"kl_coef": self.kl_coef}

    def load_state_dict(self, state: dict[str, float]) -> None:
        """Restores the state saved by ``state_dict``."""
        self.kl_coef = float(state["kl_coef"])


class AdaptiveKLController:
    """Proportional controller steering the observed KL towards a target (Ziegler et al., arXiv
    1909.08593 §2.2).

    Each update::

        error = clip(current_kl / target_kl - 1, -0.2, 0.2)
        kl_coef *= 1 + error * n_steps / horizon

    The clip bounds how fast the coefficient can move when the KL is far off target.

    Args:
        init_kl_coef: Starting coefficient (beta).
        target_kl: The KL (in nats, per sequence or per token, whichever the caller measures) to aim for.
        horizon: Steps over which a full proportional correction is spread; larger is slower.

    Raises:
        ValueError: If ``target_kl`` or ``horizon`` is not positive.
    """

    def __init__(self, init_kl_coef: float, target_kl: float, horizon: int) -> None:
        if target_kl <= 0:
            raise ValueError(f"target_kl must be positive, got {target_kl}")
        if horizon <= 0:
            raise ValueError(f"horizon must be positive, got {horizon}")
        self.kl_coef = float(init_kl_coef)
        self.target_kl = float(target_kl)
        self.horizon = int(horizon)

    def update(self, current_kl: float, n_steps: int) -> float:
        """Adjusts the coefficient after ``n_steps`` steps that measured ``current_kl``.

        Args:
            current_kl: The KL observed for the latest batch, as a Python float.
            n_steps: Number of steps (e.g. samples, as in the paper) since the previous update.

        Returns:
            The new coefficient.
        """
        error = min(max(current_kl / self.target_kl - 1.0, -0.2), 0.2)
        self.kl_coef *= 1.0 + error * n_steps / self.horizon
        return self.kl_coef

    def state_dict(self) -> dict[str, float]:
        """Returns the state to save in a checkpoint.

        Only the coefficient is state; ``target_kl`` and ``horizon`` are settings that come from the
        recipe, so a resumed run may change them.
        """
        return {"kl_coef": self.kl_coef}

    def load_state_dict(self, state: dict[str, float]) -> None:
        """Restores the state saved by ``state_dict``."""
        self.kl_coef = float(state["kl_coef"])
