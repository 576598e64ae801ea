"""Rectified flow over multi-modal states (DESIGN.md §5).

t = 0 is noise, t = 1 is data: x_t = (1 - t) x0 + t x1 and the target velocity is x1 - x0.
Training times are drawn as sigmoid(N(-1, 1)), which favours the noisy end. Sampling is
Euler integration; classifier-free guidance v = (1 + s) v_cond - s v_uncond is applied on
the noisier half of the trajectory only (t < 1/2).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import torch

from sam3d_model.config import LossWeights

State = dict[str, torch.Tensor]
#: velocity(x, t (B,), d (B,), guided: bool) -> velocity state
VelocityFn = Callable[[State, torch.Tensor, torch.Tensor, bool], State]


def tmap(fn: Callable[..., torch.Tensor], *states: Mapping[str, torch.Tensor]) -> State:
    """Apply ``fn`` key-wise across states that share keys."""
    return {k: fn(*(s[k] for s in states)) for k in states[0]}


def per_sample(t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """(B,) -> broadcastable against ``like`` (B, ...)."""
    return t.view(-1, *([1] * (like.dim() - 1))).to(like.dtype)


def sample_time(batch: int, generator: torch.Generator, device) -> torch.Tensor:
    """Training times t = sigmoid(n), n ~ N(-1, 1): (B,)."""
    return torch.sigmoid(torch.randn(batch, generator=generator, device=device) - 1.0)


def noise_like(x: Mapping[str, torch.Tensor], generator: torch.Generator) -> State:
    return tmap(lambda v: torch.randn(v.shape, generator=generator, device=v.device, dtype=v.dtype), x)


def interpolate(x0: State, x1: State, t: torch.Tensor) -> State:
    return tmap(lambda a, b: (1 - per_sample(t, a)) * a + per_sample(t, a) * b, x0, x1)


def squared_error(pred: State, target: State) -> State:
    """Mean squared error per sample and modality: each (B,)."""
    return tmap(lambda p, y: (p.float() - y.float()).pow(2).flatten(1).mean(1), pred, target)


def weighted(errors: Mapping[str, torch.Tensor], weights: LossWeights) -> torch.Tensor:
    """Sum of per-modality errors with the configured weights: (B,)."""
    return sum(getattr(weights, k) * e for k, e in errors.items())


def flow_loss(
    velocity: VelocityFn,
    x1: State,
    weights: LossWeights,
    generator: torch.Generator,
    data_loss: Callable[[State], dict[str, torch.Tensor]] | None = None,
) -> dict[str, torch.Tensor]:
    """Rectified-flow loss at step size 0: {"loss": scalar, "<modality>": scalar, ...}.

    ``data_loss``: a loss on the data end the predicted velocity points to, x̂1 = x_t + (1 − t) v
    (its "loss" is added, its other entries reported)."""
    b = next(iter(x1.values())).shape[0]
    device = next(iter(x1.values())).device
    x0 = noise_like(x1, generator)
    t = sample_time(b, generator, device)
    xt = interpolate(x0, x1, t)
    pred = velocity(xt, t, torch.zeros_like(t), False)
    errors = squared_error(pred, tmap(lambda a, c: c - a, x0, x1))
    out = {"loss": weighted(errors, weights).mean(), **{k: e.mean().detach() for k, e in errors.items()}}
    if data_loss is not None:
        extra = data_loss(tmap(lambda x, v: x + (1 - per_sample(t, x)) * v, xt, pred))
        out["loss"] = out["loss"] + extra.pop("loss")
        out.update({k: v.detach() for k, v in extra.items()})
    return out


def euler_sample(velocity: VelocityFn, x0: State, steps: int, *, guided: bool, shortcut: bool = False) -> State:
    """Integrate from noise (t = 0) to data (t = 1) in ``steps`` equal Euler steps.

    ``guided``: classifier-free guidance on the noisier half; ``shortcut``: pass the step
    size to the model (a distilled model then takes few, large steps)."""
    b = next(iter(x0.values())).shape[0]
    device = next(iter(x0.values())).device
    x = dict(x0)
    dt = 1.0 / steps
    for i in range(steps):
        t = torch.full((b,), i * dt, device=device)
        d = torch.full((b,), dt if shortcut else 0.0, device=device)
        v = velocity(x, t, d, guided and i * dt < 0.5)
        x = tmap(lambda a, u: a + dt * u, x, v)
    return x
