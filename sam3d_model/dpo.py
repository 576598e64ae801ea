"""Preference alignment: Diffusion-DPO for flow matching, shape term only (DESIGN.md §5).

For each (winner, loser) pair of one condition, both share the noise x0 and the time t.
e = per-sample mean squared velocity error of the shape stream;
Δ = (e_θ^w - e_θ^l) - (e_ref^w - e_ref^l); loss = -log σ(-β/2 · Δ).
At θ = ref, Δ = 0 and the loss is log 2. The implicit accuracy is the fraction of pairs
with Δ < 0 (ties count half), i.e. where the model prefers the winner more than the
reference does.

A few pairs and a large β let the loss reach 0 by pushing the loser's error up without
learning anything that generalises; an SFT term on the winners (weight ``sft_weight``,
as in DPO + SFT regularisation) keeps the winners' likelihood anchored, and the implicit
accuracy on pairs of objects held out of training (:func:`preference_accuracy`) tells
whether the preference generalises.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from sam3d_model.flow import interpolate, noise_like, sample_time, squared_error
from sam3d_model.model import SmallSam3D


def shape_errors(model: SmallSam3D, cond: torch.Tensor, x0: dict, x1: dict, t: torch.Tensor) -> torch.Tensor:
    """Per-sample shape velocity error (B,) at (x0, x1, t)."""
    pred = model.flow(interpolate(x0, x1, t), t, torch.zeros_like(t), cond)
    return squared_error({"shape": pred["shape"]}, {"shape": x1["shape"] - x0["shape"]})["shape"]


def flow_dpo_loss(
    model: SmallSam3D,
    reference: SmallSam3D,
    batch: dict[str, torch.Tensor],
    beta: float,
    generator: torch.Generator,
    sft_weight: float = 0.0,
) -> dict[str, torch.Tensor]:
    """batch: a condition batch plus ``winner`` and ``loser`` occupancies (B, R, R, R).

    Returns {"loss" (DPO + sft_weight · winner error), "implicit_accuracy", "delta" (mean Δ),
    "winner_error", "loser_error"}."""
    b = batch["winner"].shape[0]
    with torch.no_grad():
        x1w = {"shape": model.encode_shape(batch["winner"])}
        x1l = {"shape": model.encode_shape(batch["loser"])}
    # the layout tokens do not reach the shape stream (MoT); any values do
    layout = {
        k: torch.zeros(b, n, device=x1w["shape"].device) for k, n in (("rotation", 6), ("translation", 3), ("scale", 1))
    }
    x1w.update(layout)
    x1l.update(layout)
    x0 = noise_like(x1w, generator)
    t = sample_time(b, generator, x1w["shape"].device)
    cond = model.condition(batch)
    e_w, e_l = shape_errors(model, cond, x0, x1w, t), shape_errors(model, cond, x0, x1l, t)
    with torch.no_grad():
        ref_cond = reference.condition(batch)
        r_w, r_l = shape_errors(reference, ref_cond, x0, x1w, t), shape_errors(reference, ref_cond, x0, x1l, t)
    delta = (e_w - e_l) - (r_w - r_l)
    loss = -F.logsigmoid(-0.5 * beta * delta).mean() + sft_weight * e_w.mean()
    accuracy = (delta < 0).float() + 0.5 * (delta == 0).float()  # a tie counts half
    return {
        "loss": loss,
        "implicit_accuracy": accuracy.mean(),
        "delta": delta.mean().detach(),
        "winner_error": e_w.mean().detach(),
        "loser_error": e_l.mean().detach(),
    }


@torch.no_grad()
def preference_accuracy(
    model: SmallSam3D, reference: SmallSam3D, batches: list[dict[str, torch.Tensor]], seed: int = 0
) -> float:
    """Implicit accuracy over ``batches`` of (winner, loser) pairs: the share where ``model``
    prefers the winner more than ``reference`` does (ties half), at fixed noise and times."""
    generator = torch.Generator().manual_seed(seed)
    model.eval()
    hits, total = 0.0, 0
    for batch in batches:
        out = flow_dpo_loss(model, reference, batch, 1.0, generator)
        n = batch["winner"].shape[0]
        hits += float(out["implicit_accuracy"]) * n
        total += n
    return hits / total if total else float("nan")
