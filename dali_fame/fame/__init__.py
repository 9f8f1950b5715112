"""FAME (foreground-background merging) and BE (background erasing) for video clips.

Clips are uint8 (B, T, H, W, 3) RGB channels-last on CPU or CUDA. The contract is
``shared/design/fame-spec.md`` sections 1-4; :mod:`dali_fame.fame.reference` is its executable
form, :mod:`dali_fame.fame.cuda` the CuPy kernels (CUDA tensors), chosen by ``backend=``
("auto": CUDA tensors -> kernels, CPU tensors -> torch reference).

    mask = fame_mask(clips, beta=0.5)                      # bool (B, H, W)
    perm = random_permutation(B, generator=g)              # int64 (B,), a derangement
    merged = fame_merge(clips, mask, perm)                 # uint8 (B, T, H, W, 3)
    model_in = fame_merge_normalize(clips, mask, perm)     # float32 (B, 3, T, H, W)

Nothing here touches CUDA at import time.
"""

from dali_fame.fame.api import (
    KINETICS_MEAN,
    KINETICS_STD,
    fame_mask,
    fame_merge,
    fame_merge_normalize,
    random_permutation,
)
from dali_fame.fame.be import background_erasing, background_erasing_apply, be_params
from dali_fame.fame.dispatch import BACKENDS
from dali_fame.fame.module import FAME, BackgroundErasing, BEOutput, FAMEOutput
from dali_fame.fame.variants import VARIANTS

__all__ = [
    "BACKENDS",
    "FAME",
    "KINETICS_MEAN",
    "KINETICS_STD",
    "VARIANTS",
    "BEOutput",
    "BackgroundErasing",
    "FAMEOutput",
    "background_erasing",
    "background_erasing_apply",
    "be_params",
    "fame_mask",
    "fame_merge",
    "fame_merge_normalize",
    "random_permutation",
]
