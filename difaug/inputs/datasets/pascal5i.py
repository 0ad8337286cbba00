"""PASCAL-5i: the VOC2012 tree with SBD-augmented masks, as PFENet / BAM / HSNet keep it.

```
ROOT/JPEGImages/2007_000032.jpg
ROOT/SegmentationClassAug/2007_000032.png   # values: 0 background, 1..20 classes, 255 border
```
Palette PNGs (VOC's own `SegmentationClass`) hold the class ids as palette indices, which is what
`imageio.load_mask` returns, so both kinds work. Fold i's test classes are 5i+1 … 5i+5.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from difaug.inputs.datasets.class_id_masks import ClassIdOptions, build_class_id_masks
from difaug.inputs.datasets.common import BuildResult, select_classes

if TYPE_CHECKING:
    from typing_extensions import Unpack  # for type checkers only; typing's: Python >= 3.11

N_CLASSES = 20


def build_pascal5i(
    root: str | Path,
    *,
    fold: int | None = None,
    split: str | None = None,
    image_dir: str = "JPEGImages",
    mask_dir: str | None = None,
    **options: Unpack[ClassIdOptions],
) -> BuildResult:
    """Rows for every (image, class present with >= `min_area` pixels) of a VOC-style tree.

    `list_file`: one or more data lists, PFENet/BAM style (paths relative to `root`) or HSNet split
    files (`2007_000032__01`: only that class of that image), `list_format` auto-detected; without
    it every mask in `mask_dir` (default `SegmentationClassAug`, else `SegmentationClass`) is paired
    by stem with `image_dir`. `fold` + `split`: `val` keeps the fold's 5 test classes, `train` the
    other 15; `filter_intersection` (train only) drops images showing any test class, as BAM's
    training lists do. `options` (`list_file`, `list_format`, `min_area`, `filter_intersection`,
    `deep`, `workers`, `progress`): see `build_class_id_masks`. sample_id is `{stem}_{class_id}`."""
    selected, split_value = select_classes(N_CLASSES, fold, split)
    return build_class_id_masks(
        "pascal",
        root,
        image_dirs=[image_dir],
        mask_dirs=[mask_dir] if mask_dir else None,
        default_mask_dirs=["SegmentationClassAug", "SegmentationClass"],
        selected=selected,
        split=split_value,
        fold=fold,
        **options,
    )
