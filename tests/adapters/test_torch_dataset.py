"""`AuxShotDataset`: aux shots appended to dict and tuple episodes, transforms, forwarding, drift threshold."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from _runs import SyntheticRun, make_run

from difaug.adapters import AuxIndex, AuxKeyError, AuxShotDataset, DictFormat, TupleFormat
from difaug.adapters.torch_dataset import binary_mask, to_tensor
from difaug.core.imageio import load_image, load_mask, resize


@pytest.fixture(scope="module")
def pascal_run(tmp_path_factory: pytest.TempPathFactory) -> SyntheticRun:
    return make_run(tmp_path_factory.mktemp("pascal"), num_aux=3, fail=["2008_000123_7"])


class HSNetLike(torch.utils.data.Dataset):
    """Dict episodes as HSNet builds them: supports resized to a fixed size, 0-based class id."""

    def __init__(self, run: SyntheticRun, names: list[tuple[str, int]], size: int = 32) -> None:
        self.run, self.names, self.size = run, names, size

    def __len__(self) -> int:
        return len(self.names)

    def __getitem__(self, i: int) -> dict:
        stem, cls = self.names[i]
        s = next(s for s in self.run.samples if Path(s.image).stem == stem and s.class_id == cls)
        img = to_tensor(resize(np.asarray(_load(s.image)), (self.size, self.size)))
        mask = torch.from_numpy(
            binary_mask(resize(load_mask(s.mask), (self.size, self.size), nearest=True), cls)
        )
        return {
            "query_img": img,
            "support_imgs": img[None],
            "support_masks": mask[None],
            "support_names": [stem],
            "class_id": torch.tensor(cls - 1),
        }


def _load(path: str) -> np.ndarray:

    return load_image(path)


def hsnet_keys(episode: dict) -> list[tuple[str, int]]:
    return [(name, int(episode["class_id"]) + 1) for name in episode["support_names"]]


def test_dataset_dict_episodes_get_aux_shots_at_mask_size(pascal_run: SyntheticRun) -> None:
    base = HSNetLike(pascal_run, [("2007_000032", 15), ("2007_000039", 20)])
    ds = AuxShotDataset(base, AuxIndex(pascal_run.run_dir), k=2, key_fn=hsnet_keys)
    ep = ds[1]
    assert ep["support_imgs"].shape == (3, 3, 32, 32)
    assert ep["support_masks"].shape == (3, 32, 32)
    assert ep["support_names"] == ["2007_000039"] * 3  # per-shot fields stay aligned
    for shot in range(1, 3):
        assert ep["support_imgs"][shot].shape[-2:] == ep["support_masks"][shot].shape[-2:]
        assert torch.equal(ep["support_masks"][shot], ep["support_masks"][0])  # the original mask
        want = to_tensor(resize(pascal_run.aux["2007_000039_20"][shot - 1], (32, 32)))
        assert torch.equal(ep["support_imgs"][shot], want)
    rnd = AuxShotDataset(base, AuxIndex(pascal_run.run_dir), k=1, key_fn=hsnet_keys, choose="random")
    options = [to_tensor(resize(a, (32, 32))) for a in pascal_run.aux["2007_000039_20"]]
    for _ in range(4):
        picked = rnd[1]["support_imgs"][1]
        assert any(torch.equal(picked, o) for o in options)
    batch = next(iter(torch.utils.data.DataLoader(ds, batch_size=2, num_workers=1)))
    assert batch["support_imgs"].shape == (2, 3, 3, 32, 32)


def test_dataset_tuple_episodes_with_shot_transform(pascal_run: SyntheticRun) -> None:
    """PFENet/BAM-style tuples; shots go through the trainer's joint transform with the raw mask."""
    s = pascal_run.sample("2009_004567_12")
    raw = binary_mask(load_mask(s.mask), 12)

    class PFENetLike:
        def __len__(self) -> int:
            return 1

        def __getitem__(self, i: int) -> tuple:
            return ("q", "qm", [np.zeros((4, 4, 3))], [np.zeros((4, 4))], [11], s.image)

    seen: list[tuple[tuple[int, ...], tuple[int, ...]]] = []

    def joint(image: np.ndarray, mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        seen.append((image.shape, mask.shape))
        return image, mask

    ds = AuxShotDataset(
        PFENetLike(),
        AuxIndex(pascal_run.run_dir),
        k=3,
        key_fn=lambda ep: [(ep[5], 12)],
        episode_format=TupleFormat(2, 3),
        shot_transform=joint,
    )
    ep = ds[0]
    assert len(ep[2]) == len(ep[3]) == 4 and ep[4] == [11] and ep[5] == s.image
    h, w = raw.shape
    assert seen == [((h, w, 3), (h, w))] * 3  # each shot: support-size image + support-size mask
    for k in range(3):
        np.testing.assert_array_equal(ep[2][1 + k], pascal_run.aux[s.sample_id][k])
        np.testing.assert_array_equal(ep[3][1 + k], raw)


def test_dataset_missing_aux_errors_or_falls_back(pascal_run: SyntheticRun) -> None:
    base = HSNetLike(pascal_run, [("2008_000123", 7)])  # this support failed in the run
    index = AuxIndex(pascal_run.run_dir)
    with pytest.raises(AuxKeyError, match="fewer than k=2"):
        AuxShotDataset(base, index, k=2, key_fn=hsnet_keys)[0]
    ds = AuxShotDataset(base, index, k=2, key_fn=hsnet_keys, missing="support")
    ep = ds[0]
    assert ep["support_imgs"].shape[0] == 3 and torch.equal(ep["support_imgs"][2], ep["support_imgs"][0])
    assert ds.fallbacks == 2


def test_dataset_argument_checks(pascal_run: SyntheticRun) -> None:
    index = AuxIndex(pascal_run.run_dir)
    with pytest.raises(ValueError, match="only 3 aux"):
        AuxShotDataset([], index, k=4, key_fn=hsnet_keys)
    base = HSNetLike(pascal_run, [("2007_000032", 1)])
    with pytest.raises(ValueError, match=r"one .* per support"):
        AuxShotDataset(base, index, k=1, key_fn=lambda ep: [])[0]
    assert isinstance(DictFormat().append({"support_imgs": [], "support_masks": []}, [], [], []), dict)


# --------------------------------------------------------------------------------------------------
# Attribute forwarding, seeded random shots, the drift threshold


class HSNetLikeWithMeta(HSNetLike):
    """HSNetLike plus what HSNet's `AverageMeter(dataset)` and scripts read (common/logger.py)."""

    benchmark = "pascal"

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.class_ids = [0, 1, 2, 3, 4]
        self.shot = 1


def test_wrapper_forwards_attributes_and_pickles(pascal_run: SyntheticRun) -> None:
    base = HSNetLikeWithMeta(pascal_run, [("2007_000032", 15)])
    ds = AuxShotDataset(base, AuxIndex(pascal_run.run_dir), k=1, key_fn=hsnet_keys)
    assert (ds.benchmark, ds.class_ids, ds.shot) == ("pascal", [0, 1, 2, 3, 4], 1)
    assert ds.k == 1 and ds.base is base  # its own attributes win
    with pytest.raises(AttributeError, match="no_such_thing"):
        _ = ds.no_such_thing
    clone = pickle.loads(pickle.dumps(ds))  # __setstate__ must not recurse through __getattr__
    assert clone.benchmark == "pascal" and clone[0]["support_imgs"].shape[0] == 2
    bare = AuxShotDataset.__new__(AuxShotDataset)  # no `base` yet, as during unpickling
    with pytest.raises(AttributeError):
        _ = bare.benchmark


def test_seeded_random_choice_is_per_episode(pascal_run: SyntheticRun) -> None:
    index = AuxIndex(pascal_run.run_dir)
    sid = "2007_000032_1"
    picks = {tuple(map(bytes, index.aux_bytes(sid, k=2, choose="random", seed=s))) for s in range(30)}
    assert len(picks) > 1  # different episodes get different shots …
    for s in range(5):  # … and the same episode the same ones
        assert index.aux_bytes(sid, k=2, choose="random", seed=s) == index.aux_bytes(
            sid, k=2, choose="random", seed=s
        )
    assert index.aux_bytes(sid, k=2) == index.aux_bytes(sid)[:2]
    with pytest.raises(ValueError, match="choose"):
        index.aux_bytes(sid, k=1, choose="best")
    base = HSNetLike(pascal_run, [("2007_000032", 1)])
    ds = AuxShotDataset(base, index, k=1, key_fn=hsnet_keys, choose="random", seed=7)
    assert torch.equal(ds[0]["support_imgs"], ds[0]["support_imgs"])


def test_index_min_drift_iou(tmp_path: Path) -> None:
    from _runs import PASCAL_SPECS

    from difaug.adapters import DriftScoreError

    drift = {"2007_000032_1": [0.9, 0.1, 0.7], "2007_000032_15": [0.2, 0.3, 0.1]}
    run = make_run(tmp_path, PASCAL_SPECS[:2], num_aux=3, drift=drift)
    index = AuxIndex(run.run_dir, min_drift_iou=0.6)
    assert index.aux_indices("2007_000032_1") == [0, 2] and index.filtered == 4
    np.testing.assert_array_equal(index.aux_images("2007_000032_1")[1], run.aux["2007_000032_1"][2])
    assert index.count("2007_000032", 15) == 0
    np.testing.assert_array_equal(index.condition_image("2007_000032_15"), run.conditions["2007_000032_15"])
    base = HSNetLike(run, [("2007_000032", 15)])
    with pytest.raises(AuxKeyError, match="min_drift_iou"):
        AuxShotDataset(base, index, k=1, key_fn=hsnet_keys)[0]
    unscored = make_run(tmp_path / "u", PASCAL_SPECS[:1], num_aux=1)
    with pytest.raises(DriftScoreError, match="difaug score"):
        AuxIndex(unscored.run_dir, min_drift_iou=0.5)
    assert len(AuxIndex(unscored.run_dir)) == 1  # no threshold: scores are not needed


# --------------------------------------------------------------------------------------------------
# Resize parity: an aux shot is what the trainer's own support path makes of the same image (Δ = 0)


@pytest.fixture(scope="module")
def jpeg_run(tmp_path_factory: pytest.TempPathFactory) -> SyntheticRun:
    return make_run(tmp_path_factory.mktemp("jpeg"), num_aux=2, image_format="jpeg")


class HSNetFamilyEpisodes(torch.utils.data.Dataset):
    """The support path of juhongm999/hsnet data/pascal.py (aim-uofa/Matcher matcher/data/pascal.py,
    DiffewS's copy): `self.transform(Image.open(path))` per support, the mask interpolated to it."""

    def __init__(self, run: SyntheticRun, transform) -> None:
        self.run, self.transform = run, transform
        self.samples = [s for s in run.samples if s.sample_id in run.aux]

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i: int) -> dict:
        from PIL import Image

        s = self.samples[i]
        support_imgs = torch.stack([self.transform(Image.open(s.image))])
        m = torch.tensor(np.array(Image.open(s.mask))).float()
        m = torch.nn.functional.interpolate(m[None, None], support_imgs.size()[-2:], mode="nearest").squeeze()
        return {"support_imgs": support_imgs, "support_masks": (m == s.class_id).float()[None],
                "support_names": [Path(s.image).stem], "class_id": torch.tensor(s.class_id - 1)}  # fmt: skip


def _hsnet_family_transform(trainer: str):
    from torchvision import transforms

    resize_to_tensor = [transforms.Resize(size=(40, 40)), transforms.ToTensor()]  # img_size 40 here
    norm = {
        "hsnet": [
            transforms.Normalize([0.485, 0.456, 0.406], [0.229, 0.224, 0.225])
        ],  # hsnet data/dataset.py
        "matcher": [],  # aim-uofa/Matcher matcher/data/dataset.py: Resize + ToTensor
        "diffews": [transforms.Normalize([0.5], [0.5])],  # DiffewS: [-1, 1] (its train script's transforms)
    }[trainer]
    return transforms.Compose(resize_to_tensor + norm)


@pytest.mark.parametrize("trainer", ["hsnet", "matcher", "diffews"])
def test_hsnet_family_aux_shot_equals_the_support_path(
    jpeg_run: SyntheticRun, tmp_path: Path, trainer: str
) -> None:
    from PIL import Image

    from difaug.adapters import hsnet_keys

    base = HSNetFamilyEpisodes(jpeg_run, _hsnet_family_transform(trainer))
    index = AuxIndex(jpeg_run.run_dir)
    ds = AuxShotDataset(base, index, k=2, key_fn=hsnet_keys, image_form="pil")  # base.transform
    old = AuxShotDataset(
        base, index, k=2, key_fn=hsnet_keys, image_transform=lambda a: base.transform(Image.fromarray(a))
    )
    worst_old = 0.0
    for i in range(len(base)):
        s = base.samples[i]
        ep = ds[i]
        assert ep["support_imgs"].shape == (3, 3, 40, 40)
        for k, raw in enumerate(index.aux_bytes(s.sample_id, k=2)):
            path = tmp_path / f"{s.sample_id}_{k}.jpg"  # the aux image as a support file
            path.write_bytes(raw)
            want = base.transform(Image.open(path))  # the trainer's support path
            assert torch.equal(ep["support_imgs"][1 + k], want)  # Δ = 0
            worst_old = max(worst_old, float((old[i]["support_imgs"][1 + k] - want).abs().mean()))
        assert torch.equal(ep["support_masks"][1], ep["support_masks"][0])
    assert worst_old > 0  # resizing with OpenCV first is not the trainer's Resize


def pfenet_test_transform(image: np.ndarray, label: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    """A deterministic joint transform in dvlab-research/PFENet util/transform.py's terms: cv2 linear
    resize of the float32 RGB image (nearest for the label), ToTensor (HWC → CHW float), Normalize with
    mean/std × 255."""
    import cv2

    image = cv2.resize(image, (40, 40), interpolation=cv2.INTER_LINEAR)
    label = cv2.resize(label, (40, 40), interpolation=cv2.INTER_NEAREST)
    t = torch.from_numpy(image.transpose((2, 0, 1))).float()
    mean = torch.tensor([0.485, 0.456, 0.406])[:, None, None] * 255
    std = torch.tensor([0.229, 0.224, 0.225])[:, None, None] * 255
    return t.sub_(mean).div_(std), torch.from_numpy(label).long()


def test_pfenet_family_aux_shot_equals_the_support_path(jpeg_run: SyntheticRun, tmp_path: Path) -> None:
    index = AuxIndex(jpeg_run.run_dir)
    samples = [s for s in jpeg_run.samples if s.sample_id in jpeg_run.aux]

    class Episodes:
        def __len__(self) -> int:
            return len(samples)

        def __getitem__(self, i: int):
            s = samples[i]
            x, y = pfenet_test_transform(_cv2_read(s.image), binary_mask(load_mask(s.mask), s.class_id))
            return (x, y, [x], [y], s.image, s.class_id)

    ds = AuxShotDataset(Episodes(), index, k=2, key_fn=lambda ep: [(ep[4], ep[5])], image_form="cv2",
                        shot_transform=pfenet_test_transform)  # fmt: skip
    for i, s in enumerate(samples):
        ep = ds[i]
        mask = binary_mask(load_mask(s.mask), s.class_id)
        for k, raw in enumerate(index.aux_bytes(s.sample_id, k=2)):
            path = tmp_path / f"{s.sample_id}_{k}.jpg"
            path.write_bytes(raw)
            want_x, want_y = pfenet_test_transform(_cv2_read(str(path)), mask)  # SemData's support path
            assert torch.equal(ep[2][1 + k], want_x) and torch.equal(ep[3][1 + k], want_y)
            # the in-loader lines (docs/adapters.md) read the same float32 array
            np.testing.assert_array_equal(
                index.aux_images(s.image, s.class_id, k=2, form="cv2")[k], _cv2_read(str(path))
            )


def _cv2_read(path: str) -> np.ndarray:
    # PFENet / BAM / HDMNet util/dataset.py SemData.__getitem__, the support read.
    import cv2

    return np.float32(cv2.cvtColor(cv2.imread(path, cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB))


def test_image_form_needs_a_transform_of_the_episode_size(jpeg_run: SyntheticRun) -> None:
    from difaug.adapters import hsnet_keys

    base = HSNetFamilyEpisodes(jpeg_run, _hsnet_family_transform("matcher"))
    index = AuxIndex(jpeg_run.run_dir)
    with pytest.raises(ValueError, match="form='bgr' is not one of"):
        AuxShotDataset(base, index, k=1, key_fn=hsnet_keys, image_form="bgr")
    with pytest.raises(ValueError, match="needs the trainer's support transform"):
        AuxShotDataset(list(range(3)), index, k=1, key_fn=hsnet_keys, image_form="pil")
    ds = AuxShotDataset(
        base,
        index,
        k=1,
        key_fn=hsnet_keys,
        image_form="pil",
        image_transform=lambda im: to_tensor(np.asarray(im)),
    )
    with pytest.raises(ValueError, match="pass the trainer's support transform"):
        ds[0]
