"""Every FSS trainer's own loader logic, fed by a real export (or index) of a tiny run.

Each test restates, in a few lines, the part of a trainer's public loader that decides which
supports it samples and where it looks for their aux images (the source file is named above each
restatement), builds the manifest with that trainer's `--trainer` preset, makes a small real run
(tests/_runs.py) from the manifest's rows, exports it (or opens an `AuxIndex`), and then walks
*every* episode the loader can form: each must find all of its aux images, and the manifest must
hold exactly the (image, class) pairs the loader samples supports from — no more, no fewer.
"""

from __future__ import annotations

import os
import pickle
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from _runs import SampleSpec, make_run
from _trees import (
    FSS_TRAINER_SPLITS,
    TrainerTree,
    make_coco_trainer_tree,
    make_fss_trainer_tree,
    make_pascal_trainer_tree,
)
from PIL import Image
from typer.testing import CliRunner

from difaug.adapters import AuxIndex, AuxShotDataset, hsnet_keys
from difaug.adapters.export.exporter import export_run
from difaug.adapters.export.folder_report import REPORT_FILE
from difaug.adapters.torch_dataset import to_tensor
from difaug.cli import app
from difaug.core.imageio import resize
from difaug.inputs.datasets import (
    build_coco20i,
    build_fss1000,
    build_pascal5i,
    build_splits,
    hsnet_fss_class_ids,
    hsnet_split_files,
    trainer_preset,
)
from difaug.inputs.datasets.trainers import plan_splits
from difaug.inputs.manifest import read_manifest

NUM_AUX = 2
AUX_SHOT = 2  # DifFSS-BAM: shot - true_data_shot


# --------------------------------------------------------------------------------------------------
# Helpers: manifest rows → a real run


def run_from_rows(tmp: Path, rows: list[dict], num_aux: int = NUM_AUX):
    """A tiny real run whose shard rows are the manifest's rows (image paths, class ids, ids)."""
    specs = []
    for r in rows:
        w, h = Image.open(r["image"]).size
        specs.append(
            SampleSpec(
                Path(r["image"]).stem,
                int(r["class_id"]),
                r["class_name"],
                dataset=r["dataset"],
                size=(w, h),
                sample_id=r["sample_id"],
                image=str(Path(r["image"]).resolve()),
            )
        )
    return make_run(tmp, specs, num_aux=num_aux, shard_size=4)


def build_for(trainer: str, dataset: str, tree: TrainerTree, tmp: Path, fold: int = 0):
    """The manifest rows `manifest build <dataset> --trainer <trainer>` gives for this tree."""
    preset = trainer_preset(trainer)
    lists = {} if preset.list_format == "hsnet" else {s: [p] for s, p in tree.lists.items()}
    splits_dir = tree.hsnet_splits if preset.list_format == "hsnet" else None
    plan = plan_splits(dataset, preset, fold=None if dataset == "fss1000" else fold, split=None, lists=lists,
                       splits_dir=splits_dir)  # fmt: skip
    build = {"pascal": build_pascal5i, "coco": build_coco20i, "fss1000": build_fss1000}[dataset]
    kwargs: dict = {"min_area": preset.min_area}
    if dataset == "fss1000":
        kwargs["mask_out"] = tmp / "fss_masks"
    else:
        kwargs.update(fold=fold, list_format=preset.list_format)
    return build_splits(
        build, dataset, tree.root, plan, filter_intersection=preset.filter_intersection, **kwargs
    )


@pytest.fixture(scope="module")
def pascal_tree(tmp_path_factory: pytest.TempPathFactory) -> TrainerTree:
    return make_pascal_trainer_tree(tmp_path_factory.mktemp("voc"))


@pytest.fixture(scope="module")
def coco_tree(tmp_path_factory: pytest.TempPathFactory) -> TrainerTree:
    return make_coco_trainer_tree(tmp_path_factory.mktemp("coco"))


@pytest.fixture(scope="module")
def fss_tree(tmp_path_factory: pytest.TempPathFactory) -> TrainerTree:
    return make_fss_trainer_tree(tmp_path_factory.mktemp("fss"))


# --------------------------------------------------------------------------------------------------
# BAM / HDMNet / DifFSS-BAM / PFENet: `util/dataset.py`


def bam_class_lists(data_set: str, split: int, use_split_coco: bool = True) -> tuple[list[int], list[int]]:
    # Restated from chunbolang/BAM util/dataset.py SemData.__init__ (same in PFENet, HDMNet, DifFSS-BAM).
    if data_set == "pascal":
        sub_val_list = list(range(5 * split + 1, 5 * split + 6))
        return [c for c in range(1, 21) if c not in sub_val_list], sub_val_list
    if use_split_coco:
        sub_val_list = list(range(split + 1, 81, 4))
    else:
        sub_val_list = list(range(20 * split + 1, 20 * split + 21))
    return list(set(range(1, 81)) - set(sub_val_list)), sub_val_list


def bam_make_dataset(
    data_root: Path, data_list: Path, sub_list: list[int], filter_intersection: bool = False
):
    # Restated from chunbolang/BAM util/dataset.py make_dataset (Pbihao/HDMNet util/dataset.py is the
    # same; dvlab-research/PFENet util/dataset.py is the filter_intersection=False branch).
    image_label_list = []
    sub_class_file_list: dict[int, list[tuple[str, str]]] = {c: [] for c in sub_list}
    for line in Path(data_list).read_text().splitlines(keepends=True):  # open(data_list).readlines()
        line_split = line.strip().split(" ")
        image_name = os.path.join(data_root, line_split[0])
        label_name = os.path.join(data_root, line_split[1])
        item = (image_name, label_name)
        label = cv2.imread(label_name, cv2.IMREAD_GRAYSCALE)
        label_class = [c for c in np.unique(label).tolist() if c not in (0, 255)]
        new_label_class = []
        if not filter_intersection or set(label_class).issubset(set(sub_list)):
            for c in label_class:
                if c in sub_list and (label == c).sum() >= 2 * 32 * 32:
                    new_label_class.append(c)
        if new_label_class:
            image_label_list.append(item)
            for c in new_label_class:
                sub_class_file_list[c].append(item)
    return image_label_list, sub_class_file_list


def bam_episodes(tree: TrainerTree, data_set: str, filter_train: bool):
    """Every (mode, query, class_chosen, support) a BAM-style SemData can form, train and val."""
    sub_list, sub_val_list = bam_class_lists(data_set, 0)
    for mode, classes, flt in (("train", sub_list, filter_train), ("val", sub_val_list, False)):
        data_list, sub_class_file_list = bam_make_dataset(tree.root, tree.lists[mode], classes, flt)
        for image_path, label_path in data_list:
            label = cv2.imread(label_path, cv2.IMREAD_GRAYSCALE)
            # SemData.__getitem__: the query's classes of this mode; class_chosen is one of them.
            for class_chosen in [c for c in np.unique(label).tolist() if c in classes]:
                for support_image_path, support_label_path in sub_class_file_list[class_chosen]:
                    if (support_image_path, support_label_path) != (image_path, label_path):
                        yield mode, image_path, class_chosen, support_image_path
        yield from ()


def bam_support_pool(tree: TrainerTree, data_set: str, filter_train: bool) -> set[tuple[str, int]]:
    sub_list, sub_val_list = bam_class_lists(data_set, 0)
    pool = set()
    for mode, classes, flt in (("train", sub_list, filter_train), ("val", sub_val_list, False)):
        _, files = bam_make_dataset(tree.root, tree.lists[mode], classes, flt)
        pool |= {(str(Path(img).resolve()), c) for c, items in files.items() for img, _ in items}
    return pool


def diffss_bam_aux_files(aux_data_dir: str, data_set: str, support_image_path: str, class_chosen: int):
    # Restated from TrinitialChan/DifFSS-BAM util/dataset.py SemData.__getitem__ ("load aux-support data").
    if data_set == "coco":
        split_flag = str(support_image_path).split("/")[-2]
        mainshot_fn = split_flag + "/" + str(support_image_path).split("/")[-1][:-4]
    else:
        mainshot_fn = str(support_image_path).split("/")[-1][:-4]
    found, fallbacks = [], 0
    for k in range(AUX_SHOT):
        curr_fn = aux_data_dir + mainshot_fn + f"_{class_chosen}_{k}.jpg"
        if not os.path.exists(curr_fn):
            curr_fn = aux_data_dir + mainshot_fn + f"_{class_chosen}_{k}.png"
        if not os.path.exists(curr_fn):
            fallbacks += 1  # "fall back to main support"
            continue
        found.append(curr_fn)
    return found, fallbacks


def manifest_pairs(rows: list[dict]) -> set[tuple[str, int]]:
    return {(str(Path(r["image"]).resolve()), int(r["class_id"])) for r in rows}


@pytest.mark.parametrize("data_set", ["pascal", "coco"])
@pytest.mark.parametrize("trainer", ["bam", "hdmnet"])
def test_diffss_bam_export_serves_every_train_and_val_episode(
    tmp_path: Path, pascal_tree: TrainerTree, coco_tree: TrainerTree, data_set: str, trainer: str
) -> None:
    tree = pascal_tree if data_set == "pascal" else coco_tree
    result = build_for(trainer, data_set, tree, tmp_path)
    # Exactly the pairs BAM's make_dataset gives (train with filter_intersection, and val).
    assert manifest_pairs(result.rows) == bam_support_pool(tree, data_set, filter_train=True)
    run = run_from_rows(tmp_path, result.rows)
    aux_dir = tmp_path / "aux"
    export = export_run(run.run_dir, aux_dir, "diffss-bam")
    assert export.complete == len(result.rows) and not export.incomplete
    aux_data_dir = str(aux_dir) + "/"  # DifFSS-BAM concatenates strings: the config keeps the slash
    episodes = list(bam_episodes(tree, data_set, filter_train=True))
    modes = {mode for mode, *_ in episodes}
    assert modes == {"train", "val"} and len(episodes) >= 4
    for mode, query, cls, support in episodes:
        found, fallbacks = diffss_bam_aux_files(aux_data_dir, data_set, support, cls)
        assert fallbacks == 0, (mode, query, cls, support)
        assert len(found) == AUX_SHOT


def test_bam_train_preset_drops_images_with_a_novel_class(pascal_tree: TrainerTree, tmp_path: Path) -> None:
    bam = build_for("bam", "pascal", pascal_tree, tmp_path)
    pfenet = build_for("pfenet", "pascal", pascal_tree, tmp_path)
    # 2008_000001 shows class 1 (a fold-0 test class): BAM never samples its person (15) in training.
    assert "2008_000001_15" in {r["sample_id"] for r in pfenet.rows}
    assert "2008_000001_15" not in {r["sample_id"] for r in bam.rows}
    assert "2008_000001_1" in {r["sample_id"] for r in bam.rows}  # its val row stays
    assert "novel class in image" in bam.skip_counts
    assert manifest_pairs(pfenet.rows) == bam_support_pool(pascal_tree, "pascal", filter_train=False)


@pytest.mark.parametrize("trainer", ["pfenet", "hdmnet"])
def test_in_loader_aux_index_serves_every_episode(
    tmp_path: Path, pascal_tree: TrainerTree, trainer: str
) -> None:
    """PFENet/HDMNet with the docs' `AuxIndex` lines inside `SemData.__getitem__`."""
    result = build_for(trainer, "pascal", pascal_tree, tmp_path)
    run = run_from_rows(tmp_path, result.rows)
    aux = AuxIndex(run.run_dir)
    filter_train = trainer_preset(trainer).filter_intersection
    assert manifest_pairs(result.rows) == bam_support_pool(pascal_tree, "pascal", filter_train)
    for i, (_, _, class_chosen, support_image_path) in enumerate(
        bam_episodes(pascal_tree, "pascal", filter_train)
    ):
        # docs/adapters.md, PFENet/BAM/HDMNet snippet:
        #   self.aux.aux_images(support_image_path_list[0], class_chosen, k=self.aux_shot, choose=..., seed=index)
        shots = aux.aux_images(support_image_path, class_chosen, k=AUX_SHOT, choose="random", seed=i)
        support = cv2.imread(support_image_path, cv2.IMREAD_COLOR)
        assert len(shots) == AUX_SHOT and all(s.shape == support.shape for s in shots)


# --------------------------------------------------------------------------------------------------
# HSNet family (HSNet, Matcher, DiffewS): `data/{pascal,coco,fss}.py`


def hsnet_sample_supports(pool: list[str], query_name: str, shot: int) -> list[str]:
    # juhongm999/hsnet data/pascal.py sample_episode, data/coco.py load_frame: the same loop.
    support_names = []
    while True:  # keep sampling support set if query == support
        support_name = np.random.choice(pool, 1, replace=False)[0]
        if query_name != support_name:
            support_names.append(support_name)
        if len(support_names) == shot:
            break
    return support_names


class HSNetPASCAL(torch.utils.data.Dataset):
    """Restated from juhongm999/hsnet data/pascal.py DatasetPASCAL (aim-uofa/Matcher matcher/data/pascal.py
    is the same with the split files under VOC2012/splits)."""

    def __init__(self, voc_root: Path, splits: Path, fold: int, split: str, shot: int = 1, size: int = 32):
        self.split = "val" if split in ["val", "test"] else "trn"
        self.fold, self.nfolds, self.nclass, self.benchmark, self.shot = fold, 4, 20, "pascal", shot
        self.img_path, self.ann_path, self.splits, self.size = (
            voc_root / "JPEGImages",
            voc_root / "SegmentationClassAug",
            splits,
            size,
        )
        nclass_trn = self.nclass // self.nfolds
        class_ids_val = [self.fold * nclass_trn + i for i in range(nclass_trn)]
        self.class_ids = (
            class_ids_val if self.split == "val" else [x for x in range(20) if x not in class_ids_val]
        )
        self.img_metadata = self.build_img_metadata()
        self.img_metadata_classwise = {c: [] for c in range(self.nclass)}
        for img_name, img_class in self.img_metadata:
            self.img_metadata_classwise[img_class] += [img_name]

    def build_img_metadata(self):
        def read_metadata(split, fold_id):
            with open(self.splits / split / f"fold{fold_id}.txt") as f:
                fold_n_metadata = f.read().split("\n")[:-1]
            return [[data.split("__")[0], int(data.split("__")[1]) - 1] for data in fold_n_metadata]

        if self.split == "trn":
            return [
                m
                for fold_id in range(self.nfolds)
                if fold_id != self.fold
                for m in read_metadata("trn", fold_id)
            ]
        return read_metadata("val", self.fold)

    def __len__(self):
        return len(self.img_metadata)

    def transform(self, img: Image.Image) -> torch.Tensor:  # HSNet: Resize + ToTensor + Normalize
        return to_tensor(resize(np.asarray(img.convert("RGB")), (self.size, self.size)))

    def __getitem__(self, idx):
        query_name, class_sample = self.img_metadata[idx % len(self.img_metadata)]
        support_names = hsnet_sample_supports(
            self.img_metadata_classwise[class_sample], query_name, self.shot
        )
        support_imgs = torch.stack(
            [self.transform(Image.open(self.img_path / f"{n}.jpg")) for n in support_names]
        )
        masks = []
        for n in support_names:
            m = torch.tensor(np.array(Image.open(self.ann_path / f"{n}.png"))).float()
            m = torch.nn.functional.interpolate(
                m[None, None], support_imgs.size()[-2:], mode="nearest"
            ).squeeze()
            masks.append((m == class_sample + 1).float())
        return {
            "query_name": query_name,
            "support_imgs": support_imgs,
            "support_masks": torch.stack(masks),
            "support_names": support_names,
            "class_id": torch.tensor(class_sample),
        }


class AverageMeterLike:
    """Restated from juhongm999/hsnet common/logger.py AverageMeter.__init__ (what it reads of the dataset)."""

    def __init__(self, dataset):
        self.benchmark = dataset.benchmark
        self.class_ids_interest = torch.tensor(dataset.class_ids)
        self.nclass = {"pascal": 20, "coco": 80, "fss": 1000}[self.benchmark]


def hsnet_pool_pascal(tree: TrainerTree, splits: tuple[str, ...]) -> set[tuple[str, int]]:
    pool = set()
    for split in splits:
        ds = HSNetPASCAL(tree.root, tree.hsnet_splits, 0, split)
        pool |= {(str((tree.root / "JPEGImages" / f"{n}.jpg").resolve()), c + 1) for n, c in ds.img_metadata}
    return pool


@pytest.mark.parametrize(
    ("trainer", "splits"), [("hsnet", ("trn", "val")), ("matcher", ("val",)), ("diffews", ("val",))]
)
def test_hsnet_family_pascal_every_episode_and_the_logger(
    tmp_path: Path, pascal_tree: TrainerTree, trainer: str, splits: tuple[str, ...]
) -> None:
    result = build_for(trainer, "pascal", pascal_tree, tmp_path)
    # HSNet has no area rule and no intersection filter: its split files are the pool, exactly.
    assert manifest_pairs(result.rows) == hsnet_pool_pascal(pascal_tree, splits)
    # 2008_000005 (400 px, kept: HSNet has no area rule) is a trn image: in the pool exactly when trn is.
    assert ("2008_000005_10" in {r["sample_id"] for r in result.rows}) == ("trn" in splits)
    run = run_from_rows(tmp_path, result.rows)
    index = AuxIndex(run.run_dir)
    np.random.seed(0)
    for split in splits:
        base = HSNetPASCAL(pascal_tree.root, pascal_tree.hsnet_splits, 0, split)
        ds = AuxShotDataset(base, index, k=NUM_AUX, key_fn=hsnet_keys, choose="random", seed=0)
        meter = AverageMeterLike(ds)  # test.py: AverageMeter(dataloader.dataset), the wrapper
        assert meter.benchmark == "pascal" and meter.class_ids_interest.tolist() == base.class_ids
        assert ds.shot == 1 and ds.img_metadata is base.img_metadata
        # Every (query, class) → every support it can draw: all have their aux images.
        for query, cls in base.img_metadata:
            for support in base.img_metadata_classwise[cls]:
                if support != query:
                    assert index.count(support, cls + 1) == NUM_AUX
        for i in range(3 * len(base)):
            ep = ds[i]
            assert ep["support_imgs"].shape[0] == 1 + NUM_AUX and ep["support_masks"].shape[0] == 1 + NUM_AUX
            assert torch.equal(ep["support_masks"][1], ep["support_masks"][0])
        loader = torch.utils.data.DataLoader(ds, batch_size=2, num_workers=1)  # the wrapper pickles
        batch = next(iter(loader))
        assert batch["support_imgs"].shape[1] == 1 + NUM_AUX
        assert AverageMeterLike(loader.dataset).benchmark == "pascal"


class HSNetCOCO:
    """Restated from juhongm999/hsnet data/coco.py DatasetCOCO (support pool and names only)."""

    def __init__(self, splits: Path, fold: int, split: str):
        self.split = "val" if split in ["val", "test"] else "trn"
        self.benchmark = "coco"
        nclass_trn = 80 // 4
        class_ids_val = [fold + 4 * v for v in range(nclass_trn)]
        self.class_ids = (
            class_ids_val if self.split == "val" else [x for x in range(80) if x not in class_ids_val]
        )
        with open(splits / self.split / f"fold{fold}.pkl", "rb") as f:
            self.img_metadata_classwise = pickle.load(f)


def test_hsnet_coco_pkl_every_support(tmp_path: Path, coco_tree: TrainerTree) -> None:
    result = build_for("hsnet", "coco", coco_tree, tmp_path)
    pool = set()
    for split in ("trn", "val"):
        ds = HSNetCOCO(coco_tree.hsnet_splits, 0, split)
        for cls, names in ds.img_metadata_classwise.items():
            assert cls in ds.class_ids
            pool |= {(str((coco_tree.root / n).resolve()), cls + 1) for n in names}
    assert manifest_pairs(result.rows) == pool
    assert "COCO_val2014_000000000203_9" in {r["sample_id"] for r in result.rows}  # 400 px: HSNet keeps it
    run = run_from_rows(tmp_path, result.rows)
    index = AuxIndex(run.run_dir)
    for split in ("trn", "val"):
        ds = HSNetCOCO(coco_tree.hsnet_splits, 0, split)
        for cls, names in ds.img_metadata_classwise.items():
            for support_name in names:  # load_frame: support_names are 'train2014/….jpg'
                ep = {"class_id": torch.tensor(cls), "support_names": [support_name]}
                ((key, cid),) = hsnet_keys(ep)
                assert len(index.aux_images(key, cid)) == NUM_AUX


class HSNetFSS:
    """Restated from juhongm999/hsnet data/fss.py DatasetFSS (aim-uofa/Matcher matcher/data/fss.py is the
    same with base FSS-1000/data and splits FSS-1000/splits)."""

    def __init__(self, base_path: Path, splits: Path, split: str, shot: int = 1):
        self.split, self.benchmark, self.shot, self.base_path = split, "fss", shot, str(base_path)
        with open(splits / f"{split}.txt") as f:
            self.categories = sorted(f.read().split("\n")[:-1])
        self.class_ids = {"trn": range(0, 520), "val": range(520, 760), "test": range(760, 1000)}[split]
        self.img_metadata = []
        for cat in self.categories:
            for img_path in sorted(Path(self.base_path, cat).glob("*")):
                if os.path.basename(img_path).split(".")[1] == "jpg":
                    self.img_metadata.append(str(img_path))

    def __len__(self):
        return len(self.img_metadata)

    def sample_episode(self, idx):
        query_name = self.img_metadata[idx]
        class_sample = self.categories.index(query_name.split("/")[-2])
        class_sample += {"trn": 0, "val": 520, "test": 760}[self.split]
        support_names = []
        while True:
            support_name = np.random.choice(range(1, 11), 1, replace=False)[0]
            support_name = os.path.join(os.path.dirname(query_name), str(support_name)) + ".jpg"
            if query_name != support_name:
                support_names.append(support_name)
            if len(support_names) == self.shot:
                break
        return query_name, support_names, class_sample

    def __getitem__(self, idx):
        _, support_names, class_sample = self.sample_episode(idx)
        imgs = torch.stack(
            [to_tensor(resize(np.asarray(Image.open(n).convert("RGB")), (16, 16))) for n in support_names]
        )
        return {"support_imgs": imgs, "support_masks": torch.zeros(len(support_names), 16, 16),
                "support_names": support_names, "class_id": torch.tensor(class_sample)}  # fmt: skip


def test_fss1000_class_ids_equal_hsnets(tmp_path: Path, fss_tree: TrainerTree) -> None:
    for split, names in FSS_TRAINER_SPLITS.items():
        ds = HSNetFSS(fss_tree.root, fss_tree.hsnet_splits, split)
        want = {cat: ds.categories.index(cat) + {"trn": 0, "val": 520, "test": 760}[split] for cat in names}
        assert hsnet_fss_class_ids(names, split) == want
    assert hsnet_fss_class_ids(FSS_TRAINER_SPLITS["test"], "test")["bus"] == 761
    result = build_fss1000(
        fss_tree.root, mask_out=tmp_path / "m", list_file=fss_tree.hsnet_splits / "test.txt"
    )
    by_folder = {Path(r["image"]).parent.name: r["class_id"] for r in result.rows}
    assert by_folder == {"ant": 761, "bus": 762, "zucchini": 763}  # HSNet's id + 1 (its mask value rule)
    assert {r["split"] for r in result.rows} == {"test"}
    table = build_fss1000(fss_tree.root, mask_out=tmp_path / "t", list_file=fss_tree.hsnet_splits / "test.txt",
                          class_ids="table")  # fmt: skip
    assert {r["class_id"] for r in table.rows} != set(by_folder.values())


@pytest.mark.parametrize(("trainer", "splits"), [("hsnet", ("trn", "val", "test")), ("matcher", ("test",))])
def test_hsnet_family_fss1000_every_episode(
    tmp_path: Path, fss_tree: TrainerTree, trainer: str, splits
) -> None:
    result = build_for(trainer, "fss1000", fss_tree, tmp_path)
    assert {r["split"] for r in result.rows} == set(splits)
    run = run_from_rows(tmp_path, result.rows)
    index = AuxIndex(run.run_dir)
    np.random.seed(1)
    for split in splits:
        base = HSNetFSS(fss_tree.root, fss_tree.hsnet_splits, split)
        # Every support an episode of this split can draw: classes × images 1..10.
        for query in base.img_metadata:
            ep = {"class_id": torch.tensor(base.sample_episode(base.img_metadata.index(query))[2]),
                  "support_names": [os.path.join(os.path.dirname(query), f"{n}.jpg") for n in range(1, 11)]}  # fmt: skip
            for key, cid in hsnet_keys(ep):
                assert index.count(key, cid) == NUM_AUX, (key, cid)
        ds = AuxShotDataset(base, index, k=1, key_fn=hsnet_keys)
        assert AverageMeterLike(ds).nclass == 1000
        assert ds[0]["support_imgs"].shape[0] == 2


def test_diffss_fss_layout_and_conditions_as_controlnet4fss_names_them(
    tmp_path: Path, fss_tree: TrainerTree
) -> None:
    result = build_for("hsnet", "fss1000", fss_tree, tmp_path)
    run = run_from_rows(tmp_path, result.rows)
    out = tmp_path / "aux"
    export = export_run(run.run_dir, out, "fss", with_conditions=True)
    assert export.complete == len(result.rows) and export.conditions == len(result.rows)
    # Restated from TrinitialChan/ControlNet4FSS FSSpregenerate.py: fss_list names `{cls}/{index}`,
    # masks binarised to 0/1 so fg_cls = 1; files `target_dir + img_name + f'_{fg_cls}_{shot_index}.jpg'`
    # and `target_dir + img_name + f'_{fg_cls}_control.jpg'`.
    target_dir = str(out) + "/"
    for cls_name in [c for names in FSS_TRAINER_SPLITS.values() for c in names]:
        for index in range(1, 11):
            img_name = f"{cls_name}/{index}"
            for shot_index in range(NUM_AUX):
                assert os.path.exists(target_dir + img_name + f"_1_{shot_index}.jpg")
            assert os.path.exists(target_dir + img_name + "_1_control.jpg")


# --------------------------------------------------------------------------------------------------
# The CLI presets


def test_cli_trainer_presets(tmp_path: Path, pascal_tree: TrainerTree, coco_tree: TrainerTree) -> None:
    cli = CliRunner()
    out = tmp_path / "bam.csv"
    res = cli.invoke(app, ["manifest", "build", "pascal5i", "--root", str(pascal_tree.root), "--trainer", "bam",
                           "--fold", "0", "--list", f"train={pascal_tree.lists['train']}",
                           "--list", f"val={pascal_tree.lists['val']}", "--out", str(out)])  # fmt: skip
    assert res.exit_code == 0, res.output
    rows = [s for s in read_manifest(out).samples]
    assert {(str(Path(s.image).resolve()), s.class_id) for s in rows} == bam_support_pool(
        pascal_tree, "pascal", True
    )
    assert {s.split for s in rows} == {"train", "val"}

    out = tmp_path / "hsnet.csv"
    res = cli.invoke(app, ["manifest", "build", "coco20i", "--root", str(coco_tree.root), "--trainer", "hsnet",
                           "--fold", "0", "--splits-dir", str(coco_tree.hsnet_splits), "--out", str(out)])  # fmt: skip
    assert res.exit_code == 0, res.output
    assert {s.split for s in read_manifest(out).samples} == {"trn", "val"}

    res = cli.invoke(app, ["manifest", "build", "pascal5i", "--root", str(pascal_tree.root), "--trainer", "bam",
                           "--list", str(pascal_tree.lists["train"]), "--out", str(out)])  # fmt: skip
    assert res.exit_code == 2 and "needs --fold" in res.output
    res = cli.invoke(app, ["manifest", "build", "pascal5i", "--root", str(pascal_tree.root), "--trainer", "bam",
                           "--fold", "0", "--list", str(pascal_tree.lists["train"]), "--out", str(out)])  # fmt: skip
    assert res.exit_code == 2 and "--list SPLIT=PATH" in res.output


def test_hsnet_split_files_per_fold(pascal_tree: TrainerTree, coco_tree: TrainerTree) -> None:
    files = hsnet_split_files(pascal_tree.hsnet_splits, "pascal", 2, ["trn", "val"])
    assert [p.name for p in files["trn"]] == ["fold0.txt", "fold1.txt", "fold3.txt"]  # the *other* folds
    assert [p.parent.name + "/" + p.name for p in files["val"]] == ["val/fold2.txt"]
    files = hsnet_split_files(coco_tree.hsnet_splits, "coco", 0, ["trn", "val"])
    assert [p.name for p in files["trn"]] == ["fold0.pkl"]


def test_one_export_folder_covers_train_and_val_runs(tmp_path: Path, pascal_tree: TrainerTree) -> None:
    """DifFSS-BAM's one aux_data_dir: the train run and the val run exported into it, one report."""
    import json

    result = build_for("bam", "pascal", pascal_tree, tmp_path)
    by_split = {s: [r for r in result.rows if r["split"] == s] for s in ("train", "val")}
    out = tmp_path / "aux"
    for split, rows in by_split.items():
        run = run_from_rows(tmp_path / split, rows)
        export_run(run.run_dir, out, "diffss-bam")
    report = json.loads((out / REPORT_FILE).read_text())
    assert report["total"]["runs"] == 2
    assert report["total"]["supports"] == report["total"]["complete"] == len(result.rows)
    for mode, _, cls, support in bam_episodes(pascal_tree, "pascal", filter_train=True):
        assert diffss_bam_aux_files(str(out) + "/", "pascal", support, cls)[1] == 0, mode


def test_cli_fss1000_hsnet_preset_gives_hsnet_ids(tmp_path: Path, fss_tree: TrainerTree) -> None:
    out = tmp_path / "fss.csv"
    res = CliRunner().invoke(
        app,
        ["manifest", "build", "fss1000", "--root", str(fss_tree.root), "--trainer", "hsnet",
         "--splits-dir", str(fss_tree.hsnet_splits), "--out", str(out)],
    )  # fmt: skip
    assert res.exit_code == 0, res.output
    samples = read_manifest(out).samples
    assert {s.split for s in samples} == {"trn", "val", "test"} and len(samples) == 6 * 10
    for split, names in FSS_TRAINER_SPLITS.items():
        ids = hsnet_fss_class_ids(names, split)
        for s in samples:
            folder = Path(s.image).parent.name
            if folder in ids:
                assert s.class_id == ids[folder] + 1 and s.split == split


# --------------------------------------------------------------------------------------------------
# The docs' snippets themselves, run inside the restated loaders

DOCS = Path(__file__).resolve().parents[2] / "docs" / "adapters.md"


def doc_snippets(section: str) -> list[str]:
    """Every ```python block under the docs/adapters.md heading that starts with `section`."""
    text = DOCS.read_text(encoding="utf-8")
    start = text.index(f"\n## {section}")
    end = text.find("\n## ", start + 1)
    part = text[start : end if end != -1 else len(text)]
    return [b.split("```", 1)[0] for b in part.split("```python\n")[1:]]


def doc_snippet(section: str) -> str:
    """The first ```python block under the docs/adapters.md heading that starts with `section`."""
    text = DOCS.read_text(encoding="utf-8")
    start = text.index(f"\n## {section}")
    block = text.index("```python\n", start) + len("```python\n")
    return text[block : text.index("```", block)]


def test_docs_bam_hdmnet_and_pfenet_snippets_run_in_their_loaders(
    tmp_path: Path, pascal_tree: TrainerTree
) -> None:
    from types import SimpleNamespace

    for trainer, section in (("hdmnet", "BAM and HDMNet"), ("pfenet", "PFENet")):
        result = build_for(trainer, "pascal", pascal_tree, tmp_path / trainer)
        run = run_from_rows(tmp_path / trainer, result.rows)
        code = compile(doc_snippet(section), f"docs/adapters.md ({section})", "exec")
        filter_train = trainer_preset(trainer).filter_intersection
        episodes = list(bam_episodes(pascal_tree, "pascal", filter_train))
        assert len(episodes) >= 8
        for index, (mode, _, class_chosen, support) in enumerate(episodes):
            support_image = np.float32(cv2.cvtColor(cv2.imread(support, cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB))
            label = np.ones(support_image.shape[:2], np.uint8)
            self = SimpleNamespace(shot=1 + AUX_SHOT, mode=mode)
            ns = {
                "np": np, "self": self, "index": index, "class_chosen": class_chosen,
                "args": SimpleNamespace(aux_run=str(run.run_dir), aux_shot=AUX_SHOT),
                "aux_run": str(run.run_dir), "aux_shot": AUX_SHOT,
                "support_image_path_list": [support],
                # BAM/HDMNet's three lists, PFENet's two + subcls_list, each holding the real shot
                "support_image_list_ori": [support_image], "support_label_list_ori": [label],
                "support_label_list_ori_mask": [label], "support_image_list": [support_image],
                "support_label_list": [label], "subcls_list": [0],
            }  # fmt: skip
            exec(code, ns)
            images = ns["support_image_list_ori"] if trainer == "hdmnet" else ns["support_image_list"]
            labels = ns["support_label_list_ori"] if trainer == "hdmnet" else ns["support_label_list"]
            assert len(images) == len(labels) == self.shot  # the loaders' assert
            assert all(im.shape == support_image.shape and im.dtype == np.float32 for im in images)
            if trainer == "pfenet":
                assert len(ns["subcls_list"]) == self.shot


def test_docs_hsnet_and_matcher_snippets_run(tmp_path: Path, pascal_tree: TrainerTree) -> None:
    import argparse
    from types import SimpleNamespace

    result = build_for("hsnet", "pascal", pascal_tree, tmp_path)
    run = run_from_rows(tmp_path, result.rows)
    base = HSNetPASCAL(pascal_tree.root, pascal_tree.hsnet_splits, 0, "val")

    class FSSDataset:  # juhongm999/hsnet data/dataset.py: the class attributes the snippet reads
        img_mean = (0.485, 0.456, 0.406)
        img_std = (0.229, 0.224, 0.225)

    parser = argparse.ArgumentParser()
    parser.add_argument("--nshot", type=int, default=1)  # test.py's own arguments (a few)
    parser.add_argument("--bsz", type=int, default=2)
    ns = {"parser": parser, "torch": torch, "FSSDataset": FSSDataset,
          "dataloader_test": torch.utils.data.DataLoader(base, batch_size=2)}  # fmt: skip
    code = compile(doc_snippet("HSNet"), "docs/adapters.md (HSNet)", "exec")
    # 1. Without --aux_run: the snippet only adds its two arguments; the loader stays HSNet's.
    exec(code, {**ns, "args": SimpleNamespace(aux_run="", aux_shot=0)})
    args = parser.parse_args(["--aux_run", str(run.run_dir), "--aux_shot", str(NUM_AUX)])
    assert (args.aux_run, args.aux_shot, args.nshot) == (str(run.run_dir), NUM_AUX, 1)
    # 2. With them (a fresh parser: argparse refuses adding an argument twice): the loader is wrapped.
    ns.update(args=args, parser=argparse.ArgumentParser())
    exec(code, ns)
    wrapped = ns["dataloader_test"]
    assert isinstance(wrapped.dataset, AuxShotDataset)
    # test.py: AverageMeter(dataloader.dataset) reads .benchmark and .class_ids through the wrapper
    assert AverageMeterLike(wrapped.dataset).benchmark == "pascal"
    batch = next(iter(wrapped))
    assert batch["support_imgs"].shape[1] == args.nshot * (1 + args.aux_shot)  # the nshot test() gets

    # Matcher main_oss.py / DiffewS evaluation_util/main_oss.py: the same names as HSNet's test.py.
    ns3 = {"torch": torch, "args": args, "dataloader_test": torch.utils.data.DataLoader(base, batch_size=2)}
    exec(compile(doc_snippet("Matcher and DiffewS"), "docs/adapters.md (Matcher)", "exec"), ns3)
    assert next(iter(ns3["dataloader_test"]))["support_imgs"].shape[1] == 1 + NUM_AUX


# --------------------------------------------------------------------------------------------------
# HDMNet's own lists, DiffewS training, FSS-1000 partial trees


def write_hdmnet_fss_lists(tree: TrainerTree, hdmnet: Path, fold: int = 0) -> Path:
    """`lists/pascal/fss_list/{train,val}/{data_list,sub_class_file_list}_{fold}.txt` as Pbihao/HDMNet
    util/dataset.py's (commented) "Write FSS Data" block writes them from `make_dataset`: train with
    `filter_intersection=True`, val without; paths `os.path.join(data_root, …)` with a data_root
    relative to the HDMNet folder (`../…`)."""
    sub_list, sub_val_list = bam_class_lists("pascal", fold)
    root = hdmnet / "lists" / "pascal" / "fss_list"
    data_root = Path(os.path.relpath(tree.root, hdmnet))
    for mode, classes, flt in (("train", sub_list, True), ("val", sub_val_list, False)):
        cwd = os.getcwd()
        os.chdir(hdmnet)  # the lists' paths are relative to HDMNet's working directory
        try:
            data_list, sub_class_file_list = bam_make_dataset(data_root, tree.lists[mode], classes, flt)
        finally:
            os.chdir(cwd)
        (root / mode).mkdir(parents=True, exist_ok=True)
        with open(root / mode / f"data_list_{fold}.txt", "w") as f:
            for img, label in data_list:
                f.write(img + " ")
                f.write(label + "\n")
        with open(root / mode / f"sub_class_file_list_{fold}.txt", "w") as f:
            f.write(str(sub_class_file_list))
    return root


def hdmnet_support_pool(fss_list: Path, hdmnet: Path, fold: int = 0) -> set[tuple[str, int]]:
    # Pbihao/HDMNet SemData.__init__ "Read FSS Data": the support pool is sub_class_file_list.
    pool = set()
    for mode in ("train", "val"):
        with open(fss_list / mode / f"sub_class_file_list_{fold}.txt") as f:
            sub_class_file_list = eval(f.read())
        pool |= {
            (str((hdmnet / img).resolve()), c) for c, items in sub_class_file_list.items() for img, _ in items
        }
    return pool


def test_hdmnet_manifest_from_its_own_fss_lists(tmp_path: Path, pascal_tree: TrainerTree) -> None:
    hdmnet = tmp_path / "HDMNet"
    hdmnet.mkdir()
    fss_list = write_hdmnet_fss_lists(pascal_tree, hdmnet)
    out = tmp_path / "hdmnet.csv"
    res = CliRunner().invoke(app, ["manifest", "build", "pascal5i", "--root", str(hdmnet), "--trainer", "hdmnet",
                                   "--fold", "0", "--splits-dir", str(fss_list), "--out", str(out)])  # fmt: skip
    assert res.exit_code == 0, res.output
    samples = read_manifest(out).samples
    pool = hdmnet_support_pool(fss_list, hdmnet)
    assert {(str(Path(s.image).resolve()), s.class_id) for s in samples} == pool
    assert pool == bam_support_pool(pascal_tree, "pascal", True)  # BAM's make_dataset, written out
    assert {s.split for s in samples} == {"train", "val"}
    res = CliRunner().invoke(app, ["manifest", "build", "pascal5i", "--root", str(hdmnet), "--trainer", "hdmnet",
                                   "--fold", "1", "--splits-dir", str(fss_list), "--out", str(out)])  # fmt: skip
    assert res.exit_code == 2 and "sub_class_file_list_1.txt" in res.output
    res = CliRunner().invoke(app, ["manifest", "build", "pascal5i", "--root", str(hdmnet), "--trainer", "bam",
                                   "--fold", "0", "--splits-dir", str(fss_list), "--out", str(out)])  # fmt: skip
    assert res.exit_code == 2 and "reads data lists" in res.output


def test_diffews_trains_on_hsnet_coco_trn(
    tmp_path: Path, coco_tree: TrainerTree, pascal_tree: TrainerTree
) -> None:
    """DiffewS train_tools/train_icl_multitask_nocrop_nearest_nshot_v3.py: `args.benchmark = 'coco'`,
    `FSSDataset.build_dataloader('coco', …, 'trn', args.nshot)`: COCO trn + val, PASCAL val only."""
    coco = build_for("diffews", "coco", coco_tree, tmp_path / "coco")
    assert manifest_pairs(coco.rows) == manifest_pairs(
        build_for("hsnet", "coco", coco_tree, tmp_path / "h").rows
    )
    assert {r["split"] for r in coco.rows} == {"trn", "val"}
    pascal = build_for("diffews", "pascal", pascal_tree, tmp_path / "pascal")
    assert {r["split"] for r in pascal.rows} == {"val"}


class HSNetCOCOEpisodes(HSNetCOCO):
    """juhongm999/hsnet data/coco.py DatasetCOCO.__getitem__ / load_frame (DiffewS's copy in
    evaluation_util/data), with DiffewS's [-1, 1] transform."""

    def __init__(self, base_path: Path, splits: Path, fold: int, split: str, shot: int, transform):
        super().__init__(splits, fold, split)
        self.base_path, self.shot, self.transform = base_path, shot, transform
        self.class_ids = [c for c in self.class_ids if len(self.img_metadata_classwise.get(c, [])) > shot]

    def __len__(self):
        return 8

    def read_mask(self, name):
        return torch.tensor(
            np.array(Image.open(self.base_path / "annotations" / (name[: name.index(".jpg")] + ".png")))
        )

    def __getitem__(self, idx):
        class_sample = np.random.choice(self.class_ids, 1, replace=False)[0]
        query_name = np.random.choice(self.img_metadata_classwise[class_sample], 1, replace=False)[0]
        query_img = self.transform(Image.open(self.base_path / query_name).convert("RGB"))
        query_mask = (self.read_mask(query_name) == class_sample + 1).float()
        query_mask = torch.nn.functional.interpolate(
            query_mask[None, None], query_img.size()[-2:], mode="nearest"
        ).squeeze()
        support_names = hsnet_sample_supports(
            self.img_metadata_classwise[class_sample], query_name, self.shot
        )
        support_imgs = torch.stack(
            [self.transform(Image.open(self.base_path / n).convert("RGB")) for n in support_names]
        )
        masks = [(self.read_mask(n) == class_sample + 1).float() for n in support_names]
        masks = [
            torch.nn.functional.interpolate(m[None, None], support_imgs.size()[-2:], mode="nearest").squeeze()
            for m in masks
        ]
        return {"query_img": query_img, "query_mask": query_mask, "support_imgs": support_imgs,
                "support_masks": torch.stack(masks), "support_names": support_names,
                "class_id": torch.tensor(class_sample)}  # fmt: skip


def test_docs_diffews_training_lines_run_in_its_loop(tmp_path: Path, coco_tree: TrainerTree) -> None:
    import random
    from types import SimpleNamespace

    from torchvision import transforms

    result = build_for("diffews", "coco", coco_tree, tmp_path)
    run = run_from_rows(tmp_path, result.rows)
    transform = transforms.Compose(
        [transforms.Resize(size=(32, 32)), transforms.ToTensor(), transforms.Normalize([0.5], [0.5])]
    )
    base = HSNetCOCOEpisodes(coco_tree.root, coco_tree.hsnet_splits, 0, "trn", 1, transform)
    args = SimpleNamespace(nshot=1, aux_run=str(run.run_dir), aux_shot=NUM_AUX, bsz=1, nworker=0)
    dataloader_train_nshot = torch.utils.data.DataLoader(base, batch_size=1, shuffle=True)
    wrap, loop_line = doc_snippets("DiffewS training")
    ns = {"args": args, "torch": torch, "dataloader_train_nshot": dataloader_train_nshot}
    exec(compile(wrap, "docs/adapters.md (DiffewS training)", "exec"), ns)
    assert ns["train_dataloader"] is ns["dataloader_train_nshot"]  # both names the script uses
    assert isinstance(ns["dataloader_train_nshot"].dataset, AuxShotDataset)
    np.random.seed(0)
    random.seed(0)
    used, delivered = set(), 0
    for _ in range(4):
        for batch_ in ns["dataloader_train_nshot"]:  # the script's loop, up to its choice of shots
            batch = {"imgs_ref": batch_["support_imgs"][0]}
            assert batch["imgs_ref"].shape == (args.nshot * (1 + NUM_AUX), 3, 32, 32)
            assert batch["imgs_ref"].min() < 0  # DiffewS's [-1, 1] transform ran on the aux shots too
            delivered += batch["imgs_ref"].shape[0] - args.nshot
            step = {"batch": batch, "args": args}
            exec(compile(loop_line, "docs/adapters.md (DiffewS loop)", "exec"), step)
            temp_nshot = random.randint(1, step["max_nshot"])
            used |= set(random.sample(range(0, step["max_nshot"]), temp_nshot))
    assert delivered == 4 * len(base) * NUM_AUX
    assert used & set(range(args.nshot, args.nshot * (1 + NUM_AUX)))  # aux shots are drawn


def test_cli_fss1000_partial_tree_for_a_multi_split_preset(tmp_path: Path) -> None:
    import shutil

    tree = make_fss_trainer_tree(tmp_path / "fss")
    for cls in FSS_TRAINER_SPLITS["trn"] + FSS_TRAINER_SPLITS["val"]:
        shutil.rmtree(tree.root / cls)  # only test's class folders, as for Matcher / DiffewS
    for trainer in ("hsnet", "matcher", "diffews"):
        out = tmp_path / f"{trainer}.csv"
        res = CliRunner().invoke(app, ["manifest", "build", "fss1000", "--root", str(tree.root), "--trainer", trainer,
                                       "--splits-dir", str(tree.hsnet_splits), "--out", str(out)])  # fmt: skip
        assert res.exit_code == 0, res.output
        samples = read_manifest(out).samples
        assert {s.split for s in samples} == {"test"} and len(samples) == 3 * 10
        # hsnet also reads trn.txt and val.txt: their absent folders are counted, not fatal
        assert ("missing class folder" in res.output) == (trainer == "hsnet")
