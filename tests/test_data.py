"""Tests for data.py: the Shapes dataset (determinism, splits, held-out pairs, captions) and the real-data loaders
(COCO layout, caption folders, odd image modes, unreadable files, errors, dispatch, distributed sampling)."""
import json
import os
import re
import sys

import numpy as np
import pytest
import torch
from PIL import Image

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import data  # noqa: E402
import real_data  # noqa: E402
from data import (HELDOUT_PAIRS, TEMPLATES, ShapesDataset, collate, make_caption, parse_caption,  # noqa: E402
                  sample_params)
from real_data import CocoCaptions, DataError, FolderCaptions, load_rgb, open_dataset  # noqa: E402


def params_key(attrs, jitter):
    return (tuple(sorted(attrs.items())), jitter["dx"], jitter["dy"], jitter["scale"], jitter["rot"],
            tuple(jitter["rgb"]), jitter["template"])


def image_bytes(ds, i):
    return ds.sample(i)[0].tobytes()


def caption_of(split, i, seed=0):
    """The caption ShapesDataset gives sample i, without rendering the image."""
    attrs, jitter = sample_params(split, i, seed)
    return make_caption(attrs, np.random.default_rng(jitter["template"])), attrs


# -----------------------------------------------------------------------------
# Shapes

def test_shapes_deterministic_and_seed_dependent():
    for split in ("train", "val", "test"):
        a, b = ShapesDataset(split, seed=0), ShapesDataset(split, seed=0)
        for i in (0, 1, 17, 999):
            x, y = a[i], b[i]
            assert torch.equal(x["image"], y["image"]) and x["caption"] == y["caption"] and x["attrs"] == y["attrs"]
    s0, s1 = ShapesDataset("train", seed=0), ShapesDataset("train", seed=1)
    assert all(image_bytes(s0, i) != image_bytes(s1, i) for i in range(20))
    assert [sample_params("train", i, 0) for i in range(20)] != [sample_params("train", i, 1) for i in range(20)]


def test_splits_disjoint():
    keys = {s: {params_key(*sample_params(s, i)) for i in range(2000)} for s in ("train", "val", "test")}
    assert all(len(k) == 2000 for k in keys.values())  # no repeats inside a split either
    assert not keys["train"] & keys["val"] and not keys["train"] & keys["test"] and not keys["val"] & keys["test"]
    imgs = {s: {image_bytes(ShapesDataset(s), i) for i in range(300)} for s in ("train", "val", "test")}
    assert not imgs["train"] & imgs["val"] and not imgs["train"] & imgs["test"] and not imgs["val"] & imgs["test"]


def test_heldout_pairs():
    train_pairs = {(a["shape"], a["color"]) for a, _ in (sample_params("train", i) for i in range(5000))}
    assert not train_pairs & HELDOUT_PAIRS
    assert len(train_pairs) == 3 * 6 - len(HELDOUT_PAIRS)  # every other pair does occur
    for split in ("val", "test"):
        pairs = {(a["shape"], a["color"]) for a, _ in (sample_params(split, i) for i in range(1000))}
        assert HELDOUT_PAIRS <= pairs


def template_index(caption):
    """Which TEMPLATES entry produced `caption` (placeholders may only match their own vocabulary)."""
    alt = lambda words: "(?:" + "|".join(re.escape(w) for w in sorted(words, key=len, reverse=True)) + ")"
    vocab = {"size": alt(w for ws in data.SIZE_WORDS.values() for w in ws),
             "color": alt(data.COLORS), "shape": alt(w for ws in data.SHAPE_WORDS.values() for w in ws),
             "pos": alt(p for ps in data.POSITION_PHRASES.values() for p in ps)}
    hits = [k for k, t in enumerate(TEMPLATES)
            if re.fullmatch(re.sub(r"\\\{(\w+)\\\}", lambda m: vocab[m.group(1)], re.escape(t)), caption)]
    assert hits, caption
    return hits[0]


def test_captions_state_every_attribute_and_vary():
    for split in ("train", "val", "test"):
        for i in range(1500):
            caption, attrs = caption_of(split, i)
            assert parse_caption(caption) == attrs, (caption, attrs)
    ds = ShapesDataset("train")
    for i in range(30):  # the dataset itself (not just the helper above) returns parseable captions
        item = ds[i]
        assert parse_caption(item["caption"]) == item["attrs"]
        # the references: CAPTIONS_PER_IMAGE wordings of the same attributes, the training caption first
        assert item["captions"] == ds.all_captions(i) and item["captions"][0] == item["caption"] == ds.caption(i)
        assert len(item["captions"]) == data.CAPTIONS_PER_IMAGE
        assert all(parse_caption(c) == item["attrs"] for c in item["captions"])
    assert sum(len(set(ds.all_captions(i))) for i in range(30)) > 30 * 3  # mostly distinct wordings
    captions = [caption_of("train", i)[0] for i in range(300)]
    assert len({template_index(c) for c in captions}) == len(TEMPLATES)
    assert len(set(captions)) > 250
    attrs = {"shape": "square", "color": "red", "size": "small", "position": "top left"}
    assert len({make_caption(attrs, np.random.default_rng(k)) for k in range(50)}) >= 10
    assert parse_caption(make_caption(attrs)) == attrs


def test_shapes_image_tensor():
    for size in (32, 64):
        item = ShapesDataset("val", size=size)[3]
        x = item["image"]
        assert x.shape == (3, size, size) and x.dtype == torch.float32
        assert 0.0 <= x.min() and x.max() <= 1.0 and x.std() > 0.05  # an object on a background, not blank
    assert ShapesDataset("val").cache_key() != ShapesDataset("val", size=64).cache_key()


# -----------------------------------------------------------------------------
# Real data: fixtures

def rgb_image(w, h, seed=0):
    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8), "RGB")


def odd_images():
    """name -> (PIL image, save kwargs): every mode load_rgb must handle."""
    p = Image.new("P", (24, 24))
    p.putpalette([0, 0, 0, 255, 0, 0] + [0] * 762)
    p.paste(1, (0, 0, 12, 24))
    p_trans = p.copy()
    p_trans.info["transparency"] = 0
    rgba = Image.new("RGBA", (24, 24), (255, 0, 0, 255))
    rgba.paste((0, 0, 0, 0), (0, 0, 24, 12))  # top half fully transparent (black underneath)
    i16 = Image.fromarray(np.full((20, 20), 128 * 257, dtype=np.uint16))  # mid grey in 16 bits
    return {
        "l.png": Image.new("L", (20, 30), 200),
        "la.png": Image.new("LA", (20, 20), (0, 0)),
        "rgba.png": rgba,
        "p.gif": p,
        "p_trans.png": p_trans,
        "cmyk.jpg": Image.new("CMYK", (30, 20), (0, 255, 255, 0)),
        "i16.png": i16,
        "wide.bmp": rgb_image(64, 16, 1),
        "tiny.webp": rgb_image(5, 7, 2),
        "UPPER.JPEG": rgb_image(40, 40, 3),
    }


def write_png(path, img):
    img.save(path)
    return open(path, "rb").read()


def make_txt_folder(root, bad=True):
    """Odd-mode images with .txt captions, plus (bad=True) three unreadable ones, plus one image without a caption."""
    os.makedirs(root, exist_ok=True)
    for name, img in odd_images().items():
        img.save(os.path.join(root, name))
        with open(os.path.join(root, os.path.splitext(name)[0] + ".txt"), "w") as f:
            f.write(f"  caption of {name}  \nsecond caption of {name}\n")
    if bad:
        with open(os.path.join(root, "corrupt.png"), "wb") as f:
            f.write(np.random.default_rng(0).integers(0, 256, 500, dtype=np.uint8).tobytes())
        good = write_png(os.path.join(root, "truncated.png"), rgb_image(40, 40))
        with open(os.path.join(root, "truncated.png"), "wb") as f:
            f.write(good[:len(good) // 2])
        os.makedirs(os.path.join(root, "dir.png"))
        for stem in ("corrupt", "truncated", "dir"):
            with open(os.path.join(root, stem + ".txt"), "w") as f:
                f.write("a caption for an unreadable image\n")
    return root


def make_coco(root, n_train=4, n_val=3):
    os.makedirs(os.path.join(root, "annotations"))
    for split, n in (("train", n_train), ("val", n_val)):
        os.makedirs(os.path.join(root, f"{split}2017"))
        ids = [1000 * (split == "val") + 7 * k + 3 for k in range(n)]
        images = [{"id": i, "file_name": f"{i:012d}.jpg", "width": 48 + 8 * k, "height": 32} for k, i in enumerate(ids)]
        for k, im in enumerate(images):
            rgb_image(48 + 8 * k, 32, k).save(os.path.join(root, f"{split}2017", im["file_name"]))
        # 1..3 captions per image, interleaved across images as in the real files; the first one is caption 0
        anns = [{"id": 10 * c + k, "image_id": ids[k], "caption": f" {split} image {k} caption {c}\n"}
                for c in range(3) for k in range(n) if c < 1 + k % 3]
        with open(os.path.join(root, "annotations", f"captions_{split}2017.json"), "w") as f:
            json.dump({"info": {}, "images": images, "annotations": anns}, f)
    return root


def check_item(item, size):
    x = item["image"]
    assert x.shape == (3, size, size) and x.dtype == torch.float32
    assert float(x.min()) >= 0.0 and float(x.max()) <= 1.0
    assert isinstance(item["caption"], str) and item["caption"] == item["caption"].strip() and item["caption"]
    assert item["captions"][0] == item["caption"] and item["attrs"] == {}


# -----------------------------------------------------------------------------
# Real data: image modes

def test_load_rgb_modes(tmp_path):
    for name, img in odd_images().items():
        path = tmp_path / name
        img.save(path)
        out = load_rgb(path, 16)
        assert out.mode == "RGB" and out.size == (16, 16), name
    px = lambda name: np.asarray(load_rgb(tmp_path / name, 16), dtype=np.float64)
    assert np.all(px("la.png") == 255)  # fully transparent -> white, not black
    rgba = px("rgba.png")
    assert np.all(rgba[:6] == 255) and np.allclose(rgba[-6:], [255, 0, 0], atol=2)  # transparent half white
    assert np.all(px("p_trans.png")[:, :6] == [255, 0, 0]) and np.all(px("p_trans.png")[:, -6:] == 255)
    assert np.all(px("p.gif")[:, -6:] == 0)  # index 0 is black when it is not marked transparent
    assert np.allclose(px("i16.png"), 128, atol=1)  # 16-bit grey rescaled, not clipped to 255
    assert np.allclose(px("l.png"), 200, atol=1)
    assert px("cmyk.jpg")[8, 8, 0] > 200 and px("cmyk.jpg")[8, 8, 1:].max() < 60  # CMYK (0,255,255,0) is red


def test_load_rgb_resize_and_crop(tmp_path):
    # a wide image: left third red, middle green, right third blue -> centre crop keeps only green
    a = np.zeros((30, 90, 3), dtype=np.uint8)
    a[:, :30, 0] = a[:, 30:60, 1] = a[:, 60:, 2] = 255
    Image.fromarray(a).save(tmp_path / "wide.png")
    out = np.asarray(load_rgb(tmp_path / "wide.png", 10))
    assert out.shape == (10, 10, 3) and np.all(out[:, 2:8, 1] == 255) and out[:, 2:8, [0, 2]].max() == 0
    Image.fromarray(a.transpose(1, 0, 2).copy()).save(tmp_path / "tall.png")
    assert np.asarray(load_rgb(tmp_path / "tall.png", 64)).shape == (64, 64, 3)  # upsampling works too


# -----------------------------------------------------------------------------
# Real data: datasets

def test_folder_txt_odd_modes_and_unreadable(tmp_path):
    root = make_txt_folder(str(tmp_path / "folder"))
    Image.new("RGB", (8, 8)).save(os.path.join(root, "nocaption.png"))
    ds = FolderCaptions(root, size=24)
    good = odd_images()
    assert len(ds) == len(good) and ds.skipped == 4  # corrupt, truncated, a directory, one without caption
    assert len(ds.skipped_examples) == 4
    joined = " ".join(ds.skipped_examples)
    for stem in ("corrupt.png", "truncated.png", "dir.png", "nocaption.png"):
        assert stem in joined
    for i in range(len(ds)):
        item = ds[i]
        check_item(item, 24)
        name = os.path.basename(ds.items[i][0])
        assert item["captions"] == [f"caption of {name}", f"second caption of {name}"]
    with pytest.raises(IndexError):
        ds[len(ds)]
    assert len(list(ds)) == len(ds)  # iteration protocol stops at IndexError


def test_folder_unreadable_count_is_three(tmp_path):
    ds = FolderCaptions(make_txt_folder(str(tmp_path / "f")), size=8)
    assert ds.skipped == 3 and len(ds) == len(odd_images())
    batch = collate([ds[i] for i in range(len(ds))])
    assert batch["image"].shape == (len(ds), 3, 8, 8)


def test_folder_jsonl(tmp_path):
    root = tmp_path / "j"
    (root / "sub").mkdir(parents=True)
    rgb_image(20, 10, 0).save(root / "a.png")
    rgb_image(10, 20, 1).save(root / "sub" / "b.jpg")
    (root / "c.png").write_bytes(b"not an image")
    lines = [{"image": "a.png", "caption": " first a "}, {"image": "sub/b.jpg", "captions": ["b1", "b2"]},
             {"image": "a.png", "caption": "second a"}, {"image": "c.png", "caption": "c"},
             {"image": "missing.png", "caption": "gone"}]
    (root / "captions.jsonl").write_text("\n".join(json.dumps(x) for x in lines) + "\n\n")
    ds = FolderCaptions(str(root), size=16)
    assert len(ds) == 2 and ds.skipped == 2  # c.png is not an image, missing.png does not exist
    by_caption = {ds[i]["caption"]: ds[i] for i in range(len(ds))}
    assert by_caption["first a"]["captions"] == ["first a", "second a"]
    assert by_caption["b1"]["captions"] == ["b1", "b2"]
    for item in by_caption.values():
        check_item(item, 16)
    (root / "captions.jsonl").write_text(json.dumps(lines[0]) + "\n{\"image\": \"a.png\", \"capt\n")
    with pytest.raises(DataError, match="line 2") as e:
        FolderCaptions(str(root), size=16)
    assert "\n" not in str(e.value) and "captions.jsonl" in str(e.value)
    (root / "captions.jsonl").write_text(json.dumps({"image": "a.png"}) + "\n")  # no caption key
    with pytest.raises(DataError, match="line 1"):
        FolderCaptions(str(root), size=16)


def test_coco(tmp_path):
    root = make_coco(str(tmp_path / "coco"))
    ann = os.path.join(root, "annotations", "captions_train2017.json")
    ds = CocoCaptions(ann, os.path.join(root, "train2017"), size=32)
    assert len(ds) == 4 and ds.skipped == 0
    for k in range(4):
        item = ds[k]
        check_item(item, 32)
        assert item["captions"] == [f"train image {k} caption {c}" for c in range(1 + k % 3)] == ds.all_captions(k)
    assert CocoCaptions(ann, size=32).items == ds.items  # image folder found beside annotations/
    # an image listed in the json but absent on disk, and one without captions: skipped and counted
    meta = json.load(open(ann))
    meta["images"].append({"id": 99999, "file_name": "absent.jpg"})
    meta["images"].append({"id": 4, "file_name": meta["images"][0]["file_name"]})
    with open(ann, "w") as f:
        json.dump(meta, f)
    ds = CocoCaptions(ann, size=32)
    assert len(ds) == 4 and ds.skipped == 2
    with open(ann, "w") as f:
        f.write('{"images": [\n  {"id": 1,\n  oops}')
    with pytest.raises(DataError, match="line 3") as e:
        CocoCaptions(ann, size=32)
    assert ann in str(e.value) and "\n" not in str(e.value)
    with open(ann, "w") as f:
        json.dump({"images": []}, f)
    with pytest.raises(DataError, match="annotations"):
        CocoCaptions(ann, size=32)


def test_coco_images_in_annotation_folder(tmp_path):
    # the json and its images in one folder ("the same folder" layout)
    rgb_image(30, 30).save(tmp_path / "x.jpg")
    with open(tmp_path / "captions_mine.json", "w") as f:
        json.dump({"images": [{"id": 1, "file_name": "x.jpg"}], "annotations": [{"image_id": 1, "caption": "x"}]}, f)
    ds = CocoCaptions(str(tmp_path / "captions_mine.json"), size=8)
    assert len(ds) == 1 and ds[0]["caption"] == "x"


def test_errors_are_one_line_and_name_the_path(tmp_path):
    missing = str(tmp_path / "nope")
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "readme.md").write_text("no images here")
    nocap = tmp_path / "nocap"
    nocap.mkdir()
    rgb_image(8, 8).save(nocap / "a.png")
    allbad = tmp_path / "allbad"
    allbad.mkdir()
    (allbad / "a.png").write_bytes(b"garbage")
    (allbad / "a.txt").write_text("cap")
    cases = [(lambda: FolderCaptions(missing, 32), missing), (lambda: open_dataset(missing), missing),
             (lambda: FolderCaptions(str(empty), 32), str(empty)), (lambda: open_dataset(str(empty)), str(empty)),
             (lambda: FolderCaptions(str(nocap), 32), str(nocap)), (lambda: FolderCaptions(str(allbad), 32), str(allbad)),
             (lambda: CocoCaptions(missing + ".json"), missing + ".json")]
    for make, path in cases:
        with pytest.raises(DataError) as e:
            make()
        msg = str(e.value)
        assert path in msg and "\n" not in msg, msg
    assert issubclass(DataError, Exception)


def test_getitem_falls_back_when_image_breaks_later(tmp_path):
    root = tmp_path / "f"
    root.mkdir()
    for k in range(3):
        rgb_image(12, 12, k).save(root / f"{k}.png")
        (root / f"{k}.txt").write_text(f"cap {k}")
    ds = FolderCaptions(str(root), size=8)
    (root / "1.png").write_bytes(b"broken after the check")
    with pytest.warns(UserWarning, match="1.png"):
        item = ds[1]
    assert item["caption"] == "cap 2"
    check_item(item, 8)


# -----------------------------------------------------------------------------
# open_dataset, splits, caching, samplers

def test_open_dataset_dispatch(tmp_path):
    assert isinstance(open_dataset("shapes", "val", size=16, n=10), ShapesDataset)
    s = open_dataset("shapes", "test", size=16, seed=3, n=10)
    assert (s.split, s.size, s.seed, len(s)) == ("test", 16, 3, 10)

    root = make_coco(str(tmp_path / "coco"))
    train_json = os.path.join(root, "annotations", "captions_train2017.json")
    for spec in (train_json, root):
        tr, va, te = (open_dataset(spec, sp, size=16) for sp in ("train", "val", "test"))
        assert isinstance(tr, CocoCaptions) and len(tr) == 4 and len(va) == 3
        assert tr.where.endswith("captions_train2017.json") and va.where.endswith("captions_val2017.json")
        assert te.items == va.items  # COCO has no public test captions: test falls back to val
        assert all("train2017" in p for p, _ in tr.items) and all("val2017" in p for p, _ in va.items)
    assert len(open_dataset(root, "train", size=16, n=2)) == 2

    folder = make_txt_folder(str(tmp_path / "folder"), bad=False)
    parts = {sp: open_dataset(folder, sp, size=16) for sp in ("train", "val", "test")}
    assert all(isinstance(p, FolderCaptions) and len(p) >= 1 for p in parts.values())
    paths = [set(p for p, _ in parts[sp].items) for sp in ("train", "val", "test")]
    assert sum(map(len, paths)) == len(odd_images()) == len(set.union(*paths))  # disjoint and complete
    again = open_dataset(folder, "val", size=16)
    assert again.items == parts["val"].items  # deterministic
    assert len({parts[sp].cache_key() for sp in parts}) == 3


def test_open_dataset_split_subfolders(tmp_path):
    for sp, n in (("train", 3), ("val", 2)):
        d = tmp_path / "ds" / sp
        d.mkdir(parents=True)
        for k in range(n):
            rgb_image(10, 10, k).save(d / f"{k}.png")
            (d / f"{k}.txt").write_text(f"{sp} {k}")
    tr, va, te = (open_dataset(str(tmp_path / "ds"), sp, size=8) for sp in ("train", "val", "test"))
    assert (len(tr), len(va), len(te)) == (3, 2, 2)
    assert tr[0]["caption"].startswith("train") and te[0]["caption"].startswith("val")


def test_split_items_rule():
    names = [f"img_{k:05d}.jpg" for k in range(5000)]
    masks = {s: real_data.split_items(names, s) for s in ("train", "val", "test")}
    counts = {s: sum(m) for s, m in masks.items()}
    assert sum(counts.values()) == 5000 and all(sum(t) == 1 for t in zip(*masks.values()))
    assert 0.97 < counts["train"] / 5000 < 0.99 and 20 < counts["val"] < 80 and 20 < counts["test"] < 80
    # adding files never moves existing ones (for splits that are not at their minimum of one item)
    assert real_data.split_items(names + ["new.jpg"], "val")[:5000] == masks["val"]
    for n in (3, 4, 7):
        few = [f"{k}.png" for k in range(n)]
        assert all(sum(real_data.split_items(few, s)) >= 1 for s in ("train", "val", "test"))


def test_image_tensor_cache_for_folder(tmp_path):
    ds = FolderCaptions(make_txt_folder(str(tmp_path / "f"), bad=False), size=8)
    cache = str(tmp_path / "cache")
    x = data.image_tensor(ds, cache)
    assert x.shape == (len(ds), 3, 8, 8) and x.dtype == torch.uint8
    assert os.listdir(cache) == [ds.cache_key() + ".npy"] and "/" not in ds.cache_key()
    assert torch.equal(data.image_tensor(ds, cache), x)
    assert ds.cache_key() != FolderCaptions(ds.where, size=16).cache_key()


def test_distributed_sampler_disjoint():
    ds = ShapesDataset("train", size=16, n=100)
    for shuffle in (True, False):
        parts = [list(torch.utils.data.DistributedSampler(ds, num_replicas=2, rank=r, shuffle=shuffle, seed=5))
                 for r in range(2)]
        assert len(parts[0]) == len(parts[1]) == 50
        assert not set(parts[0]) & set(parts[1]) and set(parts[0]) | set(parts[1]) == set(range(100))


def test_distributed_sampler_real_dataset(tmp_path):
    ds = FolderCaptions(make_txt_folder(str(tmp_path / "f"), bad=False), size=8)
    assert len(ds) % 2 == 0
    seen = []
    for r in range(2):
        sampler = torch.utils.data.DistributedSampler(ds, num_replicas=2, rank=r, shuffle=True, seed=1)
        loader = torch.utils.data.DataLoader(ds, batch_size=2, sampler=sampler, collate_fn=collate)
        for batch in loader:
            assert batch["image"].shape[1:] == (3, 8, 8)
            seen += batch["caption"]
    assert len(seen) == len(set(seen)) == len(ds)


def test_collate_mixed_batch(tmp_path):
    folder = FolderCaptions(make_txt_folder(str(tmp_path / "f"), bad=False), size=32)
    shapes = ShapesDataset("val", size=32)
    items = [shapes[0], folder[0], shapes[1], folder[1]]
    batch = collate(items)
    assert batch["image"].shape == (4, 3, 32, 32) and batch["image"].dtype == torch.float32
    assert batch["caption"] == [it["caption"] for it in items]
    assert [len(c) for c in batch["captions"]] == [data.CAPTIONS_PER_IMAGE, 2, data.CAPTIONS_PER_IMAGE, 2]
    assert batch["attrs"][1] == {} and batch["attrs"][0] == shapes[0]["attrs"]
    assert torch.equal(batch["image"][1], folder[0]["image"])


# -----------------------------------------------------------------------------
# Colour and blur transforms (the tokenizer's augmentation, evaluate.py's perturbed test copies)

def test_hue_rotation_turns_colours_and_keeps_greys():
    R = data.hue_rotation(torch.tensor([0.0, 120.0, 240.0, 360.0, 77.0]))
    assert torch.allclose(R[0], torch.eye(3), atol=1e-6) and torch.allclose(R[3], torch.eye(3), atol=1e-5)
    assert torch.allclose(R @ R.transpose(1, 2), torch.eye(3).expand(5, 3, 3), atol=1e-5)  # rotations
    grey = torch.full((5, 3, 4, 4), 235 / 255)
    assert torch.allclose(data.rotate_hue(grey, torch.tensor([0.0, 120.0, 240.0, 360.0, 77.0])), grey, atol=1e-6)
    red = torch.tensor([1.0, 0.0, 0.0]).view(1, 3, 1, 1)
    assert torch.allclose(data.rotate_hue(red, torch.tensor([120.0])).flatten(), torch.tensor([0.0, 1.0, 0.0]), atol=1e-5)
    assert torch.allclose(data.rotate_hue(red, torch.tensor([240.0])).flatten(), torch.tensor([0.0, 0.0, 1.0]), atol=1e-5)
    x = torch.rand(64, 3, 8, 8)
    turned = data.random_hue(x, 0.5, torch.Generator().manual_seed(0))
    same = (turned - x).abs().flatten(1).amax(1) < 1e-6
    assert 16 < same.sum() < 48  # about half the images turn, the rest are untouched
    assert data.random_hue(x, 0.0).equal(x)


def test_gaussian_blur_spreads_a_pixel_and_keeps_the_light():
    x = torch.zeros(3, 3, 15, 15)
    x[:, :, 7, 7] = 1.0
    y = data.gaussian_blur(x, torch.tensor([0.0, 0.8, 2.0]))
    assert torch.allclose(y[0], x[0], atol=1e-6)  # sigma 0: unchanged
    assert torch.allclose(y.sum((1, 2, 3)), x.sum((1, 2, 3)), atol=1e-4)  # normalised kernels
    assert y[1, 0, 7, 7] > y[2, 0, 7, 7] > 0 and y[2, 0, 7, 10] > y[1, 0, 7, 10]  # wider sigma, wider spread


def test_render_with_another_background():
    attrs = {"shape": "square", "color": "red", "size": "small", "position": "top left"}
    img = np.asarray(data.render(attrs, size=32, background=(128, 128, 128)))
    assert tuple(img[31, 31]) == (128, 128, 128) and tuple(img[7, 7]) == data.COLORS["red"]
    assert tuple(np.asarray(data.render(attrs, size=32))[31, 31]) == data.BACKGROUND


def test_attrs_without_rendering_are_the_samples_attrs():
    ds = data.ShapesDataset("val", n=20, seed=3)
    assert all(ds.attrs(i) == ds[i]["attrs"] for i in range(20))
