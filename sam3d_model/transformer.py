"""Two-stream Mixture-of-Transformers block (SAM 3D's geometry model backbone).

Shape and layout tokens have their own attention, cross-attention and MLP weights and
share one time modulation (adaLN, zero-initialised gates, so every block starts as the
identity). Shape tokens attend to shape tokens only; layout tokens attend to layout
tokens and to *detached* shape tokens, so the layout loss never moves the shape stream.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from sam3d_model.config import ModelConfig

_SUBLAYERS = 3  # self-attention, cross-attention, MLP: shift, scale, gate each


def modulate(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    return x * (1 + scale) + shift


class Stream(nn.Module):
    """One modality's weights inside a block."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        w = cfg.width
        self.heads = cfg.heads
        self.norm1 = nn.LayerNorm(w, elementwise_affine=False)
        self.qkv = nn.Linear(w, 3 * w)
        self.proj = nn.Linear(w, w)
        self.norm2 = nn.LayerNorm(w, elementwise_affine=False)
        self.cross_q = nn.Linear(w, w)
        self.cross_kv = nn.Linear(w, 2 * w)
        self.cross_proj = nn.Linear(w, w)
        self.norm3 = nn.LayerNorm(w, elementwise_affine=False)
        hidden = int(w * cfg.mlp_ratio)
        self.mlp = nn.Sequential(nn.Linear(w, hidden), nn.GELU(approximate="tanh"), nn.Linear(hidden, w))

    def split(self, x: torch.Tensor) -> torch.Tensor:
        """(B, N, W) -> (B, heads, N, W / heads)."""
        b, n, w = x.shape
        return x.view(b, n, self.heads, w // self.heads).transpose(1, 2)

    def merge(self, x: torch.Tensor) -> torch.Tensor:
        b, h, n, d = x.shape
        return x.transpose(1, 2).reshape(b, n, h * d)

    def qkv_heads(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        q, k, v = self.qkv(x).chunk(3, dim=-1)
        return self.split(q), self.split(k), self.split(v)

    def cross(self, x: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        k, v = self.cross_kv(cond).chunk(2, dim=-1)
        out = F.scaled_dot_product_attention(self.split(self.cross_q(x)), self.split(k), self.split(v))
        return self.cross_proj(self.merge(out))


class MoTBlock(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.shape = Stream(cfg)
        self.layout = Stream(cfg)
        project = nn.Linear(cfg.width, 3 * _SUBLAYERS * cfg.width)
        self.modulation = nn.Sequential(nn.SiLU(), project)
        nn.init.zeros_(project.weight)
        nn.init.zeros_(project.bias)

    def forward(
        self, s: torch.Tensor, lay: torch.Tensor, c: torch.Tensor, cond: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """s (B, N_s, W) shape tokens, lay (B, N_l, W) layout tokens, c (B, W) time
        embedding, cond (B, M, W) condition tokens -> updated (s, lay)."""
        (sh1, sc1, g1, sh2, sc2, g2, sh3, sc3, g3) = self.modulation(c)[:, None].chunk(3 * _SUBLAYERS, dim=-1)
        S, L = self.shape, self.layout

        qs, ks, vs = S.qkv_heads(modulate(S.norm1(s), sh1, sc1))
        ql, kl, vl = L.qkv_heads(modulate(L.norm1(lay), sh1, sc1))
        s_att = F.scaled_dot_product_attention(qs, ks, vs)
        l_att = F.scaled_dot_product_attention(
            ql, torch.cat([ks.detach(), kl], dim=2), torch.cat([vs.detach(), vl], dim=2)
        )
        s = s + g1 * S.proj(S.merge(s_att))
        lay = lay + g1 * L.proj(L.merge(l_att))

        s = s + g2 * S.cross(modulate(S.norm2(s), sh2, sc2), cond)
        lay = lay + g2 * L.cross(modulate(L.norm2(lay), sh2, sc2), cond)

        s = s + g3 * S.mlp(modulate(S.norm3(s), sh3, sc3))
        lay = lay + g3 * L.mlp(modulate(L.norm3(lay), sh3, sc3))
        return s, lay
