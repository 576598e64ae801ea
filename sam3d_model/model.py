"""SmallSam3D: shape VAE + condition encoder + two-stream flow transformer, behind the
:class:`~sam3d_model.interface.GeometryModel` interface."""

from __future__ import annotations

import torch
from torch import nn

from sam3d_model.condition import ConditionEncoder
from sam3d_model.config import LossWeights, ModelConfig
from sam3d_model.flow import State, VelocityFn, euler_sample, flow_loss, noise_like
from sam3d_model.flow_model import GeometryFlow
from sam3d_model.geometry import (
    layout_tokens,
    matrix_from_rot6d,
    pose_from_tokens,
    symmetric_rotation_loss,
)
from sam3d_model.interface import Prediction
from sam3d_model.shape_vae import ShapeVAE, latent_grid, latent_tokens, occupancy_loss


def build_model(cfg: ModelConfig, seed: int) -> SmallSam3D:
    """A new model whose initial weights depend only on ``cfg`` and ``seed``, not on what used
    torch's global random state before in the process (other tasks, libraries)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return SmallSam3D(cfg)


class SmallSam3D(nn.Module):
    latent_mean: torch.Tensor  # (C,) buffers: the latent normalisation
    latent_std: torch.Tensor

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        self.vae = ShapeVAE(cfg)
        self.condition_encoder = ConditionEncoder(cfg)
        self.flow = GeometryFlow(cfg, self.condition_encoder.tokens)
        # latent statistics (per channel) so the flow sees roughly unit-variance data
        self.register_buffer("latent_mean", torch.zeros(cfg.latent_channels))
        self.register_buffer("latent_std", torch.ones(cfg.latent_channels))

    @property
    def device(self) -> torch.device:
        return self.latent_mean.device

    # -- shape ------------------------------------------------------------------------------
    def encode_shape(self, occupancy: torch.Tensor) -> torch.Tensor:
        """(B, R, R, R) -> (B, r³, C) normalised latent tokens (posterior means)."""
        mean, _ = self.vae.encode(occupancy)
        return (latent_tokens(mean) - self.latent_mean) / self.latent_std

    def decode_shape(self, tokens: torch.Tensor) -> torch.Tensor:
        """(B, r³, C) normalised latent tokens -> (B, R, R, R) occupancy probabilities."""
        return torch.sigmoid(self.shape_logits(tokens))

    def shape_logits(self, tokens: torch.Tensor) -> torch.Tensor:
        """(B, r³, C) normalised latent tokens -> (B, R, R, R) occupancy logits."""
        return self.vae.decode(latent_grid(tokens * self.latent_std + self.latent_mean, self.cfg.latent_resolution))

    @torch.no_grad()
    def calibrate_latents(self, occupancy: torch.Tensor) -> None:
        """Set the latent normalisation from a sample of training shapes (after VAE training)."""
        mean, _ = self.vae.encode(occupancy.to(self.device))
        tokens = latent_tokens(mean).reshape(-1, self.cfg.latent_channels)
        self.latent_mean.copy_(tokens.mean(0))
        self.latent_std.copy_(tokens.std(0).clamp_min(1e-3))

    # -- condition and velocity ----------------------------------------------------------------
    def condition(self, batch: dict[str, torch.Tensor], generator: torch.Generator | None = None) -> torch.Tensor:
        """Condition tokens (B, M, W). With a generator (training), drop the whole condition
        with probability ``condition_drop`` (for CFG) and the point map with ``pointmap_drop``."""
        crop, full = batch["crop"], batch["full"]
        b = crop.shape[0]
        keep = None
        if generator is not None:
            keep = torch.rand(b, generator=generator, device=crop.device) >= self.cfg.condition_drop
            if self.cfg.use_pointmap:
                pm = torch.rand(b, generator=generator, device=crop.device) >= self.cfg.pointmap_drop
                pm = pm.view(b, 1, 1, 1).to(crop.dtype)
                crop = torch.cat([crop[:, :4], crop[:, 4:] * pm], dim=1)
                full = torch.cat([full[:, :4], full[:, 4:] * pm], dim=1)
        return self.condition_encoder(crop, full, batch["full_valid"], keep)

    def velocity_fn(self, cond: torch.Tensor, guidance: float = 0.0) -> VelocityFn:
        """velocity(x, t, d, guided) for fixed condition tokens; guided applies CFG with
        strength ``guidance`` against the null condition (one batched forward pass)."""
        null = self.condition_encoder.null_condition(cond.shape[0]).to(cond.dtype)

        def velocity(x: State, t: torch.Tensor, d: torch.Tensor, guided: bool) -> State:
            if not guided or guidance == 0:
                return self.flow(x, t, d, cond)
            both = self.flow(
                {k: torch.cat([v, v]) for k, v in x.items()},
                torch.cat([t, t]),
                torch.cat([d, d]),
                torch.cat([cond, null]),
            )
            b = t.shape[0]
            return {k: (1 + guidance) * v[:b] - guidance * v[b:] for k, v in both.items()}

        return velocity

    # -- training ----------------------------------------------------------------------------
    def targets(self, batch: dict[str, torch.Tensor]) -> State:
        """The data end (t = 1) of the flow for a batch with targets."""
        with torch.no_grad():
            shape = self.encode_shape(batch["occupancy"])
        return {"shape": shape, **layout_tokens(self.cfg, batch["rotation"], batch["translation"], batch["scale"])}

    def losses(
        self, batch: dict[str, torch.Tensor], generator: torch.Generator, weights: LossWeights | None = None
    ) -> dict[str, torch.Tensor]:
        weights = weights or self.cfg.loss_weights
        cond = self.condition(batch, generator)

        def estimate_terms(estimate: State) -> dict[str, torch.Tensor]:
            out = {}
            if weights.occupancy:
                out["occupancy"] = occupancy_loss(self.shape_logits(estimate["shape"]), batch["occupancy"])["loss"]
            if weights.symmetric_rotation:
                rotation = matrix_from_rot6d(estimate["rotation"])
                turn = symmetric_rotation_loss(batch["occupancy"], rotation, batch["rotation"], generator=generator)
                out["symmetric_rotation"] = turn.mean()
            return {"loss": sum(getattr(weights, k) * v for k, v in out.items()), **out}

        return flow_loss(self.velocity_fn(cond), self.targets(batch), weights, generator, estimate_terms)

    # -- sampling ----------------------------------------------------------------------------
    def initial_noise(self, batch_size: int, seed: int, temperature: float = 1.0) -> State:
        """The t = 0 end of the flow: N(0, temperature²) per modality, seeded."""
        g = torch.Generator(device=self.device).manual_seed(seed)
        like = {
            "shape": torch.empty(batch_size, self.cfg.shape_tokens, self.cfg.latent_channels, device=self.device),
            "rotation": torch.empty(batch_size, 6, device=self.device),
            "translation": torch.empty(batch_size, 3, device=self.device),
            "scale": torch.empty(batch_size, 1, device=self.device),
        }
        return {k: v * temperature for k, v in noise_like(like, g).items()}

    @torch.no_grad()
    def sample_state(
        self,
        batch: dict[str, torch.Tensor],
        *,
        steps: int | None = None,
        guidance: float | None = None,
        shortcut: bool = False,
        seed: int = 0,
    ) -> State:
        """Integrate the flow for a condition batch from noise at ``sample_temperature``. Default:
        ``sample_steps`` Euler steps with guidance; ``shortcut``: ``shortcut_steps`` steps of the
        distilled model, no guidance."""
        cond = self.condition(batch)
        guidance = 0.0 if shortcut else (self.cfg.guidance if guidance is None else guidance)
        steps = steps or (self.cfg.shortcut_steps if shortcut else self.cfg.sample_steps)
        x0 = self.initial_noise(cond.shape[0], seed, self.cfg.sample_temperature)
        return euler_sample(self.velocity_fn(cond, guidance), x0, steps, guided=guidance > 0, shortcut=shortcut)

    @torch.no_grad()
    def sample(
        self,
        batch: dict[str, torch.Tensor],
        *,
        steps: int | None = None,
        guidance: float | None = None,
        shortcut: bool = False,
        seed: int = 0,
    ) -> Prediction:
        x = self.sample_state(batch, steps=steps, guidance=guidance, shortcut=shortcut, seed=seed)
        R, t, s = pose_from_tokens(self.cfg, x)
        return Prediction(self.decode_shape(x["shape"]), R, t, s)
