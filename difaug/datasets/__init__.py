"""Manifest builders for the dataset layouts FSS people have on disk.

Each `build_*` returns a `BuildResult`: the manifest rows (one per image and foreground class) and
a `Skip` with a reason for everything left out. `BuildResult.write(out)` writes the manifest.

```python
from difaug.datasets import build_pascal5i
result = build_pascal5i("VOCdevkit/VOC2012", list_file="lists/pascal/val.txt", fold=0, split="val")
result.write("manifests/pascal5i-fold0-val.csv")
print(len(result.rows), result.skip_counts)
```
"""

from difaug.datasets.coco20i import build_coco20i
from difaug.datasets.common import (
    DEFAULT_MIN_AREA,
    BuildError,
    BuildResult,
    ListEntry,
    Skip,
    SkipReason,
    fold_classes,
    read_list_file,
    select_classes,
)
from difaug.datasets.folder import build_folder, read_classes_csv
from difaug.datasets.fss1000 import build_fss1000, stable_class_ids
from difaug.datasets.pascal5i import build_pascal5i

__all__ = [
    "DEFAULT_MIN_AREA",
    "BuildError",
    "BuildResult",
    "ListEntry",
    "Skip",
    "SkipReason",
    "build_coco20i",
    "build_folder",
    "build_fss1000",
    "build_pascal5i",
    "fold_classes",
    "read_classes_csv",
    "read_list_file",
    "select_classes",
    "stable_class_ids",
]
