"""COCO-20i: COCO 2014 images with per-image class-id annotation PNGs, as FSS repos store them.

```
ROOT/train2014/COCO_train2014_000000000009.jpg
ROOT/annotations/train2014/COCO_train2014_000000000009.png   # 0 background, 1..80 classes, 255 ignore
ROOT/val2014/…  ROOT/annotations/val2014/…
```
This is HSNet's `COCO2014/` layout and what PFENet/BAM data lists point at (lines like
`train2014/COCO_train2014_000000000009.jpg annotations/train2014/COCO_train2014_000000000009.png`).
Class ids are the contiguous 1..80 of the FSS repos, not COCO's sparse category ids.

Two fold rules are in use: `interleaved` (fold i tests i+1, i+5, …, i+77: HSNet, and every shipped
COCO config of PFENet, BAM, HDMNet and DifFSS-BAM, which set `use_split_coco: True`) and
`contiguous` (fold i tests 20i+1 … 20i+20: PANet, and PFENet/BAM with `use_split_coco: False`).

HSNet's COCO split pickles (`data/splits/coco/{trn,val}/fold*.pkl`) are read as lists too: the
image is the listed `train2014/….jpg`, the mask `annotations/train2014/….png`, the class the key + 1.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from difaug.inputs.datasets.class_id_masks import ClassIdOptions, build_class_id_masks
from difaug.inputs.datasets.common import BuildError, BuildResult, select_classes

if TYPE_CHECKING:
    from typing_extensions import Unpack  # for type checkers only; typing's: Python >= 3.11

N_CLASSES = 80
SPLIT_DIRS = {"train": "train2014", "trn": "train2014", "val": "val2014", "test": "val2014"}


def build_coco20i(
    root: str | Path,
    *,
    fold: int | None = None,
    fold_rule: str = "interleaved",
    split: str | None = None,
    image_dir: str | None = None,
    mask_dir: str | None = None,
    **options: Unpack[ClassIdOptions],
) -> BuildResult:
    """Rows for every (image, class present with >= `min_area` pixels) of a COCO-20i tree.

    Without `list_file`, images come from `train2014/` for `split=train`, `val2014/` for `split=val`,
    both when no split is given (override with `image_dir`); each image dir `D`'s masks are in
    `annotations/D` (override with `mask_dir`). `options` (`list_file`, `list_format`, `min_area`,
    `filter_intersection`, `deep`, `workers`, `progress`): as for `build_pascal5i` (HSNet's `.pkl`
    splits included), see `build_class_id_masks`. sample_id is `{stem}_{class_id}`."""
    selected, split_value = select_classes(N_CLASSES, fold, split, fold_rule)
    if image_dir is not None:
        image_dirs = [image_dir]
    elif split is not None:
        image_dirs = [SPLIT_DIRS[split]]
    else:
        image_dirs = [d for d in ("train2014", "val2014") if (Path(root) / d).is_dir()]
        if not image_dirs and options.get("list_file") is None:
            raise BuildError(f"no train2014/ or val2014/ under {root}; pass --image-dir or --list")
        image_dirs = image_dirs or ["train2014"]
    if mask_dir is not None:
        mask_dirs = [mask_dir] * len(image_dirs)
    else:
        mask_dirs = [f"annotations/{d}" for d in image_dirs]
    return build_class_id_masks(
        "coco",
        root,
        image_dirs=image_dirs,
        mask_dirs=mask_dirs,
        default_mask_dirs=mask_dirs,
        selected=selected,
        split=split_value,
        fold=fold,
        **options,
    )
