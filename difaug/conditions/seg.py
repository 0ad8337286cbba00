"""The `seg` condition: the support mask painted in ADE20K colours, as the ControlNet-seg model expects.

Foreground pixels (`mask == class_id`) get the ADE20K palette colour of the class's ADE index, every
other pixel (background, other classes, the 255 "ignore" border) gets palette[0] = (120, 120, 120),
the colour ControlNet-seg's training maps use for "wall" and DifFSS for background. The map is
built at the support's size and resized with nearest neighbour to the working size, so no new
colours appear.

Which ADE index a row gets, first match wins:

1. the row's dataset table (`pascal`, `coco`, `fss1000`) by `class_id` — for `pascal` and `coco`,
   whose masks store the dataset's own class ids; for `fss1000` only when the table's name for that
   id is the row's class name, because FSS-1000 masks are binary and hand-made manifests often use
   the foreground value (1) as `class_id` (our builder writes the table id, 1255 for "gazelle");
2. the row's dataset table by class name (normalised: lower case, `_` → space);
3. any table, then the ADE20K class names themselves, by class name (`folder`, `demo`, custom data);
4. otherwise the **fallback colour (255, 255, 255)**: white is not an ADE20K palette colour, so it
   names no ADE class (a wrong class colour would pull the generated object towards that class),
   while still giving ControlNet the object's exact shape against the grey background; the class
   prompt carries the semantics. Each fallback is counted in `SegCondition.fallbacks` by class name
   (`difaug conditions` and `difaug inspect` print them); it never fails the sample.

Style `upstream` is the same map: the upstream annotator would segment the whole scene with
UniFormer, which makes no sense when the ground-truth mask is at hand (and is not what DifFSS did).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence

import numpy as np

from difaug.conditions import ConditionInput, foreground, prepare_input
from difaug.conditions.resize import resize_mask
from difaug.core.classes import ade_index_by_name, ade_palette, class_table, normalise_name
from difaug.core.geometry import DEFAULT_RESOLUTION, working_size

FALLBACK_COLOUR = (255, 255, 255)
DATASET_TABLES = ("pascal", "coco", "fss1000")
# Datasets whose mask values are the table's class ids (FSS-1000 masks are binary).
ID_KEYED_DATASETS = ("pascal", "coco")


def ade_index_for(dataset: str, class_id: int, class_name: str) -> int | None:
    """The ADE20K index for a row (see the module docstring for the order), or None if unknown."""
    name = normalise_name(class_name)
    dataset = dataset.strip().lower()
    if dataset in DATASET_TABLES:
        table = class_table(dataset)
        info = table.get(class_id)
        if info is not None and (dataset in ID_KEYED_DATASETS or normalise_name(info.class_name) == name):
            return info.ade_index
        for info in table.values():
            if normalise_name(info.class_name) == name:
                return info.ade_index
    return ade_index_by_name().get(name)


def seg_map(mask: np.ndarray, class_id: int, colour: Sequence[int], size: tuple[int, int]) -> np.ndarray:
    """`colour` on `mask == class_id`, palette[0] elsewhere, nearest-resized to `size = (w, h)`."""
    fg = resize_mask(foreground(mask, class_id), size).astype(bool)
    out = np.empty((*fg.shape, 3), dtype=np.uint8)
    out[:] = ade_palette()[0]
    out[fg] = np.asarray(colour, dtype=np.uint8)
    return out


class SegCondition:
    """ADE20K colour map of the foreground class (see the module docstring)."""

    name = "seg"

    def __init__(self, *, style: str = "diffss", resolution: int = DEFAULT_RESOLUTION) -> None:
        self.style = style
        self.resolution = resolution
        self.fallbacks: Counter[str] = Counter()
        self._colours: dict[tuple[str, int, str], tuple[tuple[int, int, int], bool]] = {}

    def colour(self, dataset: str, class_id: int, class_name: str) -> tuple[tuple[int, int, int], bool]:
        """`(rgb, is_fallback)` for a row's class, cached."""
        key = (dataset, class_id, class_name)
        if key not in self._colours:
            index = ade_index_for(dataset, class_id, class_name)
            if index is None or not 0 <= index < len(ade_palette()):
                self._colours[key] = (FALLBACK_COLOUR, True)
            else:
                r, g, b = (int(v) for v in ade_palette()[index])
                self._colours[key] = ((r, g, b), False)
        return self._colours[key]

    def __call__(self, batch: Sequence[ConditionInput]) -> list[np.ndarray]:
        out = []
        for raw in batch:
            item = prepare_input(raw)
            s = item.sample
            colour, fallback = self.colour(s.dataset, s.class_id, s.class_name)
            if fallback:
                self.fallbacks[s.class_name] += 1
            h, w = item.mask.shape[:2]
            out.append(seg_map(item.mask, s.class_id, colour, working_size(w, h, self.resolution)))
        return out

    def __repr__(self) -> str:
        return f"SegCondition(style={self.style!r}, resolution={self.resolution})"
