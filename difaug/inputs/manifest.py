"""The manifest: one row per (support image, foreground class). Read, normalise, validate.

CSV, JSONL and Parquet all normalise to the same list of `Sample` records; relative paths resolve
against the manifest's own folder, so a manifest and its images can move together.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING

import numpy as np

from difaug.core import imageio
from difaug.core.classes import IGNORE_VALUE
from difaug.core.config import DEFAULT_MAX_ASPECT, DEFAULT_MAX_PIXELS, DEFAULT_MAX_SIDE
from difaug.core.errors import DifaugError
from difaug.core.parallel import ProgressFn, parallel_map

if TYPE_CHECKING:
    from difaug.core.config import Job

REQUIRED_COLUMNS = ("image", "mask", "class_id", "class_name")
OPTIONAL_COLUMNS = ("sample_id", "dataset", "split", "fold", "prompt")


class ManifestError(DifaugError, ValueError):
    """The manifest as a whole cannot be read (missing file, missing column, unknown format)."""


# slots: a 100k-row manifest is 100k of these on the driver.
@dataclass(frozen=True, slots=True)
class Sample:
    """One manifest row, normalised. `row` is the 1-based data row number in the manifest file."""

    row: int
    sample_id: str
    image: str
    mask: str
    class_id: int
    class_name: str
    dataset: str = ""
    split: str = ""
    fold: int | None = None
    prompt: str = ""

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class RowProblem:
    """A problem with one manifest row: `row` is 1-based (0 = the manifest as a whole)."""

    row: int
    column: str
    file: str
    reason: str
    sample_id: str = ""


@dataclass
class Manifest:
    path: str
    samples: list[Sample]
    problems: list[RowProblem]  # rows that could not even be normalised (bad class_id, no image…)
    # Hash of the rows with `image`/`mask` as written in the file (relative paths unresolved), set
    # by `read_manifest`: moving a manifest together with its data keeps it (a plan still resumes).
    text_fingerprint: str = ""

    @property
    def fingerprint(self) -> str:
        return self.text_fingerprint or fingerprint_samples(self.samples)

    def __len__(self) -> int:
        return len(self.samples)


def repeated_ids(samples: Iterable[Sample]) -> list[tuple[Sample, str]]:
    """Rows whose sample_id an earlier row already has, each with its reason: the first row keeps
    the id (it can still be generated or previewed), the later ones cannot."""
    first: dict[str, int] = {}
    out = []
    for s in samples:
        if s.sample_id in first:
            out.append((s, f"duplicate sample_id {s.sample_id!r} (first at row {first[s.sample_id]})"))
        else:
            first[s.sample_id] = s.row
    return out


def fingerprint_samples(samples: Iterable[Sample]) -> str:
    """A content hash of the normalised rows: the same rows give the same plan whatever the format."""
    h = hashlib.sha256()
    for s in samples:
        h.update(json.dumps(s.to_dict(), sort_keys=True, ensure_ascii=False).encode())
        h.update(b"\n")
    return h.hexdigest()


def _manifest_dir(path: str) -> str:
    if imageio.is_url(path):
        return path.rsplit("/", 1)[0]
    return str(Path(path).resolve().parent)


def resolve_path(value: str, base: str) -> str:
    """Absolute paths and URLs stay as they are; relative paths — plain or `file://` — resolve
    against `base` (the manifest's folder), so `file://images/a.jpg` means the same as `images/a.jpg`."""
    value = value.strip()
    if value.startswith("file://"):
        local = value.removeprefix("file://")
        if not local or Path(local).is_absolute():
            return value
        value = local
    if not value or imageio.is_url(value) or Path(value).is_absolute():
        return value
    if imageio.is_url(base):
        return f"{base.rstrip('/')}/{PurePosixPath(value)}"
    return str(Path(base) / value)


# A record key no manifest column can have: the reader's note that a record is malformed (extra CSV
# fields, a repeated JSON key). `read_manifest` turns it into a problem of that row.
MALFORMED = object()


def _no_repeated_keys(lineno: int) -> Callable[[list[tuple[str, object]]], dict]:
    def hook(pairs: list[tuple[str, object]]) -> dict:
        record: dict = {}
        for key, value in pairs:
            if key in record:
                record[MALFORMED] = f"line {lineno}: key {key!r} appears twice; keep one"
            record[key] = value
        return record

    return hook


def _read_records(path: str) -> Iterator[dict]:
    lower = path.lower()
    if lower.endswith(".parquet"):
        import pyarrow as pa
        import pyarrow.parquet as pq

        try:
            table = (
                pq.read_table(path)
                if not imageio.is_url(path)
                else pq.read_table(io.BytesIO(imageio.read_bytes(path)))
            )
        except (pa.ArrowException, OSError, imageio.ImageReadError) as e:
            raise ManifestError(f"{path}: not a readable Parquet file: {e}") from e
        repeated = sorted({n for n in table.column_names if table.column_names.count(n) > 1})
        if repeated:
            raise ManifestError(
                f"{path}: column(s) {', '.join(repeated)} appear more than once; keep one of each"
            )
        for batch in table.to_batches(max_chunksize=4096):
            yield from batch.to_pylist()
        return
    try:
        text = imageio.read_bytes(path).decode("utf-8-sig")
    except imageio.ImageReadError as e:
        raise ManifestError(f"manifest not found or unreadable: {path}") from e
    except UnicodeDecodeError as e:
        raise ManifestError(
            f"{path}: not UTF-8 text (byte {e.start}: {e.object[e.start : e.start + 1]!r}); save the manifest as UTF-8"
        ) from e
    if lower.endswith((".jsonl", ".ndjson", ".json")):
        for lineno, line in enumerate(io.StringIO(text), 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line, object_pairs_hook=_no_repeated_keys(lineno))
            except json.JSONDecodeError as e:
                raise ManifestError(f"{path}: line {lineno} is not valid JSON: {e}") from e
            if not isinstance(record, dict):
                raise ManifestError(f"{path}: line {lineno} is not a JSON object")
            yield record
        return
    if lower.endswith((".csv", ".tsv")):
        delimiter = "\t" if lower.endswith(".tsv") else ","
        reader = csv.DictReader(io.StringIO(text, newline=""), delimiter=delimiter, restkey=MALFORMED)
        header = reader.fieldnames or []
        repeated = sorted({c for c in header if header.count(c) > 1})
        if repeated:
            raise ManifestError(
                f"{path}: line 1 (the header) names column(s) {', '.join(map(repr, repeated))} more than once; "
                "keep one of each"
            )
        for record in reader:
            extra = record.get(MALFORMED)
            if extra is not None:
                record[MALFORMED] = (
                    f"line {reader.line_num}: {len(extra)} more field(s) than the header's {len(header)} "
                    f"columns ({', '.join(repr(v) for v in extra[:3])}); quote values that hold "
                    f"{'tabs' if delimiter == chr(9) else 'commas'}"
                )
            yield record
        return
    raise ManifestError(f"{path}: unknown manifest format; use .csv, .tsv, .jsonl or .parquet")


def _blank(value: object) -> bool:
    return value is None or (isinstance(value, str) and not value.strip()) or value != value  # NaN


def _as_int(value: object) -> int:
    if isinstance(value, bool):
        raise ValueError(value)
    if isinstance(value, int):
        return value
    f = float(str(value).strip())
    if not f.is_integer():
        raise ValueError(value)
    return int(f)


INT64_RANGE = (-(2**63), 2**63 - 1)  # what a shard's integer columns hold


def _int_problem(row: int, column: str, value: int | None) -> RowProblem | None:
    """A value that no int64 shard column can store: refused here, naming the row, not at write time."""
    lo, hi = INT64_RANGE
    if value is None or lo <= value <= hi:
        return None
    return RowProblem(row, column, "", f"{column} {value} does not fit a 64-bit integer ({lo}..{hi})")


def default_sample_id(image: str, class_id: int) -> str:
    return f"{PurePosixPath(image.replace(chr(92), '/')).stem}_{class_id}"


def _check_url_support(path: str) -> None:
    problem = imageio.url_support_problem(path)
    if problem:
        raise ManifestError(f"{path}: {problem}")


def read_manifest(path: str | Path) -> Manifest:
    """Read and normalise a manifest. Rows that cannot be normalised are returned as problems."""
    path = str(path).removeprefix("file://")
    if imageio.is_url(path):
        _check_url_support(path)
    elif Path(path).is_dir():
        raise ManifestError(
            f"{path} is a folder, not a manifest file; give the .csv, .tsv, .jsonl or .parquet file "
            "that lists its images (`difaug manifest build` writes one from a dataset folder)"
        )
    elif not Path(path).is_file():
        raise ManifestError(f"manifest not found: {path}")
    base = _manifest_dir(path)
    samples: list[Sample] = []
    problems: list[RowProblem] = []
    text_hash = hashlib.sha256()
    # Records stream one at a time: the driver of a 100k-row job keeps only the `Sample`s.
    for row, rec in enumerate(_read_records(path), 1):
        if row == 1:
            missing = [c for c in REQUIRED_COLUMNS if c not in rec]
            if missing:
                raise ManifestError(
                    f"{path}: missing column(s) {', '.join(missing)}; a manifest needs "
                    f"{', '.join(REQUIRED_COLUMNS)} (optional: {', '.join(OPTIONAL_COLUMNS)})"
                )
        if MALFORMED in rec:
            problems.append(RowProblem(row, "", "", str(rec[MALFORMED])))
            continue
        bad = [c for c in REQUIRED_COLUMNS if _blank(rec.get(c))]
        if bad:
            for c in bad:
                problems.append(RowProblem(row, c, "", f"empty {c}"))
            continue
        try:
            class_id = _as_int(rec["class_id"])
        except (TypeError, ValueError):
            problems.append(
                RowProblem(row, "class_id", "", f"class_id {rec['class_id']!r} is not an integer")
            )
            continue
        fold = None
        if not _blank(rec.get("fold")):
            try:
                fold = _as_int(rec["fold"])
            except (TypeError, ValueError):
                problems.append(RowProblem(row, "fold", "", f"fold {rec['fold']!r} is not an integer"))
                continue
        too_big = [_int_problem(row, c, v) for c, v in (("class_id", class_id), ("fold", fold))]
        too_big = [p for p in too_big if p is not None]
        if too_big:
            problems.extend(too_big)
            continue
        image = str(rec["image"]).strip()
        sample_id = "" if _blank(rec.get("sample_id")) else str(rec["sample_id"]).strip()
        sample = Sample(
            row=row,
            sample_id=sample_id or default_sample_id(image, class_id),
            image=image,
            mask=str(rec["mask"]).strip(),
            class_id=class_id,
            class_name=str(rec["class_name"]).strip(),
            dataset="" if _blank(rec.get("dataset")) else str(rec["dataset"]).strip(),
            split="" if _blank(rec.get("split")) else str(rec["split"]).strip(),
            fold=fold,
            prompt="" if _blank(rec.get("prompt")) else str(rec["prompt"]),
        )
        text_hash.update(json.dumps(sample.to_dict(), sort_keys=True, ensure_ascii=False).encode() + b"\n")
        samples.append(replace(sample, image=resolve_path(image, base), mask=resolve_path(sample.mask, base)))
    return Manifest(path=path, samples=samples, problems=problems, text_fingerprint=text_hash.hexdigest())


MANIFEST_COLUMNS = (
    "sample_id",
    "image",
    "mask",
    "class_id",
    "class_name",
    "dataset",
    "split",
    "fold",
    "prompt",
)


def write_manifest(rows: Sequence[dict], out: str | Path) -> None:
    """Write manifest rows (dicts with the DESIGN columns) as CSV/TSV, JSONL or Parquet by extension.

    Column order is `MANIFEST_COLUMNS`; a missing or `None` value is an empty cell in CSV, `null` for
    `fold` in JSONL and Parquet (where `class_id` and `fold` are int64, the rest strings)."""
    out = Path(out)
    suffix = out.suffix.lower()
    if suffix not in (".parquet", ".jsonl", ".ndjson", ".csv", ".tsv"):
        raise ManifestError(f"{out}: unknown manifest format; use .csv, .tsv, .jsonl or .parquet")
    clean = [{c: ("" if r.get(c) is None else r.get(c)) for c in MANIFEST_COLUMNS} for r in rows]
    for r in clean:
        r["fold"] = None if r["fold"] == "" else int(r["fold"])
    out.parent.mkdir(parents=True, exist_ok=True)
    if suffix == ".parquet":
        import pyarrow as pa
        import pyarrow.parquet as pq

        schema = pa.schema(
            [(c, pa.int64() if c in ("class_id", "fold") else pa.string()) for c in MANIFEST_COLUMNS]
        )
        for r in clean:
            r["class_id"] = int(r["class_id"])
            for c in MANIFEST_COLUMNS:
                if c not in ("class_id", "fold"):
                    r[c] = str(r[c])
        pq.write_table(pa.Table.from_pylist(clean, schema=schema), out)
    elif suffix in (".jsonl", ".ndjson"):
        out.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in clean), encoding="utf-8")
    else:
        with out.open("w", newline="", encoding="utf-8") as fh:
            writer = csv.DictWriter(
                fh, fieldnames=MANIFEST_COLUMNS, delimiter="\t" if suffix == ".tsv" else ","
            )
            writer.writeheader()
            writer.writerows({**r, "fold": "" if r["fold"] is None else r["fold"]} for r in clean)


# ---------------------------------------------------------------------------------------------------
# Validation


@dataclass(frozen=True)
class SizeLimits:
    """The input sizes a job accepts (`RuntimeConfig.max_side`/`max_aspect`/`max_pixels`); the
    defaults are far above any real FSS dataset and far below what runs a machine out of memory."""

    resolution: int = 512  # the job's working short side: the long side follows from it
    max_side: int = DEFAULT_MAX_SIDE
    max_aspect: float = DEFAULT_MAX_ASPECT
    max_pixels: int = DEFAULT_MAX_PIXELS

    @classmethod
    def for_job(cls, job: Job) -> SizeLimits:
        rt = job.runtime
        return cls(job.config.resolution, rt.max_side, rt.max_aspect, rt.max_pixels)

    def problem(self, width: int, height: int) -> str:
        """Why a `width`×`height` image cannot be generated with these limits, or ''."""
        from difaug.core.geometry import working_size

        if width <= 0 or height <= 0:
            return f"image is {width}×{height}: empty"
        aspect = max(width, height) / min(width, height)
        if aspect > self.max_aspect:
            w, h = working_size(width, height, self.resolution)
            return (
                f"image is {width}×{height}, aspect ratio {aspect:.1f}:1 above the limit "
                f"{self.max_aspect:g}:1 (its working size would be {w}×{h}); crop or pad it, or raise "
                f"the limit with --max-aspect"
            )
        if width * height > self.max_pixels:
            return (
                f"image is {width}×{height} = {width * height} pixels, above the limit {self.max_pixels}; "
                "downscale it, or raise the limit with --max-pixels"
            )
        w, h = working_size(width, height, self.resolution)
        if max(w, h) > self.max_side:
            return (
                f"image is {width}×{height}: its working size at resolution {self.resolution} is "
                f"{w}×{h}, longer than the limit {self.max_side} px; lower --resolution, crop it, or "
                "raise the limit with --max-side"
            )
        return ""


@dataclass(frozen=True)
class _FileCheck:
    """One file's check: what a row needs to know about it, or why it is unusable."""

    error: str = ""
    width: int = 0
    height: int = 0
    missing: dict[int, str] | None = None  # masks only: class id → "values present" text, if absent


def _check_file(kind: str, path: str, deep: bool, class_ids: frozenset[int] = frozenset()) -> _FileCheck:
    try:
        if kind == "image":
            width, height, _ = imageio.check_image_file(path, deep=deep)
            return _FileCheck(width=width, height=height)
        # Masks are always decoded: only their pixels can show that the row's class is there.
        mask = imageio.load_mask(path)
    except imageio.ImageReadError as e:
        return _FileCheck(error=imageio.error_reason(e, path))
    except OSError as e:  # fsspec / network errors
        return _FileCheck(error=f"cannot read: {e}")
    except Exception as e:  # one odd file must not hide the report on all the others
        return _FileCheck(error=f"unexpected {type(e).__name__}: {e}")
    # One comparison per class the rows need is ~30x cheaper than a full histogram, which is only
    # worth computing for the message when a class is absent.
    absent = [c for c in sorted(class_ids) if not np.count_nonzero(mask == c)]
    values = _values_text(imageio.value_counts(mask)) if absent else ""
    return _FileCheck(width=mask.shape[1], height=mask.shape[0], missing=dict.fromkeys(absent, values))


def image_size(path: str) -> tuple[int, int] | str:
    """An image file's (width, height) from its header, or why it cannot be used: the check
    `validate_manifest` makes of every image (header and end marker)."""
    check = _check_file("image", path, deep=False)
    return check.error or (check.width, check.height)


def _values_text(counts: dict[int, int], limit: int = 8) -> str:
    values = list(counts)
    text = ", ".join(str(v) for v in values[:limit])
    return text + (f", … ({len(values)} values)" if len(values) > limit else "")


_COLUMN_ORDER = {c: i for i, c in enumerate(("", *MANIFEST_COLUMNS))}


def validate_manifest(
    manifest: Manifest,
    *,
    deep: bool = False,
    progress: ProgressFn | None = None,
    workers: int | None = None,
    limits: SizeLimits | None = None,
) -> list[RowProblem]:
    """Every problem of every row, before any GPU time is spent, sorted by row.

    Checked: the rows `read_manifest` could not normalise; unique sample_id (each duplicate row names
    the others); class_id neither 0 (background) nor 255 (ignore); image and mask exist and decode;
    same width × height; the image's size within `limits` (aspect ratio, pixels, long side at the
    working size; default `SizeLimits()`); the mask holds at least one pixel == class_id. Images are checked at
    header cost plus an end-marker test that finds truncated files (`deep=True`: full decode);
    masks are always decoded. Each distinct file is read once, on a thread pool."""
    limits = limits or SizeLimits()
    problems = list(manifest.problems)
    samples = manifest.samples
    refuse_unreadable_urls(manifest)
    if not samples and not problems:
        problems.append(RowProblem(0, "", manifest.path, "manifest has no rows"))
    problems += _row_value_problems(samples)
    checks = _check_files(samples, deep, workers, progress)
    for s in samples:
        problems += _file_problems(s, checks[("image", s.image)], checks[("mask", s.mask)], limits)
    problems.sort(key=lambda p: (p.row, _COLUMN_ORDER.get(p.column, 99)))
    return problems


def refuse_unreadable_urls(manifest: Manifest) -> None:
    """Image or mask URLs whose fsspec backend is not installed: one `ManifestError` line for the
    whole manifest (with the install line), since every row using that protocol fails the same way.
    Checked once per protocol, without reading any file; `generate` calls it before the plan."""
    rows_by_protocol: dict[str, list[int]] = {}
    for s in manifest.samples:
        for path in (s.image, s.mask):
            if imageio.is_url(path):
                rows_by_protocol.setdefault(path.split("://", 1)[0].lower(), []).append(s.row)
    for protocol, rows in rows_by_protocol.items():
        problem = imageio.url_support_problem(f"{protocol}://")
        if problem:
            rows = sorted(set(rows))
            shown = ", ".join(map(str, rows[:5])) + (f", … ({len(rows)} rows)" if len(rows) > 5 else "")
            raise ManifestError(f"{manifest.path}: row{'s' * (len(rows) > 1)} {shown}: {problem}")


def _row_value_problems(samples: list[Sample]) -> list[RowProblem]:
    """What the rows' own values get wrong: duplicate sample_ids, class ids that are no class."""
    problems = []
    rows_by_id: dict[str, list[int]] = {}
    for s in samples:
        rows_by_id.setdefault(s.sample_id, []).append(s.row)
    for s in samples:
        others = [r for r in rows_by_id[s.sample_id] if r != s.row]
        if others:
            also = ", ".join(str(r) for r in others)
            problems.append(
                RowProblem(s.row, "sample_id", "", f"duplicate sample_id (also row {also})", s.sample_id)
            )
        if s.class_id == IGNORE_VALUE:
            why = "class_id 255 is the ignore value, not a class"
            problems.append(RowProblem(s.row, "class_id", "", why, s.sample_id))
        elif s.class_id <= 0:
            why = "is background, not a class" if s.class_id == 0 else "must be a positive pixel value"
            problems.append(RowProblem(s.row, "class_id", "", f"class_id {s.class_id} {why}", s.sample_id))
    return problems


def _check_files(
    samples: list[Sample], deep: bool, workers: int | None, progress: ProgressFn | None
) -> dict[tuple[str, str], _FileCheck]:
    """Every distinct image and mask checked once, on the thread pool; keyed by (kind, path)."""
    wanted: dict[str, set[int]] = {}
    for s in samples:
        if s.class_id not in (0, IGNORE_VALUE):
            wanted.setdefault(s.mask, set()).add(s.class_id)
    tasks = list(dict.fromkeys([("image", s.image) for s in samples] + [("mask", s.mask) for s in samples]))
    results = parallel_map(
        lambda t: _check_file(t[0], t[1], deep, frozenset(wanted.get(t[1], ()) if t[0] == "mask" else ())),
        tasks,
        workers=workers,
        progress=progress,
        label="validating",
    )
    return dict(zip(tasks, results, strict=True))


def _file_problems(s: Sample, image: _FileCheck, mask: _FileCheck, limits: SizeLimits) -> list[RowProblem]:
    """What one row's image and mask files get wrong: unreadable, too big, sizes apart, class absent."""
    problems = []
    if image.error:
        problems.append(RowProblem(s.row, "image", s.image, image.error, s.sample_id))
    elif too_big := limits.problem(image.width, image.height):
        problems.append(RowProblem(s.row, "image", s.image, too_big, s.sample_id))
    if mask.error:
        problems.append(RowProblem(s.row, "mask", s.mask, mask.error, s.sample_id))
        return problems
    if not image.error and (image.width, image.height) != (mask.width, mask.height):
        why = f"mask is {mask.width}×{mask.height} but image is {image.width}×{image.height}"
        problems.append(RowProblem(s.row, "mask", s.mask, why, s.sample_id))
    if mask.missing and s.class_id in mask.missing:
        why = f"mask has no pixel == {s.class_id} (values: {mask.missing[s.class_id]})"
        problems.append(RowProblem(s.row, "class_id", s.mask, why, s.sample_id))
    return problems
