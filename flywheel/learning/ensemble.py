"""The ensemble that proposes candidates: its members (sam3d_model.ensemble.Member), and
every model they use pinned to an immutable version and checked file."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from flywheel.core.config import FlywheelConfig
from flywheel.tracking.registry import ModelNotFound, RegistryUnreachable, resolve_model
from sam3d_model.checkpoint import read_checkpoint
from sam3d_model.config import ModelConfig
from sam3d_model.ensemble import DEFAULT_MEMBERS, Member, oversampled

log = logging.getLogger(__name__)

#: The model key of the series' previous champion (set by a round once the champion has been
#: replaced; until then members that use it sit the round out).
EARLIER_CHAMPION = "earlier-champion"


@dataclass(frozen=True)
class PinnedModel:
    """A model an ensemble uses, pinned: ``models:/NAME/VERSION`` (or a checkpoint path), its
    label for provenance and the sha256 of its checkpoint."""

    ref: str
    label: str
    sha256: str


def ensemble_members(cfg: FlywheelConfig, oversample: int = 1) -> list[dict[str, Any]]:
    """The configured members (or the default ensemble) as plain dicts (validated), each
    proposing ``oversample`` times as many candidates (sam3d_model.ensemble.oversampled)."""
    members = tuple(Member(**m) for m in cfg.candidates.members) or DEFAULT_MEMBERS
    return [m.model_dump(mode="json") for m in oversampled(members, oversample)]


def resolve_ensemble(
    cfg: FlywheelConfig, members: list[dict[str, Any]]
) -> tuple[dict[str, PinnedModel], list[dict[str, Any]], list[dict[str, Any]]]:
    """Pin every model the members use to an immutable version: {key: {ref, label, sha256}}.
    An alias such as ``@champion`` is resolved now, so the run's cache keys name versions.

    Members of the :data:`EARLIER_CHAMPION` model sit out while there is none. A model that
    cannot be resolved (unknown version, unreachable registry) costs only the members that use it: they are dropped and reported as quarantine rows; the remaining
    members still propose (and top up to N). Returns (models, members kept, quarantine rows)."""
    models: dict[str, PinnedModel] = {}
    problems: dict[str, tuple[str, str]] = {}
    resting = [m for m in members if m["model"] == EARLIER_CHAMPION and EARLIER_CHAMPION not in cfg.candidates.models]
    for m in resting:
        log.info("ensemble member %s: no earlier champion in this series yet; it sits this round out", m["name"])
    members = [m for m in members if m not in resting]
    for key in sorted({m["model"] for m in members}):
        ref = cfg.candidates.models.get(key)
        if ref is None:
            problems[key] = (
                "unknown model",
                f"model key {key!r} is not in candidates.models ({', '.join(cfg.candidates.models) or 'none'})",
            )
            continue
        try:
            resolved = resolve_model(cfg, ref)
        except ModelNotFound as e:
            problems[key] = ("unknown model", str(e))
            continue
        except RegistryUnreachable as e:
            problems[key] = ("registry unreachable", str(e))
            continue
        pinned = f"models:/{resolved.label}" if not resolved.label.startswith("file:") else str(resolved.path)
        models[key] = PinnedModel(ref=pinned, label=resolved.label, sha256=resolved.sha256)
    kept = [m for m in members if m["model"] in models]
    dropped = [
        {
            "item_id": m["name"],
            "kind": "member",
            "reason": problems[m["model"]][0],
            "detail": f"ensemble member {m['name']}: {problems[m['model']][1]}",
        }
        for m in members
        if m["model"] in problems
    ]
    for row in dropped:
        log.error("%s; proposing without it", row["detail"])
    if not any(m["kind"] == "model" for m in kept):
        raise ModelNotFound("no ensemble member has a usable model: " + "; ".join(r["detail"] for r in dropped))
    return models, kept, dropped


def local_checkpoints(
    cfg: FlywheelConfig, models: dict[str, PinnedModel]
) -> tuple[dict[str, tuple[str, str]], ModelConfig]:
    """Local checkpoint files of the pinned models, checked against their digests, and the
    (shared) input config of the ensemble."""
    out: dict[str, tuple[str, str]] = {}
    configs: dict[str, ModelConfig] = {}
    for key, m in models.items():
        resolved = resolve_model(cfg, m.ref)
        if resolved.sha256 != m.sha256:
            raise ValueError(f"model {m.label}: checkpoint digest changed since the run pinned it")
        out[key] = (str(resolved.path), m.label)
        configs[key] = ModelConfig(**read_checkpoint(resolved.path)["model_config"])
    first = next(iter(configs.values()))
    for key, c in configs.items():
        if (c.image_size, c.use_pointmap, c.resolution) != (first.image_size, first.use_pointmap, first.resolution):
            raise ValueError(
                f"ensemble models disagree on inputs/outputs: {key} has image_size {c.image_size}, "
                f"use_pointmap {c.use_pointmap}, resolution {c.resolution}"
            )
    return out, first
