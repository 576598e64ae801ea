"""The "real" world's segmenter mask errors."""

from __future__ import annotations

import numpy as np

from rendering.segmenter import seed_of, segmenter_mask


def _disc_mask(size=96, radius=20):
    yy, xx = np.mgrid[:size, :size]
    return (yy - 48) ** 2 + (xx - 40) ** 2 <= radius**2


def test_no_error_is_the_exact_mask_and_errors_are_seeded_by_the_image():
    mask = _disc_mask()
    assert segmenter_mask(mask, 0.0, 1) is mask
    a = segmenter_mask(mask, 0.15, seed_of("fo-000003"))
    assert np.array_equal(a, segmenter_mask(mask, 0.15, seed_of("fo-000003")))
    assert not np.array_equal(a, segmenter_mask(mask, 0.15, seed_of("fo-000004")))


def test_errors_grow_with_the_rate_and_never_erase_the_object():
    mask = _disc_mask()
    wrong = {
        error: np.mean([(segmenter_mask(mask, error, seed) ^ mask).sum() / mask.sum() for seed in range(40)])
        for error in (0.05, 0.2)
    }
    assert 0.01 < wrong[0.05] < wrong[0.2] < 0.6
    tiny = np.zeros((32, 32), bool)
    tiny[10, 10] = True
    for seed in range(20):
        assert segmenter_mask(tiny, 0.5, seed).any()
