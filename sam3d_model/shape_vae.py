"""Shape VAE: occupancy grid <-> latent grid, by 3D convolutions (DESIGN.md §5).

16³ occupancy -> 4³ x 8 latents = 64 tokens for the flow transformer (the released model
uses 64³ -> 16³ x 8). Loss: soft dice on occupancy + a small KL to N(0, I).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from sam3d_model.config import ModelConfig


def _norm(channels: int) -> nn.GroupNorm:
    return nn.GroupNorm(min(8, channels), channels)


class ShapeVAE(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        ch = cfg.vae_channels
        enc: list[nn.Module] = [nn.Conv3d(1, ch[0], 3, padding=1)]
        for i, c in enumerate(ch):
            nxt = ch[min(i + 1, len(ch) - 1)]
            enc += [_norm(c), nn.SiLU(), nn.Conv3d(c, nxt, 4, stride=2, padding=1)]
        enc += [_norm(ch[-1]), nn.SiLU(), nn.Conv3d(ch[-1], 2 * cfg.latent_channels, 1)]
        self.encoder = nn.Sequential(*enc)

        dec: list[nn.Module] = [nn.Conv3d(cfg.latent_channels, ch[-1], 3, padding=1)]
        for i, c in reversed(list(enumerate(ch))):
            prev = ch[min(i + 1, len(ch) - 1)]
            dec += [_norm(prev), nn.SiLU(), nn.ConvTranspose3d(prev, c, 4, stride=2, padding=1)]
        dec += [_norm(ch[0]), nn.SiLU(), nn.Conv3d(ch[0], 1, 3, padding=1)]
        self.decoder = nn.Sequential(*dec)

    def encode(self, occupancy: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """occupancy (B, R, R, R) in [0, 1] -> (mean, logvar), each (B, C, r, r, r)."""
        mean, logvar = self.encoder(occupancy[:, None].float() * 2 - 1).chunk(2, dim=1)
        return mean, logvar.clamp(-20, 10)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """latents (B, C, r, r, r) -> occupancy logits (B, R, R, R)."""
        return self.decoder(z)[:, 0]

    def loss(
        self, occupancy: torch.Tensor, kl_weight: float, generator: torch.Generator | None = None
    ) -> dict[str, torch.Tensor]:
        mean, logvar = self.encode(occupancy)
        noise = torch.randn(mean.shape, generator=generator, device=mean.device, dtype=mean.dtype)
        logits = self.decode(mean + torch.exp(0.5 * logvar) * noise)
        dice = dice_loss(logits, occupancy)
        kl = 0.5 * (mean.pow(2) + logvar.exp() - 1 - logvar).mean()
        return {"loss": dice + kl_weight * kl, "dice": dice, "kl": kl}


def dice_loss(logits: torch.Tensor, target: torch.Tensor, eps: float = 1.0) -> torch.Tensor:
    """1 - soft dice between sigmoid(logits) and a binary target, averaged over the batch."""
    p = torch.sigmoid(logits).flatten(1)
    y = target.float().flatten(1)
    inter = (p * y).sum(1)
    return (1 - (2 * inter + eps) / (p.sum(1) + y.sum(1) + eps)).mean()


def occupancy_loss(logits: torch.Tensor, occupancy: torch.Tensor) -> dict[str, torch.Tensor]:
    """BCE + (1 − soft IoU) of logits (B, R, R, R) against occupancy in [0, 1]: the first makes
    voxels probabilities, the second weighs them as voxel IoU does."""
    target = occupancy.float()
    prob = torch.sigmoid(logits)
    inter = (prob * target).flatten(1).sum(1)
    union = (prob + target - prob * target).flatten(1).sum(1).clamp_min(1e-6)
    bce = F.binary_cross_entropy_with_logits(logits.float(), target)
    soft_iou = (inter / union).mean()
    return {"loss": bce + 1 - soft_iou, "bce": bce, "soft_iou": soft_iou}


def latent_tokens(z: torch.Tensor) -> torch.Tensor:
    """(B, C, r, r, r) -> (B, r³, C), x-major like the occupancy grid."""
    return z.flatten(2).transpose(1, 2)


def latent_grid(tokens: torch.Tensor, side: int) -> torch.Tensor:
    """(B, r³, C) -> (B, C, r, r, r)."""
    b, n, c = tokens.shape
    return tokens.transpose(1, 2).reshape(b, c, side, side, side)
