"""The promotion rule: does the challenger replace the champion?

It decides on the paired bootstrap intervals of the challenger's gains over the champion on
the held-out set's *selection* half (:mod:`flywheel.learning.heldout`), not on two means: a
gain counts when its interval's lower bound clears ``min_gain`` and the gain itself is larger
than the training-seed noise (what retraining with another seed alone moves the metric,
:class:`~flywheel.learning.heldout.SeedNoise`), and a guarded metric blocks promotion only when
its loss is credibly beyond its allowance (the interval's upper bound is a loss larger than
the allowance).
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict

from sam3d_model.evaluation import Interval


class Promotion(BaseModel):
    """The rule's decision and why."""

    model_config = ConfigDict(frozen=True)
    promote: bool
    metric: str
    gain: float
    regressions: dict[str, float]
    reason: str
    interval: tuple[float, float] | None = None  # 95% interval of the gain (records before v2: none)
    seed_noise: float = 0.0  # the gain had to exceed this (0: not measured)


def promotion(
    gains: dict[str, Interval],
    *,
    metric: str,
    min_gain: float,
    max_regression: dict[str, float],
    seed_noise: float = 0.0,
) -> Promotion:
    """Promote when the lower bound of the gain on ``metric`` is above ``min_gain``, the gain is
    above ``seed_noise`` (the metric's spread over training seeds; 0: not measured), and no
    metric ``m`` of ``max_regression`` credibly loses more than ``max_regression[m]`` (the upper
    bound of its gain is below ``-max_regression[m]``). ``gains``: metric -> interval of
    challenger - champion, positive = better."""
    if metric not in gains:
        raise ValueError(f"promotion: no interval for the promote metric {metric!r}")
    g = gains[metric]
    regressions = {
        m: -gains[m].gain for m, allowed in max_regression.items() if m in gains and gains[m].high < -allowed
    }
    promote = g.low > min_gain and g.gain > seed_noise and not regressions
    if promote:
        reason = f"{metric} gain {g} > {min_gain} with 95% confidence"
        if seed_noise:
            reason += f" and beyond the training-seed noise {seed_noise:.4f}"
    elif g.low <= min_gain:
        reason = f"{metric} gain {g}: not above {min_gain} with 95% confidence"
    elif g.gain <= seed_noise:
        reason = f"{metric} gain {g}: within the training-seed noise {seed_noise:.4f} (reseeding alone moves it so far)"
    else:
        reason = "regressed: " + ", ".join(f"{m} {gains[m]} (allowed -{max_regression[m]})" for m in regressions)
    return Promotion(
        promote=promote,
        metric=metric,
        gain=g.gain,
        regressions=regressions,
        reason=reason,
        interval=(g.low, g.high),
        seed_noise=seed_noise,
    )
