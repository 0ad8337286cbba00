"""Manifest builders for the dataset layouts FSS people have on disk.

Each `build_*` returns a `BuildResult`: the manifest rows (one per image and foreground class) and
a `Skip` with a reason for everything left out. `BuildResult.write(out)` writes the manifest.

```python
from difaug.inputs.datasets import build_pascal5i
result = build_pascal5i("VOCdevkit/VOC2012", list_file="lists/pascal/val.txt", fold=0, split="val")
result.write("manifests/pascal5i-fold0-val.csv")
print(len(result.rows), result.skip_counts)
```
"""

from difaug.inputs.datasets.coco20i import build_coco20i
from difaug.inputs.datasets.common import (
    DEFAULT_MIN_AREA,
    LIST_FORMATS,
    BuildError,
    BuildResult,
    ListEntry,
    Skip,
    SkipReason,
    detect_list_format,
    fold_classes,
    read_hsnet_split,
    read_list_file,
    read_split_file,
    select_classes,
)
from difaug.inputs.datasets.folder import build_folder, read_classes_csv
from difaug.inputs.datasets.fss1000 import (
    build_fss1000,
    hsnet_fss_class_ids,
    manifest_class_id_from_hsnet,
    stable_class_ids,
)
from difaug.inputs.datasets.pascal5i import build_pascal5i
from difaug.inputs.datasets.trainers import (
    TRAINERS,
    TrainerPreset,
    build_splits,
    hsnet_split_files,
    trainer_preset,
)

__all__ = [
    "DEFAULT_MIN_AREA",
    "LIST_FORMATS",
    "TRAINERS",
    "BuildError",
    "BuildResult",
    "ListEntry",
    "Skip",
    "SkipReason",
    "TrainerPreset",
    "build_coco20i",
    "build_folder",
    "build_fss1000",
    "build_pascal5i",
    "build_splits",
    "detect_list_format",
    "fold_classes",
    "hsnet_fss_class_ids",
    "hsnet_split_files",
    "manifest_class_id_from_hsnet",
    "read_classes_csv",
    "read_hsnet_split",
    "read_list_file",
    "read_split_file",
    "select_classes",
    "stable_class_ids",
    "trainer_preset",
]
