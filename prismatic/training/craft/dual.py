"""The Lagrange multiplier λ (projected dual ascent) and the conflict-ratio window (CRAFT_SPEC.md, step 4).

    λ <- clip(λ + η (L̄_ret - ε), 0, λ_max)        L̄_ret = the optimizer step's global mean retention loss

λ lives on the training device as a float64 0-dim tensor: updating it from a device-side L̄_ret and
using it in `combine` needs no host sync, and float64 keeps tiny increments η·(L̄_ret - ε) over 100k+
steps from being rounded away. Both classes checkpoint to plain Python numbers (torch.load(weights_only)).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from prismatic.training.craft.config import CraftConfig


class DualState:
    """λ and its projected dual ascent; with `enabled=False` λ stays at its initial value."""

    def __init__(
        self,
        initial_lambda: float,
        budget: float,
        lr: float,
        lambda_max: float,
        enabled: bool = True,
        device: torch.device | str = "cpu",
    ) -> None:
        if initial_lambda < 0 or budget < 0 or lr < 0:
            raise ValueError(f"initial λ, budget ε and dual lr η must be >= 0, got {initial_lambda}, {budget}, {lr}")
        if lambda_max < initial_lambda:
            raise ValueError(f"λ_max ({lambda_max}) must be >= the initial λ ({initial_lambda})")
        self.budget = float(budget)  # ε
        self.lr = float(lr)  # η
        self.lambda_max = float(lambda_max)
        self.enabled = bool(enabled)
        self.lam = torch.tensor(float(initial_lambda), dtype=torch.float64, device=device)  # λ, 0-dim
        self.num_updates = 0  # optimizer steps seen (counted in fixed-λ mode too)

    @classmethod
    def from_config(cls, config: CraftConfig, device: torch.device | str = "cpu") -> DualState:
        return cls(
            initial_lambda=config.retention_weight,
            budget=config.retention_budget,
            lr=config.dual_lr,
            lambda_max=config.lambda_max,
            enabled=config.enable_dual,
            device=device,
        )

    @property
    def value(self) -> Tensor:
        """λ as a float32 0-dim tensor on the state's device (what `combine` multiplies g_ret with)."""
        return self.lam.float()

    def update(self, retention_loss: Tensor | float) -> Tensor:
        """One dual ascent step with the step's global mean L̄_ret; returns the new λ (float64, 0-dim).

        A non-finite L̄_ret makes λ non-finite on purpose (visible in the logs); the trainer stops on a
        non-finite retention loss before calling this.
        """
        self.num_updates += 1
        if self.enabled:
            if isinstance(retention_loss, Tensor):
                if retention_loss.numel() != 1:
                    raise ValueError(f"L̄_ret must be a scalar, got shape {tuple(retention_loss.shape)}")
                # A device-side loss on another device than λ would need a copy (a sync on CUDA).
                loss: Tensor | float = retention_loss.reshape(()).to(device=self.lam.device, dtype=torch.float64)
            else:
                loss = float(retention_loss)  # host value: a kernel argument, no host-to-device copy
            self.lam = (self.lam + self.lr * (loss - self.budget)).clamp(0.0, self.lambda_max)
        return self.lam

    def reset(self, value: float) -> None:
        """Set λ (a resume with a changed --craft_retention_weight); the update count is kept."""
        if not 0.0 <= value <= self.lambda_max:
            raise ValueError(f"λ={value} lies outside [0, craft_lambda_max={self.lambda_max}]")
        self.lam = torch.tensor(float(value), dtype=torch.float64, device=self.lam.device)

    def to(self, device: torch.device | str) -> DualState:
        self.lam = self.lam.to(device)
        return self

    def state_dict(self) -> dict[str, Any]:
        return {"lambda": float(self.lam), "num_updates": self.num_updates}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        missing = {"lambda", "num_updates"} - set(state)
        if missing:
            raise KeyError(f"CRaFT dual state is missing {sorted(missing)}")
        lam = float(state["lambda"])
        if not 0.0 <= lam <= self.lambda_max:
            raise ValueError(
                f"checkpointed λ={lam} lies outside [0, craft_lambda_max={self.lambda_max}]; resume with the "
                f"run's original --craft_lambda_max"
            )
        self.lam = torch.tensor(lam, dtype=torch.float64, device=self.lam.device)
        self.num_updates = int(state["num_updates"])


class ConflictRatioMeter:
    """Conflict ratio over a logging window: Σ conflicting tensors / Σ tensors that received both gradients.

    Accepts host ints or device tensors (e.g. `ProjectionStats.num_conflicting`); device counts stay on the
    device until `compute()` (called at log steps), so accumulating them costs no host sync.
    """

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self.conflicting: int | Tensor = 0
        self.both: int | Tensor = 0
        self.steps = 0

    def update(self, num_conflicting: Tensor | int, num_both: Tensor | int) -> None:
        self.conflicting = self.conflicting + num_conflicting
        self.both = self.both + num_both
        self.steps += 1

    def compute(self) -> float:
        """The window's ratio in [0, 1] (0 when no tensor received both gradients); syncs device counts."""
        conflicting, both = int(self.conflicting), int(self.both)
        if not 0 <= conflicting <= both:
            raise ValueError(f"conflict counts are inconsistent: {conflicting} conflicting of {both}")
        return conflicting / both if both > 0 else 0.0

    def compute_and_reset(self) -> float:
        ratio = self.compute()
        self.reset()
        return ratio

    def state_dict(self) -> dict[str, int]:
        return {"conflicting": int(self.conflicting), "both": int(self.both), "steps": self.steps}

    def load_state_dict(self, state: dict[str, int]) -> None:
        missing = {"conflicting", "both", "steps"} - set(state)
        if missing:
            raise KeyError(f"conflict-ratio state is missing {sorted(missing)}")
        if not 0 <= int(state["conflicting"]) <= int(state["both"]):
            raise ValueError(f"inconsistent conflict-ratio state {state}")
        self.conflicting = int(state["conflicting"])
        self.both = int(state["both"])
        self.steps = int(state["steps"])
