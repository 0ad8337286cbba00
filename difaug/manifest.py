"""The manifest: one row per (support image, foreground class). Read, normalise, validate.

CSV, JSONL and Parquet all normalise to the same list of `Sample` records; relative paths resolve
against the manifest's own folder, so a manifest and its images can move together.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass, fields
from pathlib import Path, PurePosixPath

from difaug import imageio

REQUIRED_COLUMNS = ("image", "mask", "class_id", "class_name")
OPTIONAL_COLUMNS = ("sample_id", "dataset", "split", "fold", "prompt")
IGNORE_VALUE = 255


class ManifestError(ValueError):
    """The manifest as a whole cannot be read (missing file, missing column, unknown format)."""


@dataclass(frozen=True)
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

    @classmethod
    def from_dict(cls, d: dict) -> Sample:
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})


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

    @property
    def fingerprint(self) -> str:
        return fingerprint_samples(self.samples)

    def __len__(self) -> int:
        return len(self.samples)


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
    """Absolute paths and URLs stay as they are; relative paths resolve against `base`."""
    value = value.strip()
    if not value or imageio.is_url(value) or value.startswith("file://") or Path(value).is_absolute():
        return value
    if imageio.is_url(base):
        return f"{base.rstrip('/')}/{PurePosixPath(value)}"
    return str(Path(base) / value)


def _read_records(path: str) -> Iterator[dict]:
    lower = path.lower()
    if lower.endswith(".parquet"):
        import pyarrow.parquet as pq

        table = (
            pq.read_table(path)
            if not imageio.is_url(path)
            else pq.read_table(io.BytesIO(imageio.read_bytes(path)))
        )
        yield from table.to_pylist()
        return
    try:
        text = imageio.read_bytes(path).decode("utf-8-sig")
    except imageio.ImageReadError as e:
        raise ManifestError(f"manifest not found or unreadable: {path}") from e
    if lower.endswith((".jsonl", ".ndjson", ".json")):
        for lineno, line in enumerate(text.splitlines(), 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as e:
                raise ManifestError(f"{path}: line {lineno} is not valid JSON: {e}") from e
            if not isinstance(record, dict):
                raise ManifestError(f"{path}: line {lineno} is not a JSON object")
            yield record
        return
    if lower.endswith((".csv", ".tsv")):
        delimiter = "\t" if lower.endswith(".tsv") else ","
        yield from csv.DictReader(io.StringIO(text, newline=""), delimiter=delimiter)
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


def default_sample_id(image: str, class_id: int) -> str:
    return f"{PurePosixPath(image.replace(chr(92), '/')).stem}_{class_id}"


def read_manifest(path: str | Path) -> Manifest:
    """Read and normalise a manifest. Rows that cannot be normalised are returned as problems."""
    path = str(path)
    if not imageio.is_url(path) and not Path(path).is_file():
        raise ManifestError(f"manifest not found: {path}")
    base = _manifest_dir(path)
    samples: list[Sample] = []
    problems: list[RowProblem] = []
    records = list(_read_records(path))
    if records:
        missing = [c for c in REQUIRED_COLUMNS if c not in records[0]]
        if missing:
            raise ManifestError(
                f"{path}: missing column(s) {', '.join(missing)}; a manifest needs "
                f"{', '.join(REQUIRED_COLUMNS)} (optional: {', '.join(OPTIONAL_COLUMNS)})"
            )
    for row, rec in enumerate(records, 1):
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
        image = str(rec["image"]).strip()
        sample_id = "" if _blank(rec.get("sample_id")) else str(rec["sample_id"]).strip()
        samples.append(
            Sample(
                row=row,
                sample_id=sample_id or default_sample_id(image, class_id),
                image=resolve_path(image, base),
                mask=resolve_path(str(rec["mask"]), base),
                class_id=class_id,
                class_name=str(rec["class_name"]).strip(),
                dataset="" if _blank(rec.get("dataset")) else str(rec["dataset"]).strip(),
                split="" if _blank(rec.get("split")) else str(rec["split"]).strip(),
                fold=fold,
                prompt="" if _blank(rec.get("prompt")) else str(rec["prompt"]),
            )
        )
    return Manifest(path=path, samples=samples, problems=problems)


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
    """Write manifest rows (dicts with the DESIGN columns) as CSV, JSONL or Parquet by extension."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    clean = [{c: ("" if r.get(c) is None else r.get(c)) for c in MANIFEST_COLUMNS} for r in rows]
    suffix = out.suffix.lower()
    if suffix == ".parquet":
        import pyarrow as pa
        import pyarrow.parquet as pq

        for r in clean:
            r["fold"] = None if r["fold"] == "" else int(r["fold"])
        pq.write_table(pa.Table.from_pylist(clean), out)
    elif suffix in (".jsonl", ".ndjson"):
        out.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in clean), encoding="utf-8")
    elif suffix in (".csv", ".tsv"):
        with out.open("w", newline="", encoding="utf-8") as fh:
            writer = csv.DictWriter(
                fh, fieldnames=MANIFEST_COLUMNS, delimiter="\t" if suffix == ".tsv" else ","
            )
            writer.writeheader()
            writer.writerows(clean)
    else:
        raise ManifestError(f"{out}: unknown manifest format; use .csv, .tsv, .jsonl or .parquet")
