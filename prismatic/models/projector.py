"""Projectors into the LLM's embedding space (facts §2.2, §2.6)."""

from __future__ import annotations

import torch
from torch import nn


class VisionLanguageProjector(nn.Module):
    """Fused patch features -> LLM embeddings: fc1, GELU, fc2, GELU, fc3 (2176 -> 8704 -> 896 -> 896)."""

    def __init__(self, dims: tuple[int, int, int, int]) -> None:
        super().__init__()
        vision_dim, mid_dim, llm_dim, out_dim = dims
        self.fc1 = nn.Linear(vision_dim, mid_dim)
        self.fc2 = nn.Linear(mid_dim, llm_dim)
        self.fc3 = nn.Linear(llm_dim, out_dim)
        self.act = nn.GELU()

    def forward(self, patches: torch.Tensor) -> torch.Tensor:
        """(B, P, vision_dim) -> (B, P, llm_dim)."""
        return self.fc3(self.act(self.fc2(self.act(self.fc1(patches)))))


class ProprioProjector(nn.Module):
    """Normalised proprio -> one conditioning token for the action head: fc1, GELU, fc2 (8 -> 896 -> 896).

    The token is NOT inserted into the LLM sequence (unlike OFT); the action head appends it to the
    action-query states.
    """

    def __init__(self, proprio_dim: int, llm_dim: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(proprio_dim, llm_dim)
        self.fc2 = nn.Linear(llm_dim, llm_dim)
        self.act = nn.GELU()

    def forward(self, proprio: torch.Tensor) -> torch.Tensor:
        """(B, proprio_dim) -> (B, 1, llm_dim)."""
        return self.fc2(self.act(self.fc1(proprio))).unsqueeze(1)
