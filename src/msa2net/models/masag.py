"""Multi-Scale Adaptive Spatial Attention Gate (MASAG), the skip-connection gate of MSA2Net."""

from __future__ import annotations

import torch
from torch import nn


class MultiScaleContext(nn.Module):
    """F = BN(L(X) + Gamma(G)): local context of the skip X and global context of the gate G.

    L: depthwise 3x3 -> BN -> ReLU -> full 3x3 dilated 2 -> BN -> ReLU -> 1x1 -> BN.
    Gamma: BN(1x1 conv over [mean_c(G); max_c(G)]), one channel broadcast over C.
    """

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.local_dw = nn.Conv2d(dim, dim, 3, padding=1, groups=dim)
        self.local_dw_bn = nn.BatchNorm2d(dim)
        self.local_dilated = nn.Conv2d(dim, dim, 3, padding=2, dilation=2)
        self.local_dilated_bn = nn.BatchNorm2d(dim)
        self.local_proj = nn.Conv2d(dim, dim, 1)
        self.local_proj_bn = nn.BatchNorm2d(dim)
        self.global_proj = nn.Conv2d(2, 1, 1)
        self.global_bn = nn.BatchNorm2d(1)
        self.bn = nn.BatchNorm2d(dim)
        self.relu = nn.ReLU()

    def forward(self, skip: torch.Tensor, gate: torch.Tensor) -> torch.Tensor:
        local = self.relu(self.local_dw_bn(self.local_dw(skip)))
        local = self.relu(self.local_dilated_bn(self.local_dilated(local)))
        local = self.local_proj_bn(self.local_proj(local))
        pooled = torch.cat([gate.mean(dim=1, keepdim=True), gate.amax(dim=1, keepdim=True)], dim=1)  # (B, 2, H, W)
        global_ = self.global_bn(self.global_proj(pooled))  # (B, 1, H, W)
        return self.bn(local + global_)


class MASAG(nn.Module):
    """MASAG(X, G) for a skip map X and a gate map G of the same shape (B, C, H, W).

    The two inputs are re-weighted by a 2-way softmax selection computed from their multi-scale context,
    interact through mutual sigmoid gating, and the result spatially re-weights X. The caller adds G.
    """

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.context = MultiScaleContext(dim)
        self.selection = nn.Conv2d(dim, 2, 1)
        self.interaction_proj = nn.Conv2d(dim, dim, 1)
        self.interaction_bn = nn.BatchNorm2d(dim)
        self.out_proj = nn.Conv2d(dim, dim, 1)
        self.out_bn = nn.BatchNorm2d(dim)

    def forward(self, skip: torch.Tensor, gate: torch.Tensor) -> torch.Tensor:
        weights = self.selection(self.context(skip, gate)).softmax(dim=1)  # (B, 2, H, W)
        skip_w = skip + weights[:, 0:1] * skip
        gate_w = gate + weights[:, 1:2] * gate
        interaction = (torch.sigmoid(gate_w) * skip_w) * (torch.sigmoid(skip_w) * gate_w)
        spatial = torch.sigmoid(self.interaction_bn(self.interaction_proj(interaction)))
        return self.out_bn(self.out_proj(spatial * skip))
