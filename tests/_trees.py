"""Synthetic dataset trees for the manifest tests, in the on-disk layouts FSS repos use.

Each `make_*` writes a small tree under a tmp dir and returns where things are. The trees carry the
awkward cases real data has: palette PNG masks with 255 borders, 8-bit 'L' and 16-bit PNG masks,
RGBA and greyscale images, a missing mask, a truncated JPEG, an empty foreground, a size mismatch,
an unknown class value, a duplicated list line, CRLF list files with a trailing blank line.
The expected rows are worked out by hand in the tests, from the rules, not from these helpers.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from difaug.core.classes import voc_palette

W, H = 128, 96  # a 50×50 class (2500 px) passes the 2048 rule, a 20×20 one (400 px) does not


def photo(width: int = W, height: int = H, seed: int = 0) -> np.ndarray:
    """A smooth-ish RGB test picture (gradients + noise), H×W×3 uint8."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width]
    base = np.stack([x * 255 / width, y * 255 / height, (x + y) * 127 / (width + height)], axis=-1)
    return np.clip(base + rng.normal(0, 12, base.shape), 0, 255).astype(np.uint8)


def save_image(path: Path, *, mode: str = "RGB", size: tuple[int, int] = (W, H), seed: int = 0) -> Path:
    """A JPEG (RGB / L) or PNG (any mode, e.g. RGBA) image, by the path's suffix."""
    path.parent.mkdir(parents=True, exist_ok=True)
    img = Image.fromarray(photo(*size, seed=seed)).convert(mode)
    if path.suffix.lower() in (".jpg", ".jpeg"):
        img.save(path, format="JPEG", quality=90)
    else:
        img.save(path, format="PNG")
    return path


def class_mask(
    rects: dict[int, tuple[int, int, int, int]], *, size: tuple[int, int] = (W, H), border: bool = True
) -> np.ndarray:
    """H×W uint16 mask: each `class_id: (x, y, w, h)` rectangle filled, a 1-px 255 ring around it
    (VOC's ignore border) drawn outside, so the class's area is exactly w·h."""
    width, height = size
    m = np.zeros((height, width), dtype=np.uint16)
    for cid, (x, y, w, h) in rects.items():
        if border:
            m[max(y - 1, 0) : y + h + 1, max(x - 1, 0) : x + w + 1] = 255
        m[y : y + h, x : x + w] = cid
    return m


def save_mask(path: Path, mask: np.ndarray, kind: str = "palette") -> Path:
    """Write a class-id mask as a palette PNG (VOC style), an 8-bit 'L' PNG or a 16-bit PNG."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if kind == "palette":
        img = Image.fromarray(mask.astype(np.uint8)).convert("L")
        img = Image.frombytes("P", img.size, img.tobytes())
        img.putpalette(voc_palette())
    elif kind == "L":
        img = Image.fromarray(mask.astype(np.uint8))
    elif kind == "16bit":
        img = Image.fromarray(mask.astype(np.uint16))
    else:
        raise ValueError(kind)
    img.save(path, format="PNG")
    return path


def truncate(path: Path, keep: float = 0.5) -> Path:
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])
    return path


def write_list(path: Path, lines: list[str], *, crlf: bool = True, trailing_blank: bool = True) -> Path:
    eol = "\r\n" if crlf else "\n"
    path.parent.mkdir(parents=True, exist_ok=True)
    text = eol.join(lines) + eol + (eol if trailing_blank else "")
    path.write_bytes(text.encode())
    return path


@dataclass
class Tree:
    root: Path
    list_file: Path | None = None
    files: dict[str, Path] = field(default_factory=dict)


def make_pascal_tree(base: Path) -> Tree:
    """VOC2012-style tree + a PFENet-style list (CRLF, trailing blank line, a leading slash, a
    duplicated line). Stems and contents:

    - 2007_000001  RGB jpg, palette mask: 1 airplane 50×50, 15 person 50×50 (listed twice)
    - 2007_000002  greyscale jpg, 'L' mask: 2 bicycle 20×20 (too small), 3 bird 60×50
    - 2007_000003  RGBA png, 16-bit mask: 5 bottle 42×50 (2100 px), 20 television 50×50
    - 2007_000004  RGB jpg, mask missing
    - 2007_000005  truncated jpg, palette mask: 1 airplane 50×50
    - 2007_000006  RGB jpg, palette mask with only 0 and a 255 ring (empty foreground)
    - 2007_000007  RGB jpg, palette mask: 4 boat 50×50, 30 (not a PASCAL class) 10×10
    - 2007_000008  RGB jpg 128×96, mask 80×80 (size mismatch): 1 airplane 50×50
    - 2007_000009  RGB jpg, palette mask: 12 dog 50×50 — on disk but NOT in the list
    """
    root = base / "VOC2012"
    img, seg = root / "JPEGImages", root / "SegmentationClassAug"
    t = Tree(root)
    a = 50
    save_image(img / "2007_000001.jpg", seed=1)
    save_mask(seg / "2007_000001.png", class_mask({1: (1, 1, a, a), 15: (60, 40, a, a)}), "palette")
    save_image(img / "2007_000002.jpg", mode="L", seed=2)
    save_mask(seg / "2007_000002.png", class_mask({2: (1, 1, 20, 20), 3: (30, 30, 60, 50)}), "L")
    save_image(img / "2007_000003.png", mode="RGBA", seed=3)
    save_mask(seg / "2007_000003.png", class_mask({5: (1, 1, 42, 50), 20: (60, 40, a, a)}), "16bit")
    save_image(img / "2007_000004.jpg", seed=4)
    t.files["truncated"] = truncate(save_image(img / "2007_000005.jpg", seed=5))
    save_mask(seg / "2007_000005.png", class_mask({1: (1, 1, a, a)}), "palette")
    save_image(img / "2007_000006.jpg", seed=6)
    empty = class_mask({1: (10, 10, 30, 30)})
    empty[empty == 1] = 0
    save_mask(seg / "2007_000006.png", empty, "palette")
    save_image(img / "2007_000007.jpg", seed=7)
    save_mask(seg / "2007_000007.png", class_mask({4: (1, 1, a, a), 30: (100, 70, 10, 10)}), "palette")
    save_image(img / "2007_000008.jpg", seed=8)
    save_mask(seg / "2007_000008.png", class_mask({1: (1, 1, a, a)}, size=(80, 80)), "palette")
    save_image(img / "2007_000009.jpg", seed=9)
    save_mask(seg / "2007_000009.png", class_mask({12: (1, 1, a, a)}), "palette")
    lines = [
        "JPEGImages/2007_000001.jpg SegmentationClassAug/2007_000001.png",
        "JPEGImages/2007_000002.jpg SegmentationClassAug/2007_000002.png",
        "/JPEGImages/2007_000003.png /SegmentationClassAug/2007_000003.png",
        "JPEGImages/2007_000004.jpg SegmentationClassAug/2007_000004.png",
        "JPEGImages/2007_000005.jpg SegmentationClassAug/2007_000005.png",
        "",
        "JPEGImages/2007_000006.jpg SegmentationClassAug/2007_000006.png",
        "JPEGImages/2007_000001.jpg SegmentationClassAug/2007_000001.png",
        "  JPEGImages/2007_000007.jpg   SegmentationClassAug/2007_000007.png  ",
        "JPEGImages/2007_000008.jpg SegmentationClassAug/2007_000008.png",
    ]
    t.list_file = write_list(base / "val.txt", lines)
    return t


def make_coco_tree(base: Path) -> Tree:
    """COCO-20i tree (HSNet's COCO2014 layout) whose classes tell the fold rules apart.

    train2014 (palette masks; every class 2500+ px unless noted):
    - COCO_train2014_000000000009: 1 person, 2 bicycle, 21 elephant
    - COCO_train2014_000000000025: 41 wine glass, 80 toothbrush (ids: the FSS repos' 1..80)
    val2014 (8-bit 'L' masks, 255 rings):
    - COCO_val2014_000000000042: 5 airplane, 20 cow, 61 dining table
    - COCO_val2014_000000000073: 4 motorcycle 20×20 (too small), 77 scissors
    Interleaved fold 0 = {1, 5, 9, …, 77}; contiguous fold 0 = 1..20.
    """
    root = base / "COCO2014"
    t = Tree(root)
    a = 50
    train = {
        "COCO_train2014_000000000009": {1: (1, 1, a, a), 2: (60, 1, a, a), 21: (1, 60, 100, 30)},
        "COCO_train2014_000000000025": {41: (1, 1, a, a), 80: (60, 40, a, a)},
    }
    val = {
        "COCO_val2014_000000000042": {5: (1, 1, a, a), 20: (60, 1, a, a), 61: (1, 60, 100, 30)},
        "COCO_val2014_000000000073": {4: (1, 1, 20, 20), 77: (60, 40, a, a)},
    }
    for sub, entries, kind in (("train2014", train, "palette"), ("val2014", val, "L")):
        for i, (stem, rects) in enumerate(entries.items()):
            save_image(root / sub / f"{stem}.jpg", seed=10 + i)
            save_mask(root / "annotations" / sub / f"{stem}.png", class_mask(rects), kind)
    lines = [f"train2014/{s}.jpg annotations/train2014/{s}.png" for s in train]
    t.list_file = write_list(base / "coco_train.txt", lines)
    return t


def make_fss_tree(base: Path) -> Tree:
    """FSS-1000 tree: `<class>/<n>.jpg` + `<n>.png` (0/255 masks; one anti-aliased, one RGB).

    - ac_wall (in the FSS-1000 table, id 20): 1 (clean 0/255 'L', 50×50 fg), 2 (anti-aliased: a
      50×50 block of 255 with a ring of 128 and a ring of 127 around it), 3 (RGB mask), 4 (all 0)
    - my_widget (not in the table): 1 (clean), 2.jpg with no mask, 3.png with no image
    """
    root = base / "FSS-1000"
    t = Tree(root)
    aw, mw = root / "ac_wall", root / "my_widget"

    def binary(fg_rect: tuple[int, int, int, int] | None) -> np.ndarray:
        m = np.zeros((H, W), dtype=np.uint8)
        if fg_rect:
            x, y, w, h = fg_rect
            m[y : y + h, x : x + w] = 255
        return m

    save_image(aw / "1.jpg", seed=21)
    Image.fromarray(binary((10, 10, 50, 50))).save(aw / "1.png")
    save_image(aw / "2.jpg", seed=22)
    aa = binary(None)
    aa[8:62, 8:62] = 127  # outer ring: below threshold → background
    aa[9:61, 9:61] = 128  # inner ring: at threshold → foreground (52×52 = 2704 px incl. the block)
    aa[10:60, 10:60] = 255
    Image.fromarray(aa).save(aw / "2.png")
    save_image(aw / "3.jpg", seed=23)
    Image.fromarray(binary((0, 0, 30, 40))).convert("RGB").save(aw / "3.png")
    save_image(aw / "4.jpg", seed=24)
    Image.fromarray(binary(None)).save(aw / "4.png")
    save_image(mw / "1.jpg", seed=25)
    Image.fromarray(binary((5, 5, 20, 20))).save(mw / "1.png")
    save_image(mw / "2.jpg", seed=26)
    Image.fromarray(binary((5, 5, 20, 20))).save(mw / "3.png")
    return t


def make_folder_tree(base: Path) -> Tree:
    """images/ + masks/ with 0/1 masks (class 1), a 0/255 mask, a missing mask, an orphan mask.

    - a.jpg / a.png: 0/1, 30×30 fg
    - b.png (RGBA image) / b.png: 0/1, 10×10 fg
    - c.jpg / c.png: 0/255, 40×40 fg (needs --binarize)
    - d.jpg, no mask
    - e.png mask, no image
    """
    root = base / "mydata"
    t = Tree(root)
    imgs, masks = root / "images", root / "masks"

    def m(rect: tuple[int, int, int, int], value: int) -> np.ndarray:
        arr = np.zeros((H, W), dtype=np.uint8)
        x, y, w, h = rect
        arr[y : y + h, x : x + w] = value
        return arr

    save_image(imgs / "a.jpg", seed=31)
    save_mask(masks / "a.png", m((0, 0, 30, 30), 1), "L")
    save_image(imgs / "b.png", mode="RGBA", seed=32)
    save_mask(masks / "b.png", m((0, 0, 10, 10), 1), "L")
    save_image(imgs / "c.jpg", seed=33)
    save_mask(masks / "c.png", m((0, 0, 40, 40), 255), "L")
    save_image(imgs / "d.jpg", seed=34)
    save_mask(masks / "e.png", m((0, 0, 10, 10), 1), "L")
    return t


# --------------------------------------------------------------------------------------------------
# Trees with the list files of the FSS trainers, in their exact upstream formats


@dataclass
class TrainerTree:
    """One dataset tree plus every list a trainer family reads for fold 0.

    `lists` (PFENet/BAM/HDMNet style, `JPEGImages/x.jpg SegmentationClassAug/x.png`): "train", "val".
    `hsnet_splits`: HSNet's `data/splits/<dataset>` folder (PASCAL `{trn,val}/fold{0..3}.txt` with
    `stem__NN` lines and a final newline; COCO `{trn,val}/fold0.pkl`; FSS `{trn,val,test}.txt`)."""

    root: Path
    lists: dict[str, Path] = field(default_factory=dict)
    hsnet_splits: Path | None = None


# PASCAL fold 0 tests classes 1..5, trains on 6..20. 50×50 = 2500 px passes BAM's 2048; 20×20 not.
PASCAL_TRAINER_IMAGES = {
    # train list
    "2008_000001": {1: (1, 1, 50, 50), 15: (60, 40, 50, 50)},  # a test class: BAM's training drops it
    "2008_000002": {7: (1, 1, 50, 50), 12: (60, 40, 50, 50)},
    "2008_000003": {7: (1, 1, 50, 50), 15: (60, 40, 50, 50)},
    "2008_000004": {12: (1, 1, 50, 50), 9: (60, 40, 50, 50)},
    "2008_000005": {9: (1, 1, 50, 50), 10: (70, 60, 20, 20)},  # 10: 400 px, too small for BAM/PFENet
    "2008_000007": {10: (1, 1, 50, 50), 15: (60, 40, 50, 50)},
    # val list (2008_000001 too)
    "2008_000011": {2: (1, 1, 50, 50), 3: (60, 40, 50, 50)},
    "2008_000012": {1: (1, 1, 50, 50), 2: (60, 40, 50, 50)},
    "2008_000013": {4: (1, 1, 20, 20), 5: (60, 40, 50, 50)},  # 4 too small for BAM/PFENet
    "2008_000014": {3: (1, 1, 50, 50), 5: (60, 40, 50, 50)},
    "2008_000015": {4: (10, 10, 60, 60)},
}
PASCAL_TRAIN_LIST = ["2008_000001", "2008_000002", "2008_000003", "2008_000004", "2008_000005", "2008_000007"]
PASCAL_VAL_LIST = ["2008_000001", "2008_000011", "2008_000012", "2008_000013", "2008_000014", "2008_000015"]


def make_pascal_trainer_tree(base: Path) -> TrainerTree:
    root = base / "VOC2012"
    t = TrainerTree(root)
    for i, (stem, rects) in enumerate(PASCAL_TRAINER_IMAGES.items()):
        save_image(root / "JPEGImages" / f"{stem}.jpg", seed=40 + i)
        save_mask(root / "SegmentationClassAug" / f"{stem}.png", class_mask(rects), "L")
    for split, stems in (("train", PASCAL_TRAIN_LIST), ("val", PASCAL_VAL_LIST)):
        lines = [f"JPEGImages/{s}.jpg SegmentationClassAug/{s}.png" for s in stems]
        t.lists[split] = write_list(base / "lists" / f"{split}.txt", lines, crlf=False, trailing_blank=False)
    # HSNet: one line per (image, class), split by the class's fold; trn from trn images, val from val.
    splits = base / "hsnet" / "data" / "splits" / "pascal"
    for split, stems in (("trn", PASCAL_TRAIN_LIST), ("val", PASCAL_VAL_LIST)):
        for fold in range(4):
            lines = [
                f"{s}__{c:02d}"
                for s in stems
                for c in sorted(PASCAL_TRAINER_IMAGES[s])
                if 5 * fold < c <= 5 * fold + 5
            ]
            path = splits / split / f"fold{fold}.txt"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text("".join(f"{ln}\n" for ln in lines))  # HSNet drops the last split('\n') item
    t.hsnet_splits = splits
    return t


# COCO interleaved fold 0 tests 1, 5, 9, …; trains on the others.
COCO_TRAINER_IMAGES = {
    "train2014/COCO_train2014_000000000101": {2: (1, 1, 50, 50), 3: (60, 40, 50, 50)},
    "train2014/COCO_train2014_000000000102": {1: (1, 1, 50, 50), 6: (60, 40, 50, 50)},  # test class 1
    "train2014/COCO_train2014_000000000103": {7: (10, 10, 60, 60), 2: (80, 70, 40, 20)},  # 2: 800 px
    "train2014/COCO_train2014_000000000104": {3: (1, 1, 50, 50), 6: (60, 40, 50, 50)},
    "train2014/COCO_train2014_000000000105": {7: (1, 1, 50, 50), 2: (60, 40, 50, 50)},
    "val2014/COCO_val2014_000000000201": {1: (1, 1, 50, 50)},
    "val2014/COCO_val2014_000000000202": {5: (1, 1, 50, 50), 6: (60, 40, 50, 50)},
    "val2014/COCO_val2014_000000000203": {9: (1, 1, 20, 20), 1: (60, 40, 50, 50)},  # 9 too small for BAM
    "val2014/COCO_val2014_000000000204": {5: (1, 1, 50, 50), 9: (60, 40, 50, 50)},
}


def make_coco_trainer_tree(base: Path) -> TrainerTree:
    import pickle

    root = base / "COCO2014"
    t = TrainerTree(root)
    for i, (name, rects) in enumerate(COCO_TRAINER_IMAGES.items()):
        save_image(root / f"{name}.jpg", seed=50 + i)
        save_mask(root / "annotations" / f"{name}.png", class_mask(rects), "L")
    for split, sub in (("train", "train2014"), ("val", "val2014")):
        lines = [f"{n}.jpg annotations/{n}.png" for n in COCO_TRAINER_IMAGES if n.startswith(sub)]
        t.lists[split] = write_list(
            base / "lists" / f"coco_{split}.txt", lines, crlf=False, trailing_blank=False
        )
    # HSNet's pickles: {0-based class: ['train2014/….jpg', …]} for the fold's classes of that split.
    splits = base / "hsnet" / "data" / "splits" / "coco"
    test_classes = set(range(1, 81, 4))
    for split, sub in (("trn", "train2014"), ("val", "val2014")):
        classwise: dict[int, list[str]] = {}
        for name, rects in COCO_TRAINER_IMAGES.items():
            for c in rects:
                if name.startswith(sub) and (c in test_classes) == (split == "val"):
                    classwise.setdefault(c - 1, []).append(f"{name}.jpg")
        path = splits / split / "fold0.pkl"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(pickle.dumps(classwise))
    t.hsnet_splits = splits
    return t


FSS_TRAINER_SPLITS = {
    "trn": ["ac_wall", "zebra"],
    "val": ["hotel_slipper"],
    "test": ["bus", "ant", "zucchini"],  # HSNet sorts: ant 760, bus 761, zucchini 762
}


def make_fss_trainer_tree(base: Path, per_class: int = 10) -> TrainerTree:
    """FSS-1000 (`<class>/<n>.jpg` + `<n>.png`, 0/255 masks) and HSNet's `splits/fss/*.txt`."""
    root = base / "FSS-1000"
    t = TrainerTree(root)
    for i, cls in enumerate(c for names in FSS_TRAINER_SPLITS.values() for c in names):
        for n in range(1, per_class + 1):
            save_image(root / cls / f"{n}.jpg", size=(64, 48), seed=60 + 10 * i + n)
            m = np.zeros((48, 64), dtype=np.uint8)
            m[8:40, 10 + n : 50] = 255
            Image.fromarray(m).save(root / cls / f"{n}.png")
    splits = base / "hsnet" / "data" / "splits" / "fss"
    splits.mkdir(parents=True, exist_ok=True)
    for split, names in FSS_TRAINER_SPLITS.items():
        (splits / f"{split}.txt").write_text("".join(f"{n}\n" for n in names))
    t.hsnet_splits = splits
    return t


@pytest.fixture(scope="module")
def pascal(tmp_path_factory: pytest.TempPathFactory) -> Tree:
    """The PASCAL tree of `make_pascal_tree`, built once per test module that imports this fixture."""
    return make_pascal_tree(tmp_path_factory.mktemp("pascal"))


@pytest.fixture(scope="module")
def coco(tmp_path_factory: pytest.TempPathFactory) -> Tree:
    """The COCO tree of `make_coco_tree`, built once per test module that imports this fixture."""
    return make_coco_tree(tmp_path_factory.mktemp("coco"))


def sample_ids(result) -> list[str]:
    """The sample_ids of a builder's rows, in order."""
    return [r["sample_id"] for r in result.rows]
