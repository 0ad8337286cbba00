"""What each FSS trainer samples supports from, as `manifest build --trainer NAME` presets.

A manifest should hold exactly the (image, class) pairs a trainer can draw as a support — no more
(GPU time spent on images it never picks) and no fewer (episodes that silently fall back to the
real support, or raise). The rules below are read from each trainer's own loader:

| trainer | loader | min area | train filter | list format | splits drawn |
|---|---|---|---|---|---|
| bam (DifFSS-BAM too) | `util/dataset.py` `make_dataset` | 2·32·32 | `filter_intersection=True` | PFENet-style | train + val |
| hdmnet | `util/dataset.py`: pre-made `lists/*/fss_list/{train,val}/sub_class_file_list_{fold}.txt` (BAM's `make_dataset` output) | 2·32·32 | `filter_intersection=True` | HDMNet's own (`--splits-dir`) or PFENet-style | train + val |
| pfenet | `util/dataset.py` `make_dataset` | 2·32·32 | none | PFENet-style | train + val |
| hsnet | `data/{pascal,coco,fss}.py` | none | none | HSNet split files | trn + val (FSS: + test) |
| matcher | `matcher/data/*.py` (HSNet's) | none | none | HSNet split files | val (FSS: test): no training |
| diffews | training script: HSNet's COCO loader `trn`; `evaluation_util/data` (HSNet's) | none | none | HSNet split files | COCO: trn + val; PASCAL: val; FSS: test |

COCO folds are interleaved for all of them (HSNet's rule; PFENet/BAM/HDMNet's shipped COCO configs
set `use_split_coco: True`). One aux folder (`aux_data_dir`) serves training *and* validation in
DifFSS-BAM (`train.py` and `test.py` pass the same args to every `SemData`), so a preset builds
every split the trainer draws from into one manifest, and one run covers them all.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from difaug.inputs.datasets.common import DEFAULT_MIN_AREA, BuildError, BuildResult

TRAIN_SPLITS = ("train", "trn")


@dataclass(frozen=True)
class TrainerPreset:
    name: str
    min_area: int
    filter_intersection: bool  # applied to training splits only, as BAM does
    list_format: str
    fold_rule: str
    splits: tuple[str, ...]  # PASCAL-5i / COCO-20i splits whose supports the trainer samples
    fss_splits: tuple[str, ...]  # FSS-1000 (HSNet family only)
    source: str  # where the rules were read
    own_lists: str | None = None  # what `--splits-dir` holds: "hsnet" split files, "hdmnet" fss_list
    train_on: tuple[str, ...] | None = None  # datasets it trains on (None: each it is built for)

    def splits_for(self, dataset: str) -> tuple[str, ...]:
        """The splits of `dataset` ("pascal", "coco", "fss1000") the trainer draws supports from."""
        if dataset == "fss1000":
            return self.fss_splits
        if self.train_on is not None and dataset not in self.train_on:
            return tuple(s for s in self.splits if s not in TRAIN_SPLITS)
        return self.splits


_BAM = dict(min_area=DEFAULT_MIN_AREA, filter_intersection=True, list_format="pfenet", fold_rule="interleaved",
            splits=("train", "val"), fss_splits=())  # fmt: skip
_HSNET = dict(
    min_area=0, filter_intersection=False, list_format="hsnet", fold_rule="interleaved", own_lists="hsnet"
)

TRAINERS: dict[str, TrainerPreset] = {
    "bam": TrainerPreset(
        "bam", **_BAM, source="chunbolang/BAM util/dataset.py (and TrinitialChan/DifFSS-BAM)"
    ),
    "hdmnet": TrainerPreset(
        "hdmnet", **_BAM, source="Pbihao/HDMNet util/dataset.py (lists/*/fss_list)", own_lists="hdmnet"
    ),
    "pfenet": TrainerPreset(
        "pfenet", **{**_BAM, "filter_intersection": False}, source="dvlab-research/PFENet util/dataset.py"
    ),
    "hsnet": TrainerPreset(
        "hsnet",
        **_HSNET,
        splits=("trn", "val"),
        fss_splits=("trn", "val", "test"),
        source="juhongm999/hsnet data/pascal.py, coco.py, fss.py",
    ),
    "matcher": TrainerPreset(
        "matcher",
        **_HSNET,
        splits=("val",),
        fss_splits=("test",),
        source="aim-uofa/Matcher matcher/data/*.py",
    ),
    # DiffewS trains through HSNet's COCO loader (`train_tools/train_icl_multitask_nocrop_nearest_nshot_v3.py`:
    # `args.benchmark = 'coco'`, `build_dataloader(..., 'trn', args.nshot)`) and evaluates on every
    # benchmark's val/test split with the same loaders (`evaluation_util/data`).
    "diffews": TrainerPreset(
        "diffews",
        **_HSNET,
        splits=("trn", "val"),
        fss_splits=("test",),
        source="aim-uofa/DiffewS train_tools/train_icl_multitask_nocrop_nearest_nshot_v3.py, evaluation_util/data",
        train_on=("coco",),
    ),
}


def trainer_preset(name: str) -> TrainerPreset:
    try:
        return TRAINERS[name.lower()]
    except KeyError:
        raise BuildError(f"unknown trainer {name!r}; use one of {', '.join(TRAINERS)}") from None


def hsnet_split_files(
    splits_dir: str | Path, dataset: str, fold: int | None, splits: Sequence[str]
) -> dict[str, list[Path]]:
    """The split files an HSNet-style loader reads for `fold`, from its `data/splits/<dataset>` folder.

    PASCAL (`data/pascal.py`): trn = `trn/fold{j}.txt` of the *other* three folds, val =
    `val/fold{fold}.txt`. COCO (`data/coco.py`): `{trn,val}/fold{fold}.pkl`. FSS-1000
    (`data/fss.py`): `{trn,val,test}.txt` (no folds)."""
    base = Path(splits_dir)
    out: dict[str, list[Path]] = {}
    for split in splits:
        if dataset == "fss1000":
            files = [base / f"{split}.txt"]
        elif fold is None:
            raise BuildError("--splits-dir needs --fold (HSNet's split files are per fold)")
        elif dataset == "pascal":
            folds = [j for j in range(4) if j != fold] if split == "trn" else [fold]
            files = [base / split / f"fold{j}.txt" for j in folds]
        else:
            files = [base / split / f"fold{fold}.pkl"]
        missing = [str(f) for f in files if not f.is_file()]
        if missing:
            sub = {"pascal": "pascal", "coco": "coco"}.get(dataset, "fss")
            raise BuildError(
                f"HSNet split file(s) not found: {', '.join(missing)}; pass --splits-dir HSNET/data/splits/{sub}"
            )
        out[split] = files
    return out


def hdmnet_list_files(
    splits_dir: str | Path, dataset: str, fold: int | None, splits: Sequence[str]
) -> dict[str, list[Path]]:
    """The support lists HDMNet's `SemData.__init__` reads for `fold`, from `lists/<dataset>/fss_list`:
    `{train,val}/sub_class_file_list_{fold}.txt` (its `data_list_{fold}.txt` beside them lists the
    queries, which are drawn from the same pairs)."""
    if dataset == "fss1000":
        raise BuildError("HDMNet has no FSS-1000 lists; use --trainer hsnet, matcher or diffews")
    if fold is None:
        raise BuildError("--splits-dir needs --fold (HDMNet's lists are per fold)")
    base = Path(splits_dir)
    out: dict[str, list[Path]] = {}
    for split in splits:
        f = base / ("train" if split in TRAIN_SPLITS else "val") / f"sub_class_file_list_{fold}.txt"
        if not f.is_file():
            sub = "coco" if dataset == "coco" else "pascal"
            raise BuildError(f"HDMNet list not found: {f}; pass --splits-dir HDMNet/lists/{sub}/fss_list")
        out[split] = [f]
    return out


def parse_list_options(values: Sequence[str], default_split: str | None) -> dict[str | None, list[Path]]:
    """`--list [SPLIT=]PATH` values → {split: [paths]} (None: the `--split` given, or none)."""
    out: dict[str | None, list[Path]] = {}
    for value in values:
        split, sep, path = value.partition("=")
        if not sep or "/" in split or "\\" in split:
            split, path = default_split, value  # a plain path (which may itself hold '=')
        out.setdefault(split, []).append(Path(path))
    return out


def merge_results(dataset: str, results: Sequence[BuildResult]) -> BuildResult:
    """Several splits' results as one manifest: rows in split order, a pair seen twice kept once."""
    rows: list[dict] = []
    skipped = []
    notes: list[str] = []
    for r in results:
        rows += r.rows
        skipped += r.skipped
        notes += [n for n in r.notes if n not in notes]
    return BuildResult.collected(dataset, rows, skipped, sum(r.images_read for r in results), notes)


def build_splits(
    build: Callable[..., BuildResult],
    dataset: str,
    root: str | Path,
    lists: Mapping[str, Sequence[Path] | None],
    *,
    filter_intersection: bool,
    **kwargs,
) -> BuildResult:
    """Run a builder once per split (its own list files and class selection) and merge the rows.

    `filter_intersection` applies to the training splits only, as in BAM's `SemData`."""
    if not lists:
        raise BuildError("no split to build")
    results = []
    for split, files in lists.items():
        per_split = dict(kwargs, split=split, list_file=list(files) if files else None)
        if dataset == "fss1000":
            if files and len(files) > 1:
                raise BuildError(f"FSS-1000 takes one class list per split; got {len(files)} for {split}")
            per_split["list_file"] = files[0] if files else None
        else:
            per_split["filter_intersection"] = filter_intersection and split in TRAIN_SPLITS
        results.append(build(root, **per_split))
    result = merge_results(results[0].dataset, results)
    result.notes.append(f"splits: {', '.join(str(s) for s in lists)}")
    return result


def plan_splits(
    dataset: str,
    preset: TrainerPreset | None,
    *,
    fold: int | None,
    split: str | None,
    lists: Mapping[str | None, Sequence[Path]],
    splits_dir: str | Path | None = None,
) -> dict[str | None, list[Path] | None]:
    """Which splits to build and from which list files: `--split` if given, else the preset's
    splits (or the `SPLIT=` prefixes of `--list`); `--splits-dir` finds HSNet's files for them."""
    plan: dict[str | None, list[Path] | None] = {k: list(v) for k, v in lists.items()}
    if split is not None:
        wanted: tuple[str | None, ...] = (split,)
    elif preset is not None:
        wanted = preset.splits_for(dataset)
    else:
        wanted = tuple(plan) or (None,)
    if preset is not None and dataset != "fss1000" and fold is None:
        raise BuildError(f"--trainer {preset.name} needs --fold (the fold decides the classes of each split)")
    if preset is not None and dataset == "fss1000" and not preset.fss_splits:
        raise BuildError(f"{preset.name} does not train on FSS-1000; use --trainer hsnet, matcher or diffews")
    for a, b in (("train", "trn"), ("trn", "train")):  # HSNet says trn, PFENet/BAM train
        if a in plan and a not in wanted and b in wanted:
            plan[b] = plan.pop(a)
    if splits_dir is not None:
        own = preset.own_lists if preset is not None else "hsnet"
        if own is None:
            raise BuildError(f"--trainer {preset.name} reads data lists: pass --list train=… --list val=…")
        find = hdmnet_list_files if own == "hdmnet" else hsnet_split_files
        files = find(splits_dir, dataset, fold, [s for s in wanted if s is not None])
        for s, paths in files.items():
            plan.setdefault(s, paths)
    if None in plan and split is None and len(wanted) > 1:
        raise BuildError(
            f"which split is each --list for? write --list SPLIT=PATH (splits: {', '.join(map(str, wanted))})"
        )
    extra = [s for s in plan if s not in wanted and not (s is None and wanted == (split,))]
    if extra:
        raise BuildError(f"--list for split(s) {extra} that are not built here (building {list(wanted)})")
    return {s: plan.get(s, plan.get(None) if s == split else None) for s in wanted}
