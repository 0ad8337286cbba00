"""`difaug manifest`: build manifests from dataset trees, and validate them before any GPU work."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer
from rich.markup import escape

from difaug.cli._common import add_options, console, fail, options_of, progress_bar
from difaug.core.config import DEFAULT_MAX_ASPECT, DEFAULT_MAX_PIXELS, DEFAULT_MAX_SIDE
from difaug.core.parallel import WORKERS_HELP
from difaug.core.text import display_text

if TYPE_CHECKING:
    from difaug.inputs.datasets import BuildResult

app = typer.Typer(
    help="Build manifests from dataset layouts (PASCAL-5i, COCO-20i, FSS-1000, a plain folder) and "
    "validate them.\n\nExample: difaug manifest validate manifests/demo/manifest.csv",
    no_args_is_help=True,
    rich_markup_mode="rich",
)
build_app = typer.Typer(
    help="Write a manifest (one row per image and foreground class) from a dataset tree; prints what "
    "was read, written and skipped, and why.\n\nExample: difaug manifest build pascal5i --root "
    "data/VOCdevkit/VOC2012 --list lists/pascal/val.txt --fold 0 --split val --out pascal-f0.csv",
    no_args_is_help=True,
    rich_markup_mode="rich",
)
app.add_typer(build_app, name="build")

MANIFEST_SUFFIXES = (".csv", ".tsv", ".jsonl", ".ndjson", ".parquet")

ROOT_HELP = "Dataset root (list paths are relative to it)."
OUT_HELP = "Manifest to write: .csv, .tsv, .jsonl or .parquet."
LIST_HELP = (
    "Data list, [SPLIT=]PATH, repeatable: PFENet/BAM lines 'JPEGImages/x.jpg SegmentationClassAug/x.png' "
    "(relative to --root) or HSNet split files (PASCAL 'stem__NN' .txt, COCO .pkl). SPLIT= tells which "
    "split a list is for when several are built (e.g. --list train=lists/pascal/train.txt --list val=lists/pascal/val.txt)."
)
LIST_FORMAT_HELP = (
    "auto (detected), pfenet (PFENet/BAM/HDMNet lists), hsnet (HSNet/Matcher/DiffewS split files) or hdmnet "
    "(HDMNet's sub_class_file_list_*.txt)."
)
TRAINER_HELP = (
    "Build what this trainer samples supports from: bam, hdmnet (DifFSS-BAM too), pfenet, hsnet, matcher, "
    "diffews. Sets --min-area, --filter-intersection, the list format, the COCO fold rule and the splits "
    "(all the trainer draws supports from, into one manifest). See docs/adapters.md."
)
SPLITS_DIR_HELP = (
    "HSNet's split folder (hsnet/data/splits/pascal, …/coco or …/fss; Matcher: VOC2012/splits, COCO2014/splits, "
    "FSS-1000/splits): picks the files each split reads for --fold. With --trainer hdmnet: HDMNet's "
    "lists/pascal/fss_list (or …/coco/fss_list), whose {train,val}/sub_class_file_list_FOLD.txt it reads."
)
FILTER_HELP = (
    "Drop training images that show any test class of the fold (BAM/HDMNet's filter_intersection; train split "
    "only). Default: the --trainer's rule, else off."
)
FOLD_HELP = "Fold 0-3; needs --split (val: the fold's test classes, train: the others). None: all classes."
SPLIT_HELP = "train or val (with --fold: which classes); recorded in the split column."
MIN_AREA_HELP = (
    "Skip (image, class) pairs with fewer foreground pixels (PFENet/BAM/HDMNet's 2·32·32); 0 keeps all "
    "(HSNet, Matcher, DiffewS have no such rule). Default: the --trainer's, else 2048."
)
DEEP_HELP = "Decode every image fully (default: header + end-marker check, which finds truncated files)."
ABSOLUTE_HELP = (
    "Write absolute paths (default: relative when the manifest sits inside --root or beside the files)."
)
SKIPPED_HELP = "Also write every skip (file, reason, detail, class_id) to this CSV."


# The options several builders share, declared once (typer reads a parameter's default as its
# declaration, so one object serves every command).
OUT_OPTION = typer.Option(..., "--out", "-o", help=OUT_HELP)
DEEP_OPTION = typer.Option(False, "--deep", help=DEEP_HELP)
ABSOLUTE_OPTION = typer.Option(False, "--absolute", help=ABSOLUTE_HELP)
SKIPPED_OPTION = typer.Option(None, "--skipped", help=SKIPPED_HELP)
WORKERS_OPTION = typer.Option(None, "--workers", min=1, help=WORKERS_HELP)


def _class_id_options(
    out: Path = OUT_OPTION,
    lists: list[str] = typer.Option([], "--list", help=LIST_HELP + " Default: every mask found."),
    list_format: str | None = typer.Option(None, "--list-format", help=LIST_FORMAT_HELP),
    trainer: str | None = typer.Option(None, "--trainer", help=TRAINER_HELP),
    splits_dir: Path | None = typer.Option(None, "--splits-dir", help=SPLITS_DIR_HELP),
    min_area: int | None = typer.Option(None, "--min-area", min=0, help=MIN_AREA_HELP),
    filter_intersection: bool | None = typer.Option(
        None, "--filter-intersection/--no-filter-intersection", help=FILTER_HELP
    ),
    deep: bool = DEEP_OPTION,
    absolute: bool = ABSOLUTE_OPTION,
    skipped_out: Path | None = SKIPPED_OPTION,
    workers: int | None = WORKERS_OPTION,
) -> None:
    """The options of the builders of trees whose mask pixels are class ids (pascal5i, coco20i),
    which hand them on to `_run_splits` as they are; each command adds its own (`add_options`)."""


CLASS_ID_OPTIONS = options_of(_class_id_options)


# --------------------------------------------------------------------------------------------------
# validate


@app.command("validate")
def validate(
    file: str = typer.Argument(..., help="Manifest (.csv/.tsv/.jsonl/.parquet), a path or fsspec URL."),
    deep: bool = typer.Option(
        False,
        "--deep",
        help="Decode every image fully (default: header + end-marker check; masks are always decoded).",
    ),
    workers: int | None = WORKERS_OPTION,
    resolution: int = typer.Option(512, "--resolution", help="The job's working short side (size limits)."),
    max_side: int = typer.Option(
        DEFAULT_MAX_SIDE, "--max-side", help="Longest side at the working size, px."
    ),
    max_aspect: float = typer.Option(
        DEFAULT_MAX_ASPECT, "--max-aspect", help="Largest long:short side ratio."
    ),
    max_pixels: int = typer.Option(DEFAULT_MAX_PIXELS, "--max-pixels", help="Most pixels of one image."),
) -> None:
    """Check every row of a manifest; exit code 1 if any row has a problem, 2 if the manifest
    cannot be read or has no rows.

    Checks that files exist and decode, image and mask sizes match, the mask holds the row's class_id,
    and sample_ids are unique. Prints a table of problems (row, column, file, reason) and a summary.

    Example:

        difaug manifest validate manifests/demo/manifest.csv
    """
    from rich.table import Table

    from difaug.core.config import JobConfig, RuntimeConfig
    from difaug.inputs.manifest import SizeLimits, read_manifest, validate_manifest

    manifest = read_manifest(file)
    if not manifest.samples and not manifest.problems:
        fail(
            f"{file}: the manifest has no rows (only a header, or nothing); add one row per support image and class"
        )
    JobConfig(resolution=resolution).validate()  # ConfigError → one line, exit 2 (cli.errors)
    RuntimeConfig(max_side=max_side, max_aspect=max_aspect, max_pixels=max_pixels).validate()
    limits = SizeLimits(resolution, max_side, max_aspect, max_pixels)
    with progress_bar() as progress:
        problems = validate_manifest(manifest, deep=deep, progress=progress, workers=workers, limits=limits)
    n_rows = len(manifest.samples) + len({p.row for p in manifest.problems})
    if not problems:
        console.print(f"[green]ok[/] {escape(str(file))}: {n_rows} row(s), no problems", highlight=False)
        return
    table = Table(title=f"problems in {escape(str(file))}", title_justify="left")
    table.add_column("row", justify="right", style="bold")
    table.add_column("column")
    table.add_column("file", overflow="fold")
    table.add_column("reason", overflow="fold")
    for p in problems:
        table.add_row(
            str(p.row),
            escape(p.column),
            escape(display_text(p.file, 300)),
            escape(display_text(p.reason, 500)),
        )
    console.print(table)
    bad_rows = len({p.row for p in problems})
    console.print(
        f"[bold red]{len(problems)} problem(s) in {bad_rows} of {n_rows} row(s)[/] "
        "(row = 1-based data row, header not counted)",
        highlight=False,
    )
    raise typer.Exit(1)


# --------------------------------------------------------------------------------------------------
# build


def _check_out(out: Path) -> None:
    if out.suffix.lower() not in MANIFEST_SUFFIXES:
        fail(f"{out}: unknown manifest format; use one of {', '.join(MANIFEST_SUFFIXES)}")


def _finish(
    result: BuildResult, out: Path, root: Path, absolute: bool, skipped_out: Path | None, name: str
) -> None:
    """Write the manifest (and the skip report) and print the summary; nothing goes unreported."""
    from collections import Counter

    from rich.table import Table

    if skipped_out is not None:
        _write_skips(result, skipped_out)
    counts = result.skip_counts
    if not result.rows:
        _print_skips(result, counts)
        fail(f"{name}: no rows to write from {root} (see the skip reasons above); {out} not written", code=1)
    result.write(out, absolute=absolute, root=root)
    classes = result.class_counts
    console.print(
        f"[bold]{name}[/]: {result.images_read} image(s) read → [bold green]{len(result.rows)} row(s)[/] "
        f"written to {escape(str(out))} ({len(classes)} class(es))",
        highlight=False,
    )
    per_class = Table(show_header=True, box=None, pad_edge=False)
    per_class.add_column("class")
    per_class.add_column("rows", justify="right")
    ids = Counter((r["class_id"], r["class_name"]) for r in result.rows)
    for (cid, cname), n in sorted(ids.items()):
        per_class.add_row(escape(f"{cid} {cname}"), str(n))
    console.print(per_class)
    _print_skips(result, counts)
    for note in result.notes:
        console.print(f"[yellow]note:[/] {escape(note)}", highlight=False)
    if skipped_out is not None:
        console.print(f"skip report: {escape(str(skipped_out))}", highlight=False)


def _print_skips(result: BuildResult, counts: dict[str, int]) -> None:
    from rich.table import Table

    if not counts:
        console.print("skipped: nothing", highlight=False)
        return
    table = Table(title="skipped", title_justify="left", box=None, pad_edge=False)
    table.add_column("reason")
    table.add_column("count", justify="right")
    table.add_column("example", overflow="fold")
    for reason, n in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])):
        first = next(s for s in result.skipped if s.reason == reason)
        example = f"{first.file}" + (f" ({first.detail})" if first.detail else "")
        table.add_row(escape(reason), str(n), escape(example))
    console.print(table)


def _write_skips(result: BuildResult, path: Path) -> None:
    import csv

    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow(["file", "reason", "detail", "class_id"])
        for s in result.skipped:
            writer.writerow([s.file, s.reason, s.detail, "" if s.class_id is None else s.class_id])


def _run(build, out: Path, root: Path, absolute: bool, skipped_out: Path | None, name: str, **kwargs) -> None:
    _check_out(out)
    with progress_bar() as progress:
        result = build(root, progress=progress, **kwargs)
    _finish(result, out, root, absolute, skipped_out, name)


def _run_splits(
    build,
    dataset: str,
    name: str,
    *,
    root: Path,
    out: Path,
    absolute: bool,
    skipped_out: Path | None,
    trainer: str | None,
    fold: int | None,
    split: str | None,
    lists: list[str],
    splits_dir: Path | None,
    min_area: int | None,
    filter_intersection: bool | None,
    list_format: str | None,
    **kwargs,
) -> None:
    """One build per split the trainer (or --list SPLIT=…) asks for, merged into one manifest."""
    from difaug.inputs.datasets import DEFAULT_MIN_AREA, build_splits, trainer_preset
    from difaug.inputs.datasets.trainers import parse_list_options, plan_splits

    _check_out(out)
    preset = trainer_preset(trainer) if trainer else None
    plan = plan_splits(
        dataset, preset, fold=fold, split=split, lists=parse_list_options(lists, split), splits_dir=splits_dir
    )
    if dataset != "fss1000":
        kwargs["fold"] = fold
        kwargs["list_format"] = list_format or "auto"  # detected: a preset's lists may be either kind
    default_area = 0 if dataset == "fss1000" else DEFAULT_MIN_AREA
    kwargs["min_area"] = min_area if min_area is not None else (preset.min_area if preset else default_area)
    flt = (
        filter_intersection
        if filter_intersection is not None
        else bool(preset and preset.filter_intersection)
    )
    with progress_bar() as progress:
        if len(plan) == 1 and None in plan:  # no split named: one build of the lists given
            files = plan[None] or []
            if dataset != "fss1000":
                kwargs["filter_intersection"] = flt
            list_file = (files[0] if len(files) == 1 else files) or None
            result = build(root, progress=progress, split=split, list_file=list_file, **kwargs)
        else:
            result = build_splits(
                build, dataset, root, plan, filter_intersection=flt, progress=progress, **kwargs
            )
    if preset is not None:
        result.notes.append(f"--trainer {preset.name}: rules read from {preset.source}")
    _finish(result, out, root, absolute, skipped_out, name)


@build_app.command("pascal5i")
@add_options(CLASS_ID_OPTIONS)
def build_pascal5i(
    root: Path = typer.Option(
        ..., "--root", help=ROOT_HELP + " Holds JPEGImages/ and SegmentationClassAug/."
    ),
    fold: int | None = typer.Option(
        None, "--fold", min=0, max=3, help=FOLD_HELP + " Fold i = classes 5i+1..5i+5."
    ),
    split: str | None = typer.Option(None, "--split", help=SPLIT_HELP),
    image_dir: str = typer.Option("JPEGImages", "--image-dir", help="Image folder under --root."),
    mask_dir: str | None = typer.Option(
        None,
        "--mask-dir",
        help="Mask folder under --root (default: SegmentationClassAug, else SegmentationClass).",
    ),
    **options: Any,
) -> None:
    """PASCAL-5i (VOC2012 + SBD masks): one row per (image, class present), class ids 1..20.

    Examples (fold 0 test classes airplane…bottle from PFENet's val list; everything BAM samples
    for fold 0; everything HSNet samples for fold 0):

        difaug manifest build pascal5i --root data/VOCdevkit/VOC2012 --list lists/pascal/val.txt --fold 0 --split val --out manifests/pascal5i-f0-val.csv

        difaug manifest build pascal5i --root data/VOCdevkit/VOC2012 --trainer bam --fold 0 --list train=lists/pascal/train.txt --list val=lists/pascal/val.txt --out manifests/bam-pascal-f0.csv

        difaug manifest build pascal5i --root data/VOC2012 --trainer hsnet --fold 0 --splits-dir hsnet/data/splits/pascal --out manifests/hsnet-pascal-f0.csv
    """
    from difaug.inputs.datasets import build_pascal5i as build

    _run_splits(
        build, "pascal", "pascal5i",
        root=root, fold=fold, split=split, image_dir=image_dir, mask_dir=mask_dir, **options,
    )  # fmt: skip


@build_app.command("coco20i")
@add_options(CLASS_ID_OPTIONS)
def build_coco20i(
    root: Path = typer.Option(
        ..., "--root", help=ROOT_HELP + " Holds train2014/, val2014/ and annotations/{train2014,val2014}/."
    ),
    fold: int | None = typer.Option(None, "--fold", min=0, max=3, help=FOLD_HELP),
    fold_rule: str = typer.Option(
        "interleaved",
        "--fold-rule",
        help="interleaved: fold i = i+1, i+5, …, i+77 (HSNet; PFENet, BAM, HDMNet and DifFSS-BAM with "
        "use_split_coco: True, as all their shipped COCO configs set); contiguous: fold i = 20i+1..20i+20 "
        "(PANet; use_split_coco: False).",
    ),
    split: str | None = typer.Option(
        None, "--split", help=SPLIT_HELP + " Without --list also picks the image folder (train2014/val2014)."
    ),
    image_dir: str | None = typer.Option(
        None, "--image-dir", help="Image folder under --root (default by --split)."
    ),
    mask_dir: str | None = typer.Option(
        None, "--mask-dir", help="Mask folder under --root (default: annotations/<image folder>)."
    ),
    **options: Any,
) -> None:
    """COCO-20i (COCO 2014 with class-id annotation PNGs, ids 1..80): one row per (image, class).

    Examples (fold 0 test classes, interleaved, val2014 images; everything HSNet samples for fold 0):

        difaug manifest build coco20i --root data/COCO2014 --fold 0 --split val --fold-rule interleaved --out manifests/coco20i-f0-val.parquet

        difaug manifest build coco20i --root data/COCO2014 --trainer hsnet --fold 0 --splits-dir hsnet/data/splits/coco --out manifests/hsnet-coco-f0.parquet
    """
    from difaug.inputs.datasets import build_coco20i as build

    if fold_rule not in ("interleaved", "contiguous"):
        fail(f"unknown --fold-rule {fold_rule!r}; use interleaved or contiguous")
    _run_splits(
        build, "coco", "coco20i",
        root=root, fold=fold, fold_rule=fold_rule, split=split, image_dir=image_dir, mask_dir=mask_dir,
        **options,
    )  # fmt: skip


@build_app.command("fss1000")
def build_fss1000(
    root: Path = typer.Option(..., "--root", help="FSS-1000 root: <class>/<n>.jpg + <n>.png."),
    out: Path = OUT_OPTION,
    mask_out: Path | None = typer.Option(
        None, "--mask-out", help="Where the binarised masks go (default: <out folder>/<out stem>_masks/)."
    ),
    lists: list[str] = typer.Option(
        [],
        "--list",
        help="Class folders to take, one per line (HSNet's splits/fss/{trn,val,test}.txt); [SPLIT=]PATH, repeatable.",
    ),
    split: str | None = typer.Option(
        None,
        "--split",
        help="Recorded in the split column (e.g. trn, val, test; default: the HSNet file's name).",
    ),
    class_ids: str = typer.Option(
        "auto",
        "--class-ids",
        help="hsnet: HSNet's id (index in the sorted split file + 0/520/760 for trn/val/test) + 1; table: "
        "difaug's FSS-1000 table; auto: hsnet when --list is HSNet's trn/val/test.txt, else table.",
    ),
    trainer: str | None = typer.Option(
        None, "--trainer", help="hsnet, matcher or diffews: the FSS-1000 splits it samples."
    ),
    splits_dir: Path | None = typer.Option(
        None, "--splits-dir", help="HSNet's data/splits/fss (Matcher: FSS-1000/splits)."
    ),
    min_area: int | None = typer.Option(
        None, "--min-area", min=0, help="Skip masks with fewer foreground pixels (default 0)."
    ),
    threshold: int = typer.Option(
        128, "--threshold", min=1, max=255, help="Mask luminance >= this is foreground (HSNet's rule)."
    ),
    deep: bool = DEEP_OPTION,
    absolute: bool = ABSOLUTE_OPTION,
    skipped_out: Path | None = SKIPPED_OPTION,
    workers: int | None = WORKERS_OPTION,
) -> None:
    """FSS-1000: one row per image, with binarised mask copies.

    Masks (0/255, some anti-aliased) are binarised at --threshold and written as 0/class_id copies
    under --mask-out, so `mask == class_id` is the foreground downstream.

    Examples (HSNet's test classes, HSNet's ids; all three HSNet splits in one manifest):

        difaug manifest build fss1000 --root data/FSS-1000 --list hsnet/data/splits/fss/test.txt --out manifests/fss-test.csv

        difaug manifest build fss1000 --root data/FSS-1000 --trainer hsnet --splits-dir hsnet/data/splits/fss --out manifests/fss-hsnet.csv
    """
    from difaug.inputs.datasets import build_fss1000 as build

    if mask_out is None:
        mask_out = out.parent / f"{out.stem}_masks"
    _run_splits(
        build, "fss1000", "fss1000",
        root=root, out=out, absolute=absolute, skipped_out=skipped_out,
        trainer=trainer, fold=None, split=split, lists=lists, splits_dir=splits_dir, min_area=min_area,
        filter_intersection=None, list_format=None,
        mask_out=mask_out, class_ids=class_ids, threshold=threshold, deep=deep, workers=workers,
    )  # fmt: skip


@build_app.command("folder")
def build_folder(
    root: Path = typer.Option(
        ..., "--root", help="Folder holding images/ and masks/ (matched by file stem)."
    ),
    out: Path = OUT_OPTION,
    class_name: str | None = typer.Option(None, "--class-name", help="The one class every mask shows."),
    class_id: int | None = typer.Option(
        None, "--class-id", min=1, max=65535, help="Its foreground pixel value (default 1; never 255)."
    ),
    classes: Path | None = typer.Option(
        None,
        "--classes",
        help="Sidecar CSV with columns class_id,class_name and optional image: a value→name table, or per-image classes.",
    ),
    binarize: int | None = typer.Option(
        None,
        "--binarize",
        min=1,
        max=255,
        help="For 0/255 masks: luminance >= this is foreground; writes 0/class_id copies to --mask-out.",
    ),
    mask_out: Path | None = typer.Option(
        None, "--mask-out", help="Where --binarize writes masks (default: <out folder>/<out stem>_masks/)."
    ),
    image_dir: str = typer.Option("images", "--image-dir", help="Image folder under --root."),
    mask_dir: str = typer.Option("masks", "--mask-dir", help="Mask folder under --root."),
    dataset: str = typer.Option("folder", "--dataset", help="Value of the dataset column."),
    split: str | None = typer.Option(None, "--split", help="Value of the split column."),
    min_area: int = typer.Option(0, "--min-area", min=0, help="Skip classes with fewer foreground pixels."),
    deep: bool = DEEP_OPTION,
    absolute: bool = ABSOLUTE_OPTION,
    skipped_out: Path | None = SKIPPED_OPTION,
    workers: int | None = WORKERS_OPTION,
) -> None:
    """Your own images/ + masks/ folder, matched by stem.

    The class comes from --class-name/--class-id (every mask) or a --classes CSV sidecar.

    Examples:

        difaug manifest build folder --root data/birds --class-name bird --class-id 1 --out birds.csv

        difaug manifest build folder --root data/scans --class-name crack --binarize 128 --out cracks.csv
    """
    from difaug.inputs.datasets import build_folder as build

    if binarize is not None and mask_out is None:
        mask_out = out.parent / f"{out.stem}_masks"
    _run(
        build, out, root, absolute, skipped_out, "folder",
        image_dir=image_dir, mask_dir=mask_dir, class_name=class_name, class_id=class_id,
        classes=classes, binarize=binarize, mask_out=mask_out, min_area=min_area, split=split,
        dataset=dataset, deep=deep, workers=workers,
    )  # fmt: skip
