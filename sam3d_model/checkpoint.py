"""Checkpoints: model config + weights (+ optimizer and RNG state to resume training).

Written atomically (temporary file, then rename) so a killed run never leaves half a
checkpoint; read with ``torch.load(weights_only=True)`` so a checkpoint file can never run
code. Everything in it is plain data: the config as a dict, tensors, numbers.
"""

from __future__ import annotations

import os
import pickle
import tempfile
from pathlib import Path
from typing import Any

import torch
from pydantic import ValidationError

from sam3d_model.config import ModelConfig
from sam3d_model.model import SmallSam3D

FORMAT = "sam3d-flywheel-checkpoint/1"


class CheckpointError(RuntimeError):
    """A checkpoint that is missing, unreadable, or not one of ours; names file and reason."""


def save_checkpoint(
    path: str | Path,
    model: SmallSam3D,
    *,
    optimizer: torch.optim.Optimizer | None = None,
    step: int = 0,
    generator: torch.Generator | None = None,
    extra: dict | None = None,
) -> Path:
    payload: dict[str, Any] = {
        "format": FORMAT,
        "model_config": model.cfg.model_dump(mode="json"),
        "model": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        "step": int(step),
        "extra": extra or {},
    }
    if optimizer is not None:
        payload["optimizer"] = optimizer.state_dict()
    if generator is not None:
        payload["generator"] = generator.get_state()
    return atomic_save(payload, path)


def atomic_save(payload: dict[str, Any], path: str | Path) -> Path:
    """torch.save ``payload`` to ``path`` through a temporary file and a rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(payload, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def read_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """The checkpoint's contents, checked; CheckpointError says what is wrong with the file."""
    payload = read_payload(path, FORMAT, map_location)
    for key in ("model_config", "model", "step"):
        if key not in payload:
            raise CheckpointError(f"checkpoint {path}: missing {key!r}")
    return payload


def read_payload(path: str | Path, expected: str, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """A file written by :func:`atomic_save` whose ``format`` is ``expected``, loaded with
    ``weights_only`` (it can never run code); CheckpointError says what is wrong with it."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path}: no such file")
    try:
        payload = torch.load(path, map_location=map_location, weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, ValueError, OSError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise CheckpointError(
            f"checkpoint {path}: not a readable torch checkpoint "
            f"(truncated, corrupt or not written by torch.save): {first}"
        ) from None
    if not isinstance(payload, dict) or payload.get("format") != expected:
        found = payload.get("format") if isinstance(payload, dict) else type(payload).__name__
        raise CheckpointError(f"checkpoint {path}: not a {expected} checkpoint (found {found!r})")
    return payload


def model_from_payload(payload: dict, source: str) -> SmallSam3D:
    try:
        # written before the condition summary existed: a model without one
        cfg = ModelConfig(**{"condition_summary": 0, **payload["model_config"]})
    except ValidationError as e:
        raise CheckpointError(f"checkpoint {source}: invalid model config: {e.errors()[0]['msg']}") from None
    model = SmallSam3D(cfg)
    try:
        result = model.load_state_dict(payload["model"], strict=False)
    except RuntimeError as e:  # a tensor of the wrong shape
        raise CheckpointError(
            f"checkpoint {source}: weights do not fit the model config: {str(e).splitlines()[-1].strip()}"
        ) from None
    if result.missing_keys or result.unexpected_keys:
        raise CheckpointError(
            f"checkpoint {source}: weights do not fit the model config "
            f"(missing {result.missing_keys[:3]}, unexpected {result.unexpected_keys[:3]})"
        )
    return model


def load_model(path: str | Path, map_location: str | torch.device = "cpu") -> SmallSam3D:
    """The model stored in a checkpoint, in eval mode."""
    model = model_from_payload(read_checkpoint(path, map_location), str(path))
    return model.to(map_location).eval()
