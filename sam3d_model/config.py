"""Model configuration: one validated object, named presets, no hidden constants.

The presets keep SAM 3D's geometry-model structure and change only its size:
``micro`` for tests (trains in seconds), ``tiny`` the CPU default (~3M parameters),
``small`` and ``base`` for GPUs (32³ and 64³ occupancy, as in DESIGN.md §5).
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator


class LossWeights(BaseModel):
    """Per-modality weights of the flow loss (DESIGN.md §5)."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    shape: float = Field(1.0, ge=0)
    rotation: float = Field(0.1, ge=0)
    translation: float = Field(1.0, ge=0)
    scale: float = Field(0.1, ge=0)
    occupancy: float = Field(
        1.0,
        ge=0,
        description="BCE + (1 - soft IoU) of the occupancy decoded from the shape the velocity points to: "
        "a direct signal from the image to the shape, which the velocity loss alone gives the flow slowly",
    )
    symmetric_rotation: float = Field(
        1.0,
        ge=0,
        description="ADD-S of the rotation the velocity points to, relative to the diameter "
        "(geometry.symmetric_rotation_loss): a turn that maps the shape onto itself costs nothing, where the 6D "
        "velocity loss asks for one of several equivalent rotations",
    )


class ModelConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    # shape VAE: occupancy resolution³ <-> latent_resolution³ x latent_channels
    resolution: int = Field(16, ge=8, description="occupancy grid side")
    latent_resolution: int = Field(4, ge=2, description="latent grid side; tokens = side³")
    latent_channels: int = Field(8, ge=1)
    vae_channels: tuple[int, ...] = Field((16, 32), description="3D-conv widths, one per halving")
    kl_weight: float = Field(1e-4, ge=0)

    # condition: crop (object) and full image, each RGB + mask (+ point map xyz + valid)
    image_size: int = Field(64, ge=16, description="side of the full-image and crop inputs")
    encoder: Literal["cnn", "vit"] = "cnn"
    encoder_channels: tuple[int, ...] = Field((16, 32, 64), description="CNN widths, one per halving")
    vit_patch: int = Field(8, ge=2)
    vit_depth: int = Field(2, ge=1)
    use_pointmap: bool = False
    pointmap_drop: float = Field(0.1, ge=0, le=1)

    # two-stream Mixture-of-Transformers
    width: int = Field(128, ge=8)
    depth: int = Field(4, ge=1)
    heads: int = Field(4, ge=1)
    mlp_ratio: float = Field(4.0, gt=0)
    condition_summary: int = Field(
        128,
        ge=0,
        description="channels per condition token of the condition summary, which feeds all condition tokens, "
        "flattened, into every block's modulation (adaLN); 0: none, the flow reads the image by cross-attention "
        "alone (slower to learn: issue 17's notes)",
    )

    # rectified flow
    loss_weights: LossWeights = LossWeights()
    condition_drop: float = Field(0.1, ge=0, le=1, description="training drop rate for CFG")
    guidance: float = Field(1.0, ge=0, description="CFG strength s: v = (1+s) v_c - s v_u")
    sample_temperature: float = Field(
        0.5,
        ge=0,
        description="scale of the initial noise when sampling: < 1 trades diversity for a sample nearer the "
        "condition's typical shape (0.5 over 1.0: +0.034 vIoU, +0.017 F1 on a synthetic-world held-out set; "
        "issue 17's notes)",
    )
    sample_steps: int = Field(
        10,
        ge=1,
        description="Euler steps of the default sampler (guided on the first half): 10 scored as 25 did on the "
        "demo's held-out sets (vIoU 0.606 / 0.606 synthetic, 0.528 / 0.526 real) at ~40% of the cost",
    )
    shortcut_steps: int = Field(4, ge=1)

    # layout normalisation: tokens are (value - mean) / std
    translation_mean: tuple[float, float, float] = (0.0, 0.0, 2.5)
    translation_std: tuple[float, float, float] = (0.5, 0.5, 0.75)
    log_scale_mean: float = 0.0
    log_scale_std: float = 0.5

    @model_validator(mode="after")
    def _check(self) -> ModelConfig:
        halvings = len(self.vae_channels)
        if self.resolution != self.latent_resolution * 2**halvings:
            raise ValueError(
                f"resolution {self.resolution} != latent_resolution {self.latent_resolution}"
                f" x 2^{halvings} (one halving per vae_channels entry)"
            )
        if self.width % self.heads:
            raise ValueError(f"width {self.width} is not divisible by heads {self.heads}")
        if self.image_size % 2 ** len(self.encoder_channels):
            raise ValueError(f"image_size {self.image_size} is not divisible by 2^{len(self.encoder_channels)}")
        if self.encoder == "vit" and self.image_size % self.vit_patch:
            raise ValueError(f"image_size {self.image_size} is not divisible by vit_patch {self.vit_patch}")
        return self

    @property
    def shape_tokens(self) -> int:
        return self.latent_resolution**3

    @property
    def image_channels(self) -> int:
        return 8 if self.use_pointmap else 4


PRESETS: dict[str, dict] = {
    "micro": dict(
        vae_channels=(8, 16), latent_channels=4, image_size=32, encoder_channels=(8, 16, 32), width=32, depth=2, heads=2
    ),
    "tiny": {},
    "small": dict(
        resolution=32,
        latent_resolution=8,
        vae_channels=(32, 64),
        image_size=128,
        encoder_channels=(32, 64, 128, 256),
        width=384,
        depth=8,
        heads=6,
        use_pointmap=True,
    ),
    "base": dict(
        resolution=64,
        latent_resolution=16,
        vae_channels=(64, 128),
        image_size=256,
        encoder="vit",
        vit_patch=16,
        vit_depth=6,
        encoder_channels=(32, 64, 128, 256),
        width=768,
        depth=12,
        heads=12,
        use_pointmap=True,
    ),
}


def preset(name: str, **overrides) -> ModelConfig:
    """A named configuration, optionally with some fields changed."""
    try:
        base = PRESETS[name]
    except KeyError:
        raise ValueError(f"unknown model preset {name!r} (known: {', '.join(PRESETS)})") from None
    return ModelConfig(**{**base, **overrides})
