"""The velocity network: shape latents + layout tokens -> velocities, given t, d and condition.

A state is a dict of tensors, one per modality (see :data:`MODALITIES`):
shape (B, r³, C) normalised VAE latents, rotation (B, 6), translation (B, 3), scale (B, 1).
"""

from __future__ import annotations

import math

import torch
from torch import nn

from sam3d_model.config import ModelConfig
from sam3d_model.transformer import MoTBlock, modulate

#: Layout modalities, one token each, with their sizes.
LAYOUT = {"rotation": 6, "translation": 3, "scale": 1}
MODALITIES = ("shape", *LAYOUT)


def timestep_embedding(t: torch.Tensor, dim: int, max_period: float = 10_000.0) -> torch.Tensor:
    """Sinusoidal embedding of t in [0, 1] (scaled by 1000 like diffusion timesteps): (B,) -> (B, dim)."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, device=t.device, dtype=torch.float32) / half)
    args = 1000.0 * t.float()[:, None] * freqs[None]
    emb = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
    return torch.cat([emb, torch.zeros_like(emb[:, :1])], dim=-1) if dim % 2 else emb


class Embedder(nn.Module):
    def __init__(self, width: int, zero_init: bool = False):
        super().__init__()
        self.width = width
        first = nn.Linear(width, width)  # made in this order: the seeded initialisation depends on it
        last = nn.Linear(width, width)
        self.mlp = nn.Sequential(first, nn.SiLU(), last)
        if zero_init:  # the shortcut step size starts as a no-op
            nn.init.zeros_(last.weight)
            nn.init.zeros_(last.bias)

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        return self.mlp(timestep_embedding(t, self.width))


class OutputHead(nn.Module):
    """Final adaLN + zero-initialised projection (each stream predicts zero velocity at init)."""

    def __init__(self, width: int, out: int):
        super().__init__()
        self.norm = nn.LayerNorm(width, elementwise_affine=False)
        project = nn.Linear(width, 2 * width)
        self.modulation = nn.Sequential(nn.SiLU(), project)
        self.proj = nn.Linear(width, out)
        for layer in (project, self.proj):
            nn.init.zeros_(layer.weight)
            nn.init.zeros_(layer.bias)

    def forward(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        shift, scale = self.modulation(c)[:, None].chunk(2, dim=-1)
        return self.proj(modulate(self.norm(x), shift, scale))


class ConditionSummary(nn.Module):
    """condition tokens (B, M, W) -> (B, W): each token to ``channels``, then an MLP over all of
    them flattened (their order is the image's layout); zero-initialised at the output, so that
    it starts as a no-op."""

    def __init__(self, tokens: int, width: int, channels: int):
        super().__init__()
        last = nn.Linear(width, width)
        nn.init.zeros_(last.weight)
        nn.init.zeros_(last.bias)
        self.reduce = nn.Linear(width, channels)
        self.mlp = nn.Sequential(nn.Flatten(1), nn.Linear(tokens * channels, width), nn.SiLU(), last)

    def forward(self, cond: torch.Tensor) -> torch.Tensor:
        return self.mlp(self.reduce(cond))


class GeometryFlow(nn.Module):
    def __init__(self, cfg: ModelConfig, condition_tokens: int):
        super().__init__()
        w = cfg.width
        self.shape_in = nn.Linear(cfg.latent_channels, w)
        self.shape_pos = nn.Parameter(torch.randn(1, cfg.shape_tokens, w) * 0.02)
        self.layout_in = nn.ModuleDict({k: nn.Linear(n, w) for k, n in LAYOUT.items()})
        self.layout_pos = nn.Parameter(torch.randn(1, len(LAYOUT), w) * 0.02)
        self.time = Embedder(w)
        self.step = Embedder(w, zero_init=True)
        # the whole condition, flattened, in every block's modulation (as DiT conditions on a
        # class): cross-attention alone learnt to read shape from the image too slowly here
        self.summary = ConditionSummary(condition_tokens, w, cfg.condition_summary) if cfg.condition_summary else None
        self.blocks = nn.ModuleList(MoTBlock(cfg) for _ in range(cfg.depth))
        self.shape_out = OutputHead(w, cfg.latent_channels)
        self.layout_out = nn.ModuleDict({k: OutputHead(w, n) for k, n in LAYOUT.items()})

    def forward(
        self, x: dict[str, torch.Tensor], t: torch.Tensor, d: torch.Tensor, cond: torch.Tensor
    ) -> dict[str, torch.Tensor]:
        """x: state at time t (B,); d (B,) shortcut step size (0 = instantaneous velocity);
        cond (B, M, W) condition tokens -> velocity state, same shapes as x."""
        s = self.shape_in(x["shape"]) + self.shape_pos
        lay = torch.stack([self.layout_in[k](x[k]) for k in LAYOUT], dim=1) + self.layout_pos
        c = self.time(t) + self.step(d)
        if self.summary is not None:
            c = c + self.summary(cond)
        for block in self.blocks:
            s, lay = block(s, lay, c, cond)
        out = {"shape": self.shape_out(s, c)}
        for i, k in enumerate(LAYOUT):
            out[k] = self.layout_out[k](lay[:, i : i + 1], c)[:, 0]
        return out
