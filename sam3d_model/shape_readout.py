"""Shape read-out: condition-trunk features -> occupancy logits and rotation, to pre-train the trunk.

SAM 3D conditions its flow on DINOv2, an image encoder trained elsewhere on far more data
than the flow sees. No pretrained backbone can be downloaded here, so before the flow
stages the trunk is pre-trained on the synthetic data itself, by regressing each object's
occupancy (``shape_vae.occupancy_loss``) and rotation (``geometry.symmetric_rotation_loss``)
directly from its crop and full image. A direct
learner reads shape from these images in a few hundred steps; the flow, learning its image
features only through the noisy velocity loss, does not in the demo's budget (issue 17's
notes). The read-out is discarded after pre-training: only the trunk's weights go on.
"""

from __future__ import annotations

import torch
from torch import nn

from sam3d_model.config import ModelConfig


class ShapeReadout(nn.Module):
    """trunk features of the crop and the full image, each (B, n, width) -> occupancy logits
    (B, R, R, R) and a 6D rotation (B, 6): an MLP to a hidden vector, from it a linear map to
    the rotation and a latent_resolution³ grid, then one transposed convolution per halving of
    the shape VAE (R = latent_resolution * 2^len(vae_channels))."""

    def __init__(self, cfg: ModelConfig, tokens: int, hidden: int = 512):
        super().__init__()
        channels = list(reversed(cfg.vae_channels))
        self.grid = (channels[0], cfg.latent_resolution)
        self.hidden = nn.Sequential(nn.Linear(2 * tokens * cfg.width, hidden), nn.SiLU())
        self.rotation = nn.Linear(hidden, 6)
        self.grid_map = nn.Sequential(nn.Linear(hidden, channels[0] * cfg.latent_resolution**3), nn.SiLU())
        layers: list[nn.Module] = []
        c_in = channels[0]
        for c in channels:
            layers += [nn.ConvTranspose3d(c_in, c, 4, stride=2, padding=1), nn.GroupNorm(min(8, c), c), nn.SiLU()]
            c_in = c
        layers.append(nn.Conv3d(c_in, 1, 3, padding=1))
        self.decoder = nn.Sequential(*layers)

    def forward(self, crop_features: torch.Tensor, full_features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        b = crop_features.shape[0]
        c, r = self.grid
        hidden = self.hidden(torch.cat([crop_features, full_features], dim=1).flatten(1))
        return self.decoder(self.grid_map(hidden).view(b, c, r, r, r))[:, 0], self.rotation(hidden)
