"""The export layouts: where each trainer looks for a support's aux image k, as a registry.

- `diffss-bam`: where the DifFSS fork of BAM (`util/dataset.py`, `SemData`) looks for them:
  `aux_data_dir + mainshot_fn + f"_{class_chosen}_{k}.jpg"` (then `.png`), where `mainshot_fn` is
  the support image's file name minus its last 4 characters (`name[:-4]`, i.e. the stem for
  `.jpg`/`.png`), prefixed with the image's parent folder for COCO (`train2014/…`, `val2014/…`),
  `class_chosen` the support mask's class value (PASCAL 1..20, COCO 1..80) and k = 0..X-1.
  That loader silently falls back to the real support when a file is missing, so the export
  reports coverage per support: complete, or how many are missing and why.
- `fss`: `{class folder}/{idx}_1_{k}.jpg`, DifFSS's own FSS-1000 output (ControlNet4FSS
  `FSSpregenerate.py`: the image name `{class}/{idx}`, the binarised mask's class 1); the class
  folder is the support image's parent folder, as in the FSS-1000 tree.
- `folder`: `DIR/{class_name}/{sample_id}_{k}.png`, for general use.

Each layout is a `Layout` registered under its name (`@register`); `LAYOUTS` maps the names to
them in registration order, and `get_layout(name)` is the one check of a name (the CLI's `--layout`
and `export_run` both use it). k may be `"control"`: the name of the support's condition image.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar

from difaug.adapters.export.result import ExportError
from difaug.core.names import safe_component

if TYPE_CHECKING:
    from difaug.adapters.run import RunView

FORMATS = ("jpg", "png")
BAM_CLASS_RANGE = {"pascal": (1, 20), "coco": (1, 80)}
FSS_CLASS = 1  # DifFSS binarises FSS-1000 masks to 0/1: every aux file carries class 1


@dataclass(frozen=True)
class Support:
    """The manifest values of a support that its file names are built from."""

    sample_id: str
    image: str
    dataset: str
    class_id: int
    class_name: str


class Layout:
    """One way of naming the exported files. Subclasses set the class attributes and
    `relative_name`; `check` refuses a run the layout cannot describe (before anything is written)."""

    name: ClassVar[str]
    default_format: ClassVar[str] = "jpg"
    help: ClassVar[str]  # the file names, for `--layout`'s help
    # The trainer builds these names itself: an unsafe one cannot be "fixed" into a safe one, so
    # its image is skipped (and reported) instead of written under another name.
    exact_names: ClassVar[bool] = True
    # True for a layout whose file names include the run: two runs exported into one folder then
    # cannot name the same file. None of the built-in layouts does (their names are the trainers'),
    # so `export_run` refuses a file another run's export holds in the folder.
    names_by_run: ClassVar[bool] = False
    # Printed when supports lack files: what the trainer does about a missing one.
    missing_note: ClassVar[str] = ""

    def relative_name(self, support: Support, k: int | str, fmt: str) -> list[str]:
        """The path parts (under the export folder) of the support's aux image k."""
        raise NotImplementedError

    def check(self, view: RunView) -> None:
        """Raise `ExportError` naming the first rows this layout cannot name."""


LAYOUTS: dict[str, Layout] = {}


def register(cls: type[Layout]) -> type[Layout]:
    """Add a layout to `LAYOUTS` (and so to `--layout`) under its `name`."""
    LAYOUTS[cls.name] = cls()
    return cls


def get_layout(name: str) -> Layout:
    """The layout of that name; `ExportError` listing the known ones otherwise."""
    found = LAYOUTS.get(name)
    if found is None:
        raise ExportError(f"unknown layout {name!r}; use one of: {', '.join(LAYOUTS)}")
    return found


def bam_relative_name(image: str, dataset: str, class_id: int, k: int | str, fmt: str = "jpg") -> list[str]:
    """The path parts (under aux_data_dir) at which DifFSS-BAM looks for aux image k of a support
    (`k="control"`: where DifFSS saved its condition image)."""
    parts = image.split("/")  # BAM splits on "/" whatever the OS
    stem = parts[-1][:-4]
    name = f"{stem}_{class_id}_{k}.{fmt}"
    if dataset == "coco":
        return [parts[-2] if len(parts) > 1 else "", name]
    return [name]


@register
class DiffssBam(Layout):
    name = "diffss-bam"
    help = "{stem}_{class_id}_{k}.jpg (COCO: {train2014|val2014}/…), as DifFSS-BAM reads them"
    missing_note = (
        "DifFSS-BAM silently falls back to the real support image for every missing file listed above."
    )

    def relative_name(self, support: Support, k: int | str, fmt: str) -> list[str]:
        return bam_relative_name(support.image, support.dataset.lower(), support.class_id, k, fmt)

    def check(self, view: RunView) -> None:
        datasets = [str(d or "").lower() for d in view.keys.column("dataset").to_pylist()]
        class_ids = view.keys.column("class_id").to_pylist()
        sample_ids = view.keys.column("sample_id").to_pylist()
        rows = list(zip(sample_ids, datasets, class_ids, strict=True))
        bad_ds = sorted({(sid, d) for sid, d, _ in rows if d not in BAM_CLASS_RANGE})
        if bad_ds:
            examples = ", ".join(f"{sid} (dataset {d!r})" for sid, d in bad_ds[:3])
            raise ExportError(
                f"--layout diffss-bam needs every row's dataset to be pascal or coco; {len(bad_ds)} "
                f"sample(s) are not, e.g. {examples}. Use --layout fss for FSS-1000, --layout folder for other data."
            )
        bad_cls = sorted(
            {(sid, d, c) for sid, d, c in rows if not BAM_CLASS_RANGE[d][0] <= c <= BAM_CLASS_RANGE[d][1]}
        )
        if bad_cls:
            sid, d, c = bad_cls[0]
            lo, hi = BAM_CLASS_RANGE[d]
            raise ExportError(
                f"BAM names aux files by the {d} class id ({lo}..{hi}), the support mask's value; "
                f"{len(bad_cls)} sample(s) have other class ids, e.g. {sid} with class_id {c}. Build the "
                "manifest with the dataset's class ids (difaug manifest build pascal5i/coco20i), or use "
                "--layout folder."
            )


@register
class Fss(Layout):
    name = "fss"
    help = "{class folder}/{idx}_1_{k}.jpg, DifFSS's FSS-1000 output"

    def relative_name(self, support: Support, k: int | str, fmt: str) -> list[str]:
        parts = support.image.replace("\\", "/").split("/")
        stem = os.path.splitext(parts[-1])[0]
        return [parts[-2] if len(parts) > 1 else "", f"{stem}_{FSS_CLASS}_{k}.{fmt}"]


@register
class Folder(Layout):
    name = "folder"
    default_format = "png"
    help = "{class_name}/{sample_id}_{k}.png"
    exact_names = False  # nobody builds these names: manifest values are made safe instead

    def relative_name(self, support: Support, k: int | str, fmt: str) -> list[str]:
        return [safe_component(support.class_name), f"{safe_component(support.sample_id)}_{k}.{fmt}"]
