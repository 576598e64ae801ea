"""A reward model for best-of-N search: how well a candidate shape fits an object's photo,
learned from annotators' preferences (DESIGN.md §6, the paper's reward-model-guided search).

The features come from a frozen :class:`~sam3d_model.model.SmallSam3D` (the champion): the
*fit* of photo and candidate — how much better the flow predicts the candidate's shape latent
with the photo than without it, at a few fixed times and one fixed noise (the model's own
estimate of how much the photo explains the shape) — and the candidate's occupied share. A
linear score over them is trained with the Bradley-Terry loss on (winner, loser) pairs:
P(winner ≻ loser) = σ(r_w − r_l). The backbone never trains, so features are computed once
per pair and the score trains in well under a second on a CPU.
"""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import nn

from sam3d_model.flow import interpolate, squared_error
from sam3d_model.model import SmallSam3D

#: Flow times at which the fit feature compares the conditional and unconditional velocity.
FIT_TIMES = (0.3, 0.5, 0.7)


class RewardModel(nn.Module):
    """r(photo, occupancy) = w · standardised features, over a frozen backbone; only ``w``
    and the standardisation (``mean``, ``std``, set from the training pairs) are learned."""

    mean: torch.Tensor  # (F,) buffers
    std: torch.Tensor
    noise: torch.Tensor  # (1, T, C): the fixed flow noise of the fit features

    def __init__(self, backbone: SmallSam3D):
        super().__init__()
        cfg = backbone.cfg
        self.backbone = copy.deepcopy(backbone).eval().requires_grad_(False)  # frozen; the caller's is untouched
        n = len(FIT_TIMES) + 1
        self.weight = nn.Parameter(torch.zeros(n))
        self.register_buffer("mean", torch.zeros(n))
        self.register_buffer("std", torch.ones(n))
        # one fixed noise for every candidate: a score does not depend on how candidates are batched
        g = torch.Generator().manual_seed(0)
        self.register_buffer("noise", torch.randn(1, cfg.shape_tokens, cfg.latent_channels, generator=g))

    @torch.no_grad()
    def features(self, batch: dict[str, torch.Tensor], occupancy: torch.Tensor) -> torch.Tensor:
        """A condition batch and candidate occupancies (B, R, R, R) -> features (B, F): the fit
        of photo and shape at each of :data:`FIT_TIMES` (the unconditional minus the
        conditional velocity error of the shape latent: > 0 where the photo makes the shape
        more predictable), and the occupied share of the grid."""
        m = self.backbone
        occupancy = occupancy.float().to(m.device)
        cond = m.condition({k: v.to(m.device) for k, v in batch.items()})
        x1 = m.encode_shape(occupancy)
        b = x1.shape[0]
        null = m.condition_encoder.null_condition(b).to(cond.dtype)
        x0 = self.noise.expand(b, -1, -1)
        # the layout tokens do not reach the shape stream (MoT); any values do
        layout = {
            k: torch.zeros(b, n, device=x1.device) for k, n in (("rotation", 6), ("translation", 3), ("scale", 1))
        }
        columns = []
        for t_value in FIT_TIMES:
            t = torch.full((b,), t_value, device=x1.device)
            xt = interpolate({"shape": x0, **layout}, {"shape": x1, **layout}, t)
            target = {"shape": x1 - x0}
            conditional, unconditional = (
                squared_error({"shape": m.flow(xt, t, torch.zeros_like(t), c)["shape"]}, target)["shape"]
                for c in (cond, null)
            )
            columns.append(unconditional - conditional)
        columns.append(occupancy.flatten(1).mean(1))
        return torch.stack(columns, dim=1).cpu()

    def score_features(self, features: torch.Tensor) -> torch.Tensor:
        """(B, F) -> (B,)."""
        return ((features - self.mean) / self.std) @ self.weight

    @torch.no_grad()
    def score(self, batch: dict[str, torch.Tensor], occupancy: torch.Tensor) -> torch.Tensor:
        """(B,) scores of the candidate occupancies (B, R, R, R) for the condition batch."""
        return self.score_features(self.features(batch, occupancy))


def pair_features(model: RewardModel, batches: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """Pair batches (a condition batch plus ``winner`` and ``loser`` occupancies (B, R, R, R)
    and optional ``weight`` (B,)) -> {"winner" (P, F), "loser" (P, F), "weight" (P,)}."""
    winners, losers, weights = [], [], []
    for batch in batches:
        condition = {k: v for k, v in batch.items() if k not in ("winner", "loser", "weight")}
        winners.append(model.features(condition, batch["winner"]))
        losers.append(model.features(condition, batch["loser"]))
        weights.append(batch.get("weight", torch.ones(batch["winner"].shape[0])).float())
    if not winners:
        n = model.weight.shape[0]
        return {"winner": torch.zeros(0, n), "loser": torch.zeros(0, n), "weight": torch.zeros(0)}
    return {"winner": torch.cat(winners), "loser": torch.cat(losers), "weight": torch.cat(weights)}


def bradley_terry_loss(model: RewardModel, pairs: dict[str, torch.Tensor]) -> torch.Tensor:
    """Weighted −log σ(r_w − r_l) over featurised pairs."""
    margin = model.score_features(pairs["winner"]) - model.score_features(pairs["loser"])
    w = pairs["weight"]
    return (F.softplus(-margin) * w).sum() / w.sum()


@torch.no_grad()
def pairwise_accuracy(model: RewardModel, pairs: dict[str, torch.Tensor]) -> float:
    """Share of featurised pairs whose winner scores higher (ties half); nan without pairs."""
    if not len(pairs["weight"]):
        return float("nan")
    margin = model.score_features(pairs["winner"]) - model.score_features(pairs["loser"])
    return float(((margin > 0).float() + 0.5 * (margin == 0).float()).mean())


def train_reward(
    model: RewardModel, pairs: dict[str, torch.Tensor], *, steps: int = 300, lr: float = 0.05, l2: float = 1.0
) -> list[dict[str, float]]:
    """Fit the standardisation and ``w`` to featurised pairs: weighted Bradley-Terry loss plus
    ``l2`` · |w|² (a convex problem, solved from w = 0 by full-batch Adam, so the same pairs
    always give the same model). Returns the loss and training accuracy at ten points.

    The model is linear in a few features on purpose: with the tens to hundreds of pairs a
    round yields, a head over the backbone's image and shape embeddings fits its training
    pairs perfectly and ranks held-out objects' pairs little better than chance."""
    both = torch.cat([pairs["winner"], pairs["loser"]])
    with torch.no_grad():
        model.mean.copy_(both.mean(0))
        model.std.copy_(both.std(0).clamp_min(1e-6) if len(both) > 1 else torch.ones_like(model.std))
        model.weight.zero_()
    opt = torch.optim.Adam([model.weight], lr=lr)
    history = []
    for step in range(steps):
        loss = bradley_terry_loss(model, pairs) + l2 * model.weight.pow(2).sum()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if (step + 1) % max(1, steps // 10) == 0 or step + 1 == steps:
            history.append({"step": step + 1, "loss": loss.item(), "accuracy": pairwise_accuracy(model, pairs)})
    return history
