"""`difaug.adapters.export.layouts`: the registry, each layout's names, the runs a layout refuses."""

from __future__ import annotations

from pathlib import Path

import pytest
from _runs import PASCAL_SPECS, SampleSpec, make_run
from typer.testing import CliRunner

from difaug.adapters.export import layouts
from difaug.adapters.export.exporter import export_run
from difaug.adapters.export.layouts import LAYOUTS, Layout, Support, bam_relative_name, get_layout
from difaug.adapters.export.result import ExportError
from difaug.cli import app
from difaug.cli.export import LAYOUT_HELP


def test_the_registry_holds_the_three_layouts_in_order() -> None:
    assert list(LAYOUTS) == ["diffss-bam", "fss", "folder"]
    assert [LAYOUTS[n].default_format for n in LAYOUTS] == ["jpg", "jpg", "png"]
    assert get_layout("fss") is LAYOUTS["fss"]
    with pytest.raises(ExportError, match="unknown layout 'hsnet'; use one of: diffss-bam, fss, folder"):
        get_layout("hsnet")


def test_bam_name_is_what_the_loader_builds() -> None:
    # DifFSS-BAM: aux_data_dir + [parent + "/"] + path.split("/")[-1][:-4] + f"_{cls}_{k}.jpg"
    assert bam_relative_name("/d/JPEGImages/2007_000032.jpg", "pascal", 1, 0) == ["2007_000032_1_0.jpg"]
    assert bam_relative_name("/c/val2014/COCO_val2014_1.jpg", "coco", 80, 3) == [
        "val2014",
        "COCO_val2014_1_80_3.jpg",
    ]


def test_fss_and_folder_names() -> None:
    support = Support("s/1", "data/fss/bird/7.jpg", "fss1000", 255, "bird/x")
    assert LAYOUTS["fss"].relative_name(support, 2, "jpg") == ["bird", "7_1_2.jpg"]
    assert LAYOUTS["fss"].relative_name(support, "control", "jpg") == ["bird", "7_1_control.jpg"]
    folder, name = LAYOUTS["folder"].relative_name(support, 0, "png")
    assert "/" not in folder and "/" not in name and name.endswith("_0.png")
    assert not LAYOUTS["folder"].exact_names and LAYOUTS["diffss-bam"].exact_names


def test_bam_refuses_other_datasets_and_class_ids(tmp_path: Path) -> None:
    run = make_run(tmp_path / "a", [SampleSpec("x", 255, "bird", dataset="fss1000")], num_aux=1)
    with pytest.raises(ExportError, match="--layout folder"):
        export_run(run.run_dir, tmp_path / "o1", "diffss-bam")
    res = CliRunner().invoke(app, ["export", str(run.run_dir), "--out", str(tmp_path / "o1")])
    assert res.exit_code == 2 and "--layout folder" in res.output
    assert not (tmp_path / "o1").exists()  # refused before anything was written

    run = make_run(tmp_path / "b", [SampleSpec("y", 255, "bird")], num_aux=1)  # pascal, binary mask
    with pytest.raises(ExportError, match=r"class id \(1\.\.20\)"):
        export_run(run.run_dir, tmp_path / "o2", "diffss-bam")


def test_a_registered_layout_is_exported_through_without_touching_the_exporter(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(layouts, "LAYOUTS", dict(LAYOUTS))

    @layouts.register
    class Flat(Layout):
        name = "flat"
        default_format = "png"
        help = "{sample_id}-{k}.png"

        def relative_name(self, support: Support, k: int | str, fmt: str) -> list[str]:
            return [f"{support.sample_id}-{k}.{fmt}"]

    assert layouts.get_layout("flat").name == "flat"
    run = make_run(tmp_path, PASCAL_SPECS[:2], num_aux=2)
    result = export_run(run.run_dir, tmp_path / "out", "flat")
    assert result.layout == "flat" and result.complete == 2
    assert sorted(result.paths) == sorted(f"{s.sample_id}-{k}.png" for s in run.samples for k in (0, 1))


def test_the_cli_help_lists_every_registered_layout() -> None:
    for name, layout in LAYOUTS.items():
        assert f"{name}: {layout.help}" in LAYOUT_HELP
