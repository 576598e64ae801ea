"""Condition encoder: object crop and full image (RGB + mask, optional point map) -> tokens.

SAM 3D uses a frozen DINOv2; pretrained backbones cannot be downloaded here, so the trunk
is a small from-scratch CNN or ViT, chosen by ``ModelConfig.encoder`` (add a class to
:data:`TRUNKS` to plug in another). Both views share the trunk and get a learned view
embedding. A dropped condition (classifier-free guidance) or an absent view is replaced
by learned null tokens.
"""

from __future__ import annotations

import torch
from torch import nn

from sam3d_model.config import ModelConfig


class CNNTrunk(nn.Module):
    """(B, C_in, S, S) -> (B, (S / 2^k)², width) with k = len(encoder_channels)."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        layers: list[nn.Module] = []
        c_in = cfg.image_channels
        for c in cfg.encoder_channels:
            layers += [
                nn.Conv2d(c_in, c, 3, stride=2, padding=1),
                nn.GroupNorm(min(8, c), c),
                nn.SiLU(),
                nn.Conv2d(c, c, 3, padding=1),
                nn.GroupNorm(min(8, c), c),
                nn.SiLU(),
            ]
            c_in = c
        layers.append(nn.Conv2d(c_in, cfg.width, 1))
        self.net = nn.Sequential(*layers)
        self.tokens = (cfg.image_size // 2 ** len(cfg.encoder_channels)) ** 2

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x).flatten(2).transpose(1, 2)


class ViTTrunk(nn.Module):
    """(B, C_in, S, S) -> (B, (S / patch)², width): patch embedding + transformer encoder."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.patch = nn.Conv2d(cfg.image_channels, cfg.width, cfg.vit_patch, stride=cfg.vit_patch)
        self.tokens = (cfg.image_size // cfg.vit_patch) ** 2
        self.pos = nn.Parameter(torch.randn(1, self.tokens, cfg.width) * 0.02)
        layer = nn.TransformerEncoderLayer(
            cfg.width,
            cfg.heads,
            int(cfg.width * cfg.mlp_ratio),
            dropout=0.0,
            activation="gelu",
            batch_first=True,
            norm_first=True,
        )
        self.blocks = nn.TransformerEncoder(layer, cfg.vit_depth, enable_nested_tensor=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.blocks(self.patch(x).flatten(2).transpose(1, 2) + self.pos)


TRUNKS: dict[str, type[CNNTrunk] | type[ViTTrunk]] = {"cnn": CNNTrunk, "vit": ViTTrunk}


class ConditionEncoder(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        self.trunk = TRUNKS[cfg.encoder](cfg)
        n = self.trunk.tokens
        self.view_embed = nn.Parameter(torch.randn(2, 1, cfg.width) * 0.02)  # crop, full
        self.null = nn.Parameter(torch.randn(1, 2 * n, cfg.width) * 0.02)
        self.norm = nn.LayerNorm(cfg.width)
        self.tokens = 2 * n

    def forward(
        self, crop: torch.Tensor, full: torch.Tensor, full_valid: torch.Tensor, keep: torch.Tensor | None = None
    ) -> torch.Tensor:
        """crop, full (B, C_in, S, S); full_valid (B,) bool; keep (B,) bool, False = use the
        null condition (CFG) -> tokens (B, 2 n, width)."""
        b = crop.shape[0]
        n = self.trunk.tokens
        feats = self.trunk(torch.cat([crop, full]))
        tokens = torch.cat([feats[:b] + self.view_embed[0], feats[b:] + self.view_embed[1]], dim=1)
        tokens = self.norm(tokens)
        null = self.null.expand(b, -1, -1).to(tokens.dtype)
        use_full = full_valid.view(b, 1, 1).expand(b, n, 1)
        tokens = torch.cat([tokens[:, :n], torch.where(use_full, tokens[:, n:], null[:, n:])], dim=1)
        if keep is not None:
            tokens = torch.where(keep.view(b, 1, 1), tokens, null)
        return tokens

    def null_condition(self, batch_size: int) -> torch.Tensor:
        """The unconditional tokens of classifier-free guidance, (B, 2 n, width)."""
        return self.null.expand(batch_size, -1, -1)
