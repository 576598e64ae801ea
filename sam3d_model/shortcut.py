"""Shortcut distillation: a step-size input d lets the model take few, large steps
(DESIGN.md §5; Frans et al., "One Step Diffusion via Shortcut Models").

Loss = flow loss at d = 0 + ||sg((v_t + v_{t+d}) / 2) - v_θ(x_t, t, 2d)||² on a fraction of
rows. The two half-steps of size d are taken by the frozen teacher *with guidance* at the
finest level, and by the student itself (stop-gradient) at coarser levels, so a 2d-step
learns to match two d-steps and, level by level, ``shortcut_steps`` unguided steps match
the guided teacher's trajectory.
"""

from __future__ import annotations

import torch

from sam3d_model.flow import State, flow_loss, interpolate, noise_like, squared_error, tmap, weighted
from sam3d_model.model import SmallSam3D


def guided_velocity(model: SmallSam3D, cond: torch.Tensor, x: State, t: torch.Tensor, d: torch.Tensor,
                    guidance: float) -> State:
    """Per-row CFG: guided where t < 1/2 (the noisier half), plain conditional elsewhere."""
    v_c = model.flow(x, t, d, cond)
    if guidance == 0:
        return v_c
    v_u = model.flow(x, t, d, model.condition_encoder.null_condition(cond.shape[0]).to(cond.dtype))
    noisy = t < 0.5
    return tmap(lambda c, u: torch.where(noisy.view(-1, *([1] * (c.dim() - 1))), (1 + guidance) * c - guidance * u, c),
                v_c, v_u)


def step_levels(steps: int, levels: int) -> list[float]:
    """Student step sizes 2d, coarsest first: 1/steps, 1/(2 steps), ..."""
    return [1.0 / (steps * 2 ** k) for k in range(levels)]


def shortcut_loss(student: SmallSam3D, teacher: SmallSam3D, batch: dict[str, torch.Tensor],
                  generator: torch.Generator, *, guidance: float, consistency_fraction: float = 0.5,
                  levels: int = 3) -> dict[str, torch.Tensor]:
    """One distillation loss on a batch with targets. One level per call (chosen at random):
    the finest level learns from the teacher, coarser ones from the student."""
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
    d_half = torch.full((m,), half, device=device)
    with torch.no_grad():
        if level == levels - 1:  # finest: two guided teacher steps (instantaneous velocity)
            tcond = teacher.condition(sub)
            zero = torch.zeros_like(d_half)
            v1 = guided_velocity(teacher, tcond, xt, t, zero, guidance)
            v2 = guided_velocity(teacher, tcond, tmap(lambda a, v: a + half * v, xt, v1), t + half, zero, guidance)
        else:  # coarser: two of the student's own half-size shortcut steps
            scond = student.condition(sub)
            v1 = student.flow(xt, t, d_half, scond)
            v2 = student.flow(tmap(lambda a, v: a + half * v, xt, v1), t + half, d_half, scond)
        target = tmap(lambda a, c: 0.5 * (a + c), v1, v2)
    pred = student.flow(xt, t, torch.full((m,), step2, device=device), student.condition(sub))
    consistency = weighted(squared_error(pred, target), cfg.loss_weights).mean()
    out["flow_loss"] = out["loss"].detach()
    out["consistency"] = consistency.detach()
    out["loss"] = out["loss"] + consistency
    return out
