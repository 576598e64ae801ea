"""Training stages as library functions (DESIGN.md §5): VAE, the image encoder's pre-training,
pre-training on Iso-3DO, mid-training on Flying Occlusions, SFT, flow-DPO and shortcut
distillation.

Every stage runs through :func:`fit`: AdamW with warm-up, gradient clipping, bf16 autocast
and ``torch.compile`` on CUDA, one seeded generator for all training randomness, atomic
checkpoints with optimizer/scheduler/generator state (a killed stage resumes where it
stopped and ends with the same weights as an uninterrupted one, given the same batches),
progress in the log, and — given a :class:`TrainLog` — params, per-step losses and the
history reported to it.
"""

from __future__ import annotations

import copy
import logging
import math
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import torch
from pydantic import BaseModel, ConfigDict, Field

from sam3d_model.checkpoint import CheckpointError, read_checkpoint, save_checkpoint
from sam3d_model.dpo import flow_dpo_loss
from sam3d_model.geometry import matrix_from_rot6d, symmetric_rotation_loss
from sam3d_model.model import SmallSam3D
from sam3d_model.shape_readout import ShapeReadout
from sam3d_model.shape_vae import occupancy_loss
from sam3d_model.shortcut import shortcut_loss

log = logging.getLogger(__name__)

Batch = dict[str, torch.Tensor]
LossFn = Callable[[Batch, torch.Generator], dict[str, torch.Tensor]]
#: model -> metrics, called in eval mode at probe points (a learning curve: held-out vIoU vs steps)
Probe = Callable[[SmallSam3D], dict[str, float]]


class TrainSettings(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    steps: int = Field(500, ge=0)
    lr: float = Field(3e-4, gt=0)
    weight_decay: float = Field(0.01, ge=0)
    grad_clip: float = Field(1.0, gt=0)
    warmup_steps: int = Field(20, ge=1)
    final_lr_fraction: float = Field(
        0.1, ge=0, le=1, description="Cosine decay after warm-up to this share of lr at the last step (1: constant)."
    )
    seed: int = 0
    log_every: int = Field(10, ge=1)
    checkpoint_every: int = Field(100, ge=1)
    device: str = Field("auto", description="auto | cpu | cuda | cuda:N")
    amp: bool = Field(True, description="bf16 autocast on CUDA (ignored on CPU)")
    compile: bool = Field(False, description="torch.compile the flow transformer on CUDA")


@dataclass
class TrainResult:
    stage: str
    steps: int
    history: list[dict] = field(default_factory=list)  # {"step": n, "loss": ..., ...} every log_every
    checkpoint: Path | None = None
    seconds: float = 0.0
    resumed_from: int = 0

    def metric(self, name: str) -> list[float]:
        return [h[name] for h in self.history if name in h]


def lr_factor(step: int, settings: TrainSettings) -> float:
    """Linear warm-up, then cosine decay to ``final_lr_fraction`` at the last step: a short
    run ends on small steps, which is worth more than any constant rate on a small budget."""
    if step < settings.warmup_steps:
        return (step + 1) / settings.warmup_steps
    span = max(1, settings.steps - settings.warmup_steps)
    progress = min(1.0, (step - settings.warmup_steps) / span)
    low = settings.final_lr_fraction
    return low + (1 - low) * 0.5 * (1 + math.cos(math.pi * progress))


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def _to(batch: Batch, device: torch.device) -> Batch:
    return {k: v.to(device, non_blocking=True) for k, v in batch.items()}


class TrainLog(Protocol):
    """Where a stage reports: its parameters once, metrics every ``log_every`` steps, and its
    history at the end (an MLflow run in the flywheel: ``flywheel.tracking.training_log``)."""

    def params(self, params: dict) -> None: ...

    def metrics(self, values: dict, step: int) -> None: ...

    def finished(self, stage: str, history: list[dict]) -> None: ...


def fit(
    stage: str,
    model: SmallSam3D,
    parameters: Iterable[torch.nn.Parameter],
    loss_fn: LossFn,
    batches: Iterable[Batch],
    settings: TrainSettings,
    *,
    checkpoint_dir: str | Path | None = None,
    log_to: TrainLog | None = None,
    params: dict | None = None,
    probe: Probe | None = None,
    probes: int = 5,
    after_save: Callable[[int, Path], None] | None = None,
    auxiliary: torch.nn.Module | None = None,
) -> TrainResult:
    """Optimise ``parameters`` of ``model`` for ``settings.steps`` steps of ``loss_fn``.

    ``batches`` must be deterministic for exact resumption: on resume the batches of the
    finished steps are drawn and skipped. ``probe``: called before the first step and at
    ``probes`` evenly spaced steps; its metrics join the history (it draws no training
    randomness, so a probed run trains the same weights as an unprobed one).

    Data-parallel when ``torch.distributed`` is initialised with W > 1 processes (Ray Train's
    workers): each worker's ``batches`` are its own share of the data (W shares of a global
    batch: see ``flywheel.learning.examples.ExampleStream``); each uses its own generator
    (seed + rank) and averages gradients before each step, so the W workers take one
    optimiser step on the global batch. ``auxiliary``: a module trained beside ``model`` that
    is not part of it (the read-out of encoder pre-training): moved to the device, and its
    weights kept in the resumable checkpoint. Rank 0 alone writes the
    checkpoint (with every worker's generator state), probes and reports to ``log_to``;
    ``after_save(step, path)`` then runs on every worker (Ray Train: report the checkpoint).
    Loss figures in the history are rank 0's share."""
    rank, world = distributed()
    device = resolve_device(settings.device)
    model.to(device)
    if auxiliary is not None:
        auxiliary.to(device)
    trainable = [p for p in parameters if p.requires_grad]
    opt = torch.optim.AdamW(trainable, lr=settings.lr, weight_decay=settings.weight_decay, betas=(0.9, 0.99))
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: lr_factor(s, settings))
    gen = torch.Generator(device=device).manual_seed(settings.seed + rank)
    history: list[dict] = []
    start = 0
    last = Path(checkpoint_dir) / "last.pt" if checkpoint_dir else None
    if last is not None and last.exists():
        payload = read_checkpoint(last)
        if payload["extra"].get("stage") != stage:
            raise CheckpointError(
                f"checkpoint {last}: belongs to stage {payload['extra'].get('stage')!r}, "
                f"not {stage!r}; use another checkpoint folder"
            )
        generators = payload["extra"].get("generators") or [payload["generator"]]
        if len(generators) != world:
            raise CheckpointError(
                f"checkpoint {last}: written by {len(generators)} worker(s), resumed with {world}; "
                f"resume with {len(generators)} (model.train_workers) or start the stage afresh"
            )
        model.load_state_dict(payload["model"])
        if auxiliary is not None:
            auxiliary.load_state_dict(payload["extra"]["auxiliary"])
        opt.load_state_dict(payload["optimizer"])
        sched.load_state_dict(payload["extra"]["scheduler"])
        gen.set_state(generators[rank])
        start, history = payload["step"], list(payload["extra"]["history"])
        log.info("%s: resuming from step %d (%s)", stage, start, last)
    if rank:  # one worker reports and probes
        log_to, probe = None, None

    if log_to is not None:
        log_to.params(
            {"stage": stage, **settings.model_dump(), **(params or {}), "parameters": sum(p.numel() for p in trainable)}
        )
    if settings.compile and device.type == "cuda":
        model.flow.compile()
    amp = settings.amp and device.type == "cuda"

    def save(step: int) -> None:
        if last is None:
            return
        generators = _gathered(gen.get_state(), world)
        if rank == 0:
            save_checkpoint(
                last,
                model,
                optimizer=opt,
                step=step,
                generator=gen,
                extra={
                    "stage": stage,
                    "history": history,
                    "scheduler": sched.state_dict(),
                    "generators": generators,
                    **({"auxiliary": auxiliary.state_dict()} if auxiliary is not None else {}),
                },
            )
        if after_save is not None:
            after_save(step, last)

    probe_at = {round(settings.steps * (i + 1) / probes) for i in range(probes)} if probe else set()

    def run_probe(step: int) -> dict[str, float]:
        assert probe is not None
        model.eval()
        with torch.no_grad():
            values = probe(model)
        model.train()
        log.info("%s: step %d/%d %s", stage, step, settings.steps, " ".join(f"{k} {v:.3f}" for k, v in values.items()))
        return values

    stream: Iterator[Batch] = iter(batches)
    for _ in range(start):
        next(stream)
    model.train()
    if probe is not None and start == 0:
        history.append({"step": 0, **run_probe(0)})
        if log_to is not None:
            log_to.metrics({k: v for k, v in history[-1].items() if k != "step"}, 0)
    window: dict[str, float] = {}
    count, t0, began = 0, time.perf_counter(), time.perf_counter()
    for step in range(start, settings.steps):
        try:
            batch = _to(next(stream), device)
        except StopIteration:
            raise ValueError(f"{stage}: the batches ran out at step {step} of {settings.steps}") from None
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
            out = loss_fn(batch, gen)
        loss = out["loss"]
        if not torch.isfinite(loss):
            raise FloatingPointError(
                f"{stage}: loss is {loss.item()} at step {step}; lower the learning rate "
                f"(now {settings.lr}) or check the data"
            )
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if world > 1:
            _average_gradients(trainable, world)
        grad_norm = torch.nn.utils.clip_grad_norm_(trainable, settings.grad_clip)
        opt.step()
        sched.step()
        for k, v in out.items():
            window[k] = window.get(k, 0.0) + float(v.detach())
        window["grad_norm"] = window.get("grad_norm", 0.0) + float(grad_norm)
        count += 1
        done = step + 1
        if done % settings.log_every == 0 or done == settings.steps or done in probe_at:
            elapsed = time.perf_counter() - t0
            entry = {
                "step": done,
                **{k: v / count for k, v in window.items()},
                "lr": sched.get_last_lr()[0],
                "steps_per_s": count / max(elapsed, 1e-9),
            }
            if done in probe_at:
                entry.update(run_probe(done))
            history.append(entry)
            if log_to is not None:
                log_to.metrics({k: v for k, v in entry.items() if k != "step"}, done)
            log.info(
                "%s: step %d/%d loss %.4f (%.1f steps/s)",
                stage,
                done,
                settings.steps,
                entry["loss"],
                entry["steps_per_s"],
            )
            window, count, t0 = {}, 0, time.perf_counter()
        if done % settings.checkpoint_every == 0 or done == settings.steps:
            save(done)
    model.eval()
    if log_to is not None:
        log_to.finished(stage, history)
    return TrainResult(stage, settings.steps, history, last, time.perf_counter() - began, start)


def distributed() -> tuple[int, int]:
    """(rank, world size) of a data-parallel run; (0, 1) in a single process."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return 0, 1


def _average_gradients(parameters: list[torch.nn.Parameter], world: int) -> None:
    """Mean of every worker's gradients, in place, in one flat all-reduce. The parameters that
    have a gradient are the same on every worker: the same code runs on batches of one shape."""
    with_grad = [p for p in parameters if p.grad is not None]
    flat = torch.cat([p.grad.reshape(-1) for p in with_grad])  # type: ignore[union-attr]
    torch.distributed.all_reduce(flat)
    flat /= world
    offset = 0
    for p in with_grad:
        n = p.numel()
        p.grad = flat[offset : offset + n].view_as(p).clone()
        offset += n


def _gathered(state: torch.Tensor, world: int) -> list[torch.Tensor]:
    """Every worker's generator state, in rank order (for an exact resume)."""
    if world == 1:
        return [state]
    out: list = [None] * world
    torch.distributed.all_gather_object(out, state)
    return out


def _flow_parameters(model: SmallSam3D) -> list[torch.nn.Parameter]:
    """Everything but the VAE, which is trained first and then frozen."""
    return [*model.condition_encoder.parameters(), *model.flow.parameters()]


# -- stages -----------------------------------------------------------------------------------


def train_vae(
    model: SmallSam3D, batches: Iterable[Batch], settings: TrainSettings, *, calibration_batches: int = 8, **kw
) -> TrainResult:
    """Shape VAE (dice + KL on occupancy), then set the latent normalisation from
    ``calibration_batches`` further batches."""
    batches = iter(batches)
    result = fit(
        "vae",
        model,
        model.vae.parameters(),
        lambda b, g: model.vae.loss(b["occupancy"], model.cfg.kl_weight, g),
        batches,
        settings,
        **kw,
    )
    model.calibrate_latents(torch.cat([next(batches)["occupancy"] for _ in range(calibration_batches)]))
    return result


def pretrain_encoder(model: SmallSam3D, batches: Iterable[Batch], settings: TrainSettings, **kw) -> TrainResult:
    """The condition trunk alone, by regressing each object's occupancy and rotation (the
    symmetric rotation term, weighted as in the flow) from its crop and full image through a
    :class:`ShapeReadout` (seeded by ``settings.seed``, discarded afterwards):
    our stand-in for SAM 3D's pretrained image encoder."""
    trunk = model.condition_encoder.trunk
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(settings.seed)
        readout = ShapeReadout(model.cfg, trunk.tokens)

    weight = model.cfg.loss_weights.symmetric_rotation

    def loss(batch: Batch, generator: torch.Generator) -> dict[str, torch.Tensor]:
        b = batch["crop"].shape[0]
        features = trunk(torch.cat([batch["crop"], batch["full"]]))  # one pass over both views
        logits, rotation = readout(features[:b], features[b:])
        terms = occupancy_loss(logits, batch["occupancy"])
        if weight:
            turn = symmetric_rotation_loss(
                batch["occupancy"], matrix_from_rot6d(rotation), batch["rotation"], generator=generator
            ).mean()
            terms = {**terms, "loss": terms["loss"] + weight * turn, "symmetric_rotation": turn}
        return terms

    parameters = [*trunk.parameters(), *readout.parameters()]
    return fit("encoder", model, parameters, loss, batches, settings, auxiliary=readout, **kw)


def pretrain(model: SmallSam3D, batches: Iterable[Batch], settings: TrainSettings, **kw) -> TrainResult:
    """Iso-3DO: object-crop condition, shape + rotation terms only (no translation/scale)."""
    w = model.cfg.loss_weights
    weights = w.model_copy(update={"translation": 0.0, "scale": 0.0})
    return fit(
        "pretrain", model, _flow_parameters(model), lambda b, g: model.losses(b, g, weights), batches, settings, **kw
    )


def midtrain(model: SmallSam3D, batches: Iterable[Batch], settings: TrainSettings, **kw) -> TrainResult:
    """Flying Occlusions: full image + crop, every layout term."""
    return fit("midtrain", model, _flow_parameters(model), model.losses, batches, settings, **kw)


def sft(model: SmallSam3D, batches: Iterable[Batch], settings: TrainSettings, **kw) -> TrainResult:
    """Supervised fine-tuning on accepted (annotator-approved) data, every term."""
    return fit("sft", model, _flow_parameters(model), model.losses, batches, settings, **kw)


def dpo(
    model: SmallSam3D,
    pair_batches: Iterable[Batch],
    settings: TrainSettings,
    *,
    beta: float = 500.0,
    sft_weight: float = 0.0,
    reference: SmallSam3D | None = None,
    **kw,
) -> TrainResult:
    """Flow-DPO on (winner, loser) batches against a frozen reference (default: a copy of
    ``model`` as it is now, i.e. the SFT model), with an SFT term on the winners."""
    reference = frozen_copy(model) if reference is None else reference.eval().requires_grad_(False)
    reference.to(resolve_device(settings.device))
    params = {"beta": beta, "sft_weight": sft_weight, **kw.pop("params", {})}
    return fit(
        "dpo",
        model,
        _flow_parameters(model),
        lambda b, g: flow_dpo_loss(model, reference, b, beta, g, sft_weight),
        pair_batches,
        settings,
        params=params,
        **kw,
    )


def distill(
    model: SmallSam3D,
    batches: Iterable[Batch],
    settings: TrainSettings,
    *,
    guidance: float | None = None,
    consistency_fraction: float = 0.5,
    levels: int = 3,
    teacher: SmallSam3D | None = None,
    **kw,
) -> TrainResult:
    """Shortcut distillation of ``model`` (trained in place) from a frozen guided teacher
    (default: a copy of ``model`` as it is now)."""
    teacher = frozen_copy(model) if teacher is None else teacher.eval().requires_grad_(False)
    teacher.to(resolve_device(settings.device))
    guidance = model.cfg.guidance if guidance is None else guidance
    params = {
        "guidance": guidance,
        "consistency_fraction": consistency_fraction,
        "levels": levels,
        **kw.pop("params", {}),
    }
    return fit(
        "distill",
        model,
        _flow_parameters(model),
        lambda b, g: shortcut_loss(
            model, teacher, b, g, guidance=guidance, consistency_fraction=consistency_fraction, levels=levels
        ),
        batches,
        settings,
        params=params,
        **kw,
    )


def frozen_copy(model: SmallSam3D) -> SmallSam3D:
    return copy.deepcopy(model).eval().requires_grad_(False)
