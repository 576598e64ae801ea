"""The promotion rule: does the challenger replace the champion?"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict

HIGHER_IS_BETTER = frozenset({"viou", "f1", "add_s_accuracy"})


class Promotion(BaseModel):
    """The rule's decision and why."""

    model_config = ConfigDict(frozen=True)
    promote: bool
    metric: str
    gain: float
    regressions: dict[str, float]
    reason: str


def better(metric: str, challenger: float, champion: float) -> float:
    """How much better the challenger is on ``metric`` (positive: better), whichever way it points."""
    return challenger - champion if metric in HIGHER_IS_BETTER else champion - challenger


def promotion(
    champion: dict[str, float],
    challenger: dict[str, float],
    *,
    metric: str,
    min_gain: float,
    max_regression: dict[str, float],
) -> Promotion:
    """The promotion rule: promote when the challenger gains at least ``min_gain`` on ``metric``
    and loses no more than ``max_regression[m]`` on any other metric ``m``."""
    gain = better(metric, challenger[metric], champion[metric])
    regressions = {
        m: -better(m, challenger[m], champion[m])
        for m in max_regression
        if -better(m, challenger[m], champion[m]) > max_regression[m]
    }
    promote = gain >= min_gain and not regressions
    if promote:
        reason = f"{metric} {champion[metric]:.4f} -> {challenger[metric]:.4f} (gain {gain:+.4f} >= {min_gain})"
    elif gain < min_gain:
        reason = f"{metric} gain {gain:+.4f} < {min_gain}"
    else:
        reason = "regressed: " + ", ".join(f"{m} by {d:.4f} (> {max_regression[m]})" for m, d in regressions.items())
    return Promotion(promote=promote, metric=metric, gain=gain, regressions=regressions, reason=reason)
