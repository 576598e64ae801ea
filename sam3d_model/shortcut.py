"""Shortcut distillation: a step-size input d lets the model take few, large steps
(DESIGN.md §5; Frans et al., "One Step Diffusion via Shortcut Models").

Loss = flow loss at d = 0 + ||sg((v_t + v_{t+d}) / 2) - v_θ(x_t, t, 2d)||² on a fraction of
rows: v_t and v_{t+d} are the frozen teacher's guided velocities at x_t and at x_t + d v_t.
Step sizes 2d run over ``levels`` halvings of 1/``shortcut_steps``; the teacher's own
discretisation error at 8 vs 25 steps is small next to what guidance changes, so
``shortcut_steps`` unguided student steps learn to follow the guided teacher's trajectory
(measured in bench/model.py).
"""

from __future__ import annotations

import torch

from sam3d_model.flow import State, flow_loss, interpolate, noise_like, squared_error, tmap, weighted
from sam3d_model.model import SmallSam3D


def guided_velocity(
    model: SmallSam3D, cond: torch.Tensor, x: State, t: torch.Tensor, d: torch.Tensor, guidance: float
) -> State:
    """Per-row CFG: guided where t < 1/2 (the noisier half), plain conditional elsewhere."""
    v_c = model.flow(x, t, d, cond)
    if guidance == 0:
        return v_c
    v_u = model.flow(x, t, d, model.condition_encoder.null_condition(cond.shape[0]).to(cond.dtype))
    noisy = t < 0.5
    return tmap(
        lambda c, u: torch.where(noisy.view(-1, *([1] * (c.dim() - 1))), (1 + guidance) * c - guidance * u, c), v_c, v_u
    )


def step_levels(steps: int, levels: int) -> list[float]:
    """Student step sizes 2d, coarsest first: 1/steps, 1/(2 steps), ..."""
    return [1.0 / (steps * 2**k) for k in range(levels)]


def shortcut_loss(
    student: SmallSam3D,
    teacher: SmallSam3D,
    batch: dict[str, torch.Tensor],
    generator: torch.Generator,
    *,
    guidance: float,
    consistency_fraction: float = 0.5,
    levels: int = 3,
) -> dict[str, torch.Tensor]:
    """One distillation loss on a batch with targets; one step size per call, at random."""
    cfg = student.cfg
    x1 = student.targets(batch)
    out = flow_loss(student.velocity_fn(student.condition(batch, generator)), x1, cfg.loss_weights, generator)

    b = batch["crop"].shape[0]
    m = max(1, int(round(consistency_fraction * b)))
    sizes = step_levels(cfg.shortcut_steps, levels)
    level = int(torch.randint(levels, (1,), generator=generator, device=generator.device))
    step2 = sizes[level]
    half = step2 / 2
    device = x1["shape"].device
    sub = {k: v[:m] for k, v in batch.items()}
    x1m = {k: v[:m] for k, v in x1.items()}
    grid = int(round(1 / step2))
    t = torch.randint(grid, (m,), generator=generator, device=generator.device).to(device).float() * step2
    xt = interpolate(noise_like(x1m, generator), x1m, t)
    with torch.no_grad():  # two guided half-steps of the teacher (its instantaneous velocity)
        tcond = teacher.condition(sub)
        zero = torch.zeros(m, device=device)
        v1 = guided_velocity(teacher, tcond, xt, t, zero, guidance)
        v2 = guided_velocity(teacher, tcond, tmap(lambda a, v: a + half * v, xt, v1), t + half, zero, guidance)
        target = tmap(lambda a, c: 0.5 * (a + c), v1, v2)
    pred = student.flow(xt, t, torch.full((m,), step2, device=device), student.condition(sub))
    consistency = weighted(squared_error(pred, target), cfg.loss_weights).mean()
    out["flow_loss"] = out["loss"].detach()
    out["consistency"] = consistency.detach()
    out["loss"] = out["loss"] + consistency
    return out
