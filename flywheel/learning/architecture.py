"""The model a config describes (kept apart from the training code: the CLI checks it at
start without importing torch)."""

from __future__ import annotations

from pydantic import ValidationError

from flywheel.core.config import ConfigError, ModelSection
from sam3d_model.config import ModelConfig, preset


def model_architecture(section: ModelSection) -> ModelConfig:
    """The model config ``section`` describes (its preset with its overrides); a bad override
    is a :class:`ConfigError` naming the field."""
    try:
        return preset(section.preset, **section.overrides)
    except ValidationError as e:
        problems = [
            f"  model.overrides.{'.'.join(str(p) for p in item['loc'])} = {item.get('input')!r} "
            f"(on preset {section.preset!r}): {item['msg']}"
            for item in e.errors()
        ]
        raise ConfigError(f"invalid configuration ({len(problems)} problem(s)):\n" + "\n".join(problems)) from None
