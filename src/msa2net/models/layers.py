"""Layout helpers and the decoder's building blocks: patch expansion, LKA and DAE-Former blocks.

Layout vocabulary used across the model (see ``docs`` of :mod:`msa2net.models.msa2net`):

- ``tokens(F)``: (B, C, H, W) -> (B, H*W, C), the proper flatten (channels last).
- ``unflatten(T, H, W)``: the proper inverse of ``tokens``.
- ``rho(T, H, W)``: contiguous tokens (B, H*W, C) read as a (B, C, H, W) map without permuting.
  Channels and positions get mixed. The authors' trained weights depend on it, so it is kept.
- ``rho_inv(M)``: a (B, C, H, W) map read as (B, H*W, C) tokens without permuting.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

DECODER_LN_EPS = 1e-5


def tokens(x: torch.Tensor) -> torch.Tensor:
    """(B, C, H, W) -> (B, H*W, C), position index h*W + w."""
    b, c, h, w = x.shape
    return x.permute(0, 2, 3, 1).reshape(b, h * w, c)


def unflatten(t: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """(B, H*W, C) -> (B, C, H, W); inverse of :func:`tokens`."""
    b, n, c = t.shape
    return t.reshape(b, h, w, c).permute(0, 3, 1, 2)


def rho(t: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """(B, H*W, C) -> (B, C, H, W) as a raw row-major reinterpretation (no permute)."""
    b, n, c = t.shape
    return t.reshape(b, c, h, w)


def rho_inv(x: torch.Tensor) -> torch.Tensor:
    """(B, C, H, W) -> (B, H*W, C) as a raw row-major reinterpretation (no permute)."""
    b, c, h, w = x.shape
    return x.reshape(b, h * w, c)


class ChannelLayerNorm(nn.LayerNorm):
    """LayerNorm over the channel axis of a (B, C, H, W) map, at every pixel."""

    def __init__(self, channels: int, eps: float = DECODER_LN_EPS) -> None:
        super().__init__(channels, eps=eps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # (B, C, H, W) -> (B, H, W, C) -> norm -> (B, C, H, W)
        return super().forward(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)


class PatchExpand(nn.Module):
    """Doubles the resolution of a token map and halves its channels (Swin-Unet style).

    A bias-free Linear C -> scale^2 * C_out; each token becomes a ``scale x scale`` block whose position
    (p1, p2) takes the channel slice starting at ``(scale*p1 + p2) * C_out`` (einops
    ``b h w (p1 p2 c) -> b (h p1) (w p2) c``); then LayerNorm(C_out).

    Args:
        dim: input channels C.
        scale: 2 for the inner stages, 4 for the final expansion.
        out_dim: C_out; by default C/2 for scale 2 (the authors' encoder doubles channels per stage) and C for
            scale 4. Encoders with other channel progressions pass the next skip's channels.
    """

    def __init__(self, dim: int, scale: int = 2, out_dim: int | None = None) -> None:
        super().__init__()
        self.scale = scale
        self.out_dim = out_dim or (dim // 2 if scale == 2 else dim)
        self.expand = nn.Linear(dim, scale * scale * self.out_dim, bias=False)
        self.norm = nn.LayerNorm(self.out_dim, eps=DECODER_LN_EPS)

    def forward(self, t: torch.Tensor, h: int, w: int) -> torch.Tensor:
        """(B, H*W, C) -> (B, (s*H)*(s*W), C_out)."""
        b = t.shape[0]
        s, c = self.scale, self.out_dim
        x = self.expand(t).reshape(b, h, w, s, s, c)  # (B, H, W, p1, p2, C_out)
        x = x.permute(0, 1, 3, 2, 4, 5).reshape(b, h * s * w * s, c)  # (B, (H p1)(W p2), C_out)
        return self.norm(x)


# ----------------------------------------------------------------------------------------------
# LKA block (D-LKA Net's 2D large-kernel attention block), NCHW in and out


class SpatialGatingUnit(nn.Module):
    """Large-kernel attention: 5x5 depthwise, 7x7 depthwise dilated 3, then 1x1; gates its input."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.conv0 = nn.Conv2d(dim, dim, 5, padding=2, groups=dim)
        self.conv_spatial = nn.Conv2d(dim, dim, 7, padding=9, groups=dim, dilation=3)
        self.conv1 = nn.Conv2d(dim, dim, 1)

    def forward(self, u: torch.Tensor) -> torch.Tensor:
        a = self.conv0(u)
        if a.device.type == "cpu" and torch.is_autocast_enabled("cpu"):
            # torch's CPU bf16 kernel for this dilated depthwise conv intermittently returns non-finite weight
            # gradients; it is cheap, so it runs in float32 there
            with torch.autocast("cpu", enabled=False):
                a = self.conv_spatial(a.float())
        else:
            a = self.conv_spatial(a)
        return u * self.conv1(a)


class LKAAttention(nn.Module):
    def __init__(self, dim: int) -> None:
        super().__init__()
        self.proj_1 = nn.Conv2d(dim, dim, 1)
        self.act = nn.GELU()
        self.spatial_gating_unit = SpatialGatingUnit(dim)
        self.proj_2 = nn.Conv2d(dim, dim, 1)

    def forward(self, y: torch.Tensor) -> torch.Tensor:
        # the residual inside is the block's *normalised* input y, as in the authors' code
        return self.proj_2(self.spatial_gating_unit(self.act(self.proj_1(y)))) + y


class ConvMlp(nn.Module):
    """1x1 conv C -> 4C, 3x3 depthwise conv, GELU, 1x1 conv 4C -> C (NCHW)."""

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Conv2d(dim, hidden, 1)
        self.dwconv = nn.Conv2d(hidden, hidden, 3, padding=1, groups=hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Conv2d(hidden, dim, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.dwconv(self.fc1(x))))


class DepthwiseConv(nn.Module):
    """3x3 depthwise conv with bias applied to tokens: unflatten, conv, flatten."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.dwconv = nn.Conv2d(dim, dim, 3, padding=1, groups=dim)

    def forward(self, t: torch.Tensor, h: int, w: int) -> torch.Tensor:
        return tokens(self.dwconv(unflatten(t, h, w)))


class LKABlock(nn.Module):
    """x + g1 * (LKA(LN(x)) + LN(x)); x + g2 * MLP(LN(x)). NCHW in and out."""

    def __init__(self, dim: int, mlp_ratio: int = 4, layer_scale_init: float = 1e-2) -> None:
        super().__init__()
        self.norm1 = ChannelLayerNorm(dim)
        self.attn = LKAAttention(dim)
        self.norm2 = ChannelLayerNorm(dim)
        self.mlp = ConvMlp(dim, dim * mlp_ratio)
        self.layer_scale_1 = nn.Parameter(torch.full((dim,), layer_scale_init))
        self.layer_scale_2 = nn.Parameter(torch.full((dim,), layer_scale_init))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.layer_scale_1[:, None, None] * self.attn(self.norm1(x))
        return x + self.layer_scale_2[:, None, None] * self.mlp(self.norm2(x))


# ----------------------------------------------------------------------------------------------
# DAE-Former dual transformer block (efficient spatial attention + channel attention), tokens in and out


class EfficientAttention(nn.Module):
    """Single-head efficient attention (Shen et al.): keys softmaxed over positions, queries over channels."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.keys = nn.Conv2d(dim, dim, 1)
        self.queries = nn.Conv2d(dim, dim, 1)
        self.values = nn.Conv2d(dim, dim, 1)
        self.reprojection = nn.Conv2d(dim, dim, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        keys = self.keys(x).reshape(b, c, h * w).softmax(dim=2)
        queries = self.queries(x).reshape(b, c, h * w).softmax(dim=1)
        values = self.values(x).reshape(b, c, h * w)
        context = keys @ values.transpose(1, 2)  # (B, C, C)
        attended = (context.transpose(1, 2) @ queries).reshape(b, c, h, w)
        return self.reprojection(attended)


class ChannelAttention(nn.Module):
    """Cross-covariance (channel) attention with L2-normalised q, k and a learned per-head temperature."""

    def __init__(self, dim: int, num_heads: int = 8) -> None:
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"channel attention needs channels ({dim}) divisible by its {num_heads} heads")
        self.num_heads = num_heads
        self.temperature = nn.Parameter(torch.ones(num_heads, 1, 1))
        self.qkv = nn.Linear(dim, dim * 3, bias=False)
        self.proj = nn.Linear(dim, dim)

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        b, n, c = t.shape
        qkv = self.qkv(t).reshape(b, n, 3, self.num_heads, c // self.num_heads).permute(2, 0, 3, 4, 1)
        q, k, v = qkv[0], qkv[1], qkv[2]  # each (B, heads, d, N)
        q = F.normalize(q, dim=-1)
        k = F.normalize(k, dim=-1)
        attn = ((q @ k.transpose(-2, -1)) * self.temperature).softmax(dim=-1)  # (B, heads, d, d)
        out = (attn @ v).permute(0, 3, 1, 2).reshape(b, n, c)  # heads concatenated per token
        return self.proj(out)


class MixFFN(nn.Module):
    """Linear -> 3x3 depthwise conv on the unflattened map -> GELU -> Linear (tokens in and out)."""

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.dwconv = DepthwiseConv(hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, t: torch.Tensor, h: int, w: int) -> torch.Tensor:
        return self.fc2(self.act(self.dwconv(self.fc1(t), h, w)))


class DualTransformerBlock(nn.Module):
    """DAE-Former block: efficient attention, MixFFN, channel attention, MixFFN; pre-norm residuals."""

    def __init__(self, dim: int, mlp_ratio: int = 4, num_heads: int = 8) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=DECODER_LN_EPS)
        self.attn = EfficientAttention(dim)
        self.norm2 = nn.LayerNorm(dim, eps=DECODER_LN_EPS)
        self.mlp1 = MixFFN(dim, dim * mlp_ratio)
        self.norm3 = nn.LayerNorm(dim, eps=DECODER_LN_EPS)
        self.channel_attn = ChannelAttention(dim, num_heads)
        self.norm4 = nn.LayerNorm(dim, eps=DECODER_LN_EPS)
        self.mlp2 = MixFFN(dim, dim * mlp_ratio)

    def forward(self, t: torch.Tensor, h: int, w: int) -> torch.Tensor:
        t = t + tokens(self.attn(unflatten(self.norm1(t), h, w)))
        t = t + self.mlp1(self.norm2(t), h, w)
        t = t + self.channel_attn(self.norm3(t))
        return t + self.mlp2(self.norm4(t), h, w)
