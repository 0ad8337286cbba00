"""`difaug segment`: DiffSeg zero-shot masks for a manifest or an image folder, with mIoU."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.markup import escape

from difaug.cli._common import console, fail

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp")


def segment(
    out: Path = typer.Option(..., "--out", "-o", help="Folder for the label maps (PNG, value = segment id)."),
    manifest: Path | None = typer.Option(None, "--manifest", "-m", help="A difaug manifest (masks → mIoU)."),
    images: Path | None = typer.Option(None, "--images", help="Or a folder of images (no masks, no mIoU)."),
    model: str = typer.Option(
        "", "--model", help="A `difaug models make-tiny` bundle or base model folder/hub id (default SD1.5)."
    ),
    device: str = typer.Option("auto", "--device"),
    dtype: str = typer.Option("auto", "--dtype"),
    batch_size: int = typer.Option(4, "--batch-size", min=1),
    sheet: Path | None = typer.Option(None, "--sheet", help="Contact sheet PNG: image | mask | segments."),
    limit: int = typer.Option(0, "--limit", min=0, help="Only the first N images (0 = all)."),
) -> None:
    """Zero-shot segmentation with DiffSeg on Stable Diffusion's self-attention (no training).
    Writes OUT/{sample_id}.png label maps; with a manifest, matches each image's segments to its
    mask's classes (Hungarian matching, the reference's protocol) and prints mIoU and pixel accuracy.

    Example:

        difaug segment --manifest manifests/demo/manifest.csv --out runs/demo-seg --sheet runs/demo-seg/sheet.png
    """
    from difaug.core.config import JobConfig, RuntimeConfig
    from difaug.core.names import safe_component
    from difaug.diffusion import diffseg, segment_eval

    if (manifest is None) == (images is None):
        fail("give exactly one of --manifest FILE or --images DIR")
    if manifest is not None:
        from difaug.inputs.manifest import read_manifest

        m = read_manifest(manifest)
        if m.problems:
            fail(f"{manifest}: {m.problems[0]}")
        seen: set[tuple[str, str]] = set()
        inputs = []
        for s in m.samples:  # one image/mask pair once, whatever the number of its class rows
            if (s.image, s.mask) not in seen:
                seen.add((s.image, s.mask))
                inputs.append(segment_eval.SegmentInput(safe_component(s.sample_id), s.image, s.mask))
    else:
        if not images.is_dir():
            fail(f"{images} is not a folder")
        files = sorted(p for p in images.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        inputs = [segment_eval.SegmentInput(safe_component(p.stem), str(p)) for p in files]
    if limit:
        inputs = inputs[:limit]
    if not inputs:
        fail("no images to segment")
    cfg = JobConfig(model=model).validate()
    runtime = RuntimeConfig(device=device, dtype=dtype).validate()
    try:
        seg = diffseg.load(cfg, runtime)
    except OSError as e:  # a model that cannot be loaded: the loader's words name it, not a path to write
        fail(str(e))
    result = segment_eval.segment_files(inputs, seg, out, batch_size=batch_size)
    console.print(f"{len(result.written)} label maps in {escape(str(out))}")
    if result.segments:
        console.print(f"segments per image: mean {sum(result.segments) / len(result.segments):.1f}")
    miou = result.counts.miou()
    if miou is not None:
        console.print(
            f"mIoU {100 * miou:.1f}  pixel accuracy {100 * (result.counts.pixel_accuracy() or 0):.1f}  "
            f"({result.counts.classes()} classes, Hungarian matching per image)"
        )
    if sheet:
        from difaug.report.sheets import write_segment_sheet

        write_segment_sheet(sheet, result.previews)
        console.print(f"contact sheet: {escape(str(sheet))}")
