"""
Real image-caption data for flowtok: COCO captions and plain image-caption folders, with the same sample dicts as
data.py's Shapes (data.py describes them), and open_dataset(spec): any --data, Shapes included.

Bad input surfaces as a DataError (one line: the path and what to do) when the dataset is unusable, or as a count in
`dataset.skipped` (+ a few `skipped_examples`) for images dropped at construction: train.py reports them at start
instead of dying hours into a run.
"""
import glob
import hashlib
import json
import os
import re
import warnings
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch
from PIL import Image, ImageOps

from data import ShapesDataset, pil_to_tensor

REAL_SPLITS = ("train", "val", "test")  # real data has no judge split

IMAGE_EXTS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp")
FOLDER_SPLIT = {0: "val", 1: "test"}  # sha1(relative path) % 100 -> split; every other bucket is train (98/1/1)


class DataError(Exception):
    """A dataset the user must fix. The message is a single line naming the path and the remedy."""


def load_rgb(path, size):
    """Any image file -> PIL RGB, size x size: shorter side resized to `size` (bicubic), then centre-cropped."""
    with Image.open(path) as img:
        if img.format == "JPEG":
            img.draft(img.mode, (size, size))  # decode at 1/2..1/8 scale when that still covers `size`: much faster
        img = ImageOps.exif_transpose(img)  # phone photos store their rotation in EXIF; also forces the decode
    if img.mode.startswith("I") or img.mode == "F":
        # 16/32-bit grey (16-bit PNGs, TIFFs): convert("L") would clip at 255 instead of rescaling
        a = np.asarray(img, dtype=np.float64)
        scale = 1 / 257 if img.mode.startswith("I;16") or a.max() > 255 else 255 if img.mode == "F" and a.max() <= 1 else 1
        img = Image.fromarray(np.clip(a * scale, 0, 255).round().astype(np.uint8), "L")
    if img.mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in img.info:
        # transparent pixels often hold garbage colours: composite onto white, as a viewer shows them
        rgba, img = img.convert("RGBA"), Image.new("RGBA", img.size, (255, 255, 255, 255))
        img.alpha_composite(rgba)
    # resizing the central square is exactly "shorter side to size, then centre crop", without materialising a
    # huge intermediate image for extreme aspect ratios
    img, (w, h) = img.convert("RGB"), img.size
    m = min(w, h)
    return img.resize((size, size), Image.BICUBIC, box=((w - m) / 2, (h - m) / 2, (w + m) / 2, (h + m) / 2))


def read_image(path, size):
    """An image file -> (3, size, size) in [0, 1], as training sees images (sample.py --image); a DataError of one
    line when it cannot be read."""
    if os.path.isdir(path):
        raise DataError(f"--image {path} is a directory, not an image file")
    if not os.path.exists(path):
        raise DataError(f"--image {path}: no such file")
    try:
        return pil_to_tensor(load_rgb(path, size))
    except Exception as e:  # PIL raises OSError, SyntaxError, ValueError, DecompressionBombError, ...
        raise DataError(f"--image {path} is not a readable image ({type(e).__name__}: {str(e)[:80]})") from None


def check_image(path):
    """None if `path` opens as an image, else a one-line reason. verify() does not decode pixels, so 100k images
    take seconds; it reads a whole PNG (chunk CRCs catch truncation) but only a JPEG's headers, so a truncated JPEG
    passes here and is caught by CaptionFiles.__getitem__'s fallback instead."""
    try:
        with Image.open(path) as img:
            img.verify()
    except Exception as e:  # PIL raises OSError, SyntaxError, ValueError, DecompressionBombError, ...
        return f"{type(e).__name__}: {e}".replace("\n", " ")[:160]


def split_items(rel_paths, split):
    """Which items belong to `split`, for data without explicit splits: sha1(relative path) % 100 == 0 -> val,
    1 -> test, else train (98/1/1). Deterministic, and adding files never moves existing ones. With >= 3 items
    val and test get at least one each: the train item with the smallest hash moves over."""
    h = [int(hashlib.sha1(p.encode("utf-8")).hexdigest()[:15], 16) for p in rel_paths]
    out = [FOLDER_SPLIT.get(x % 100, "train") for x in h]
    for s in ("val", "test") if len(out) >= 3 else ():
        train = [i for i, o in enumerate(out) if o == "train"]
        if s not in out and len(train) > 1:
            out[min(train, key=h.__getitem__)] = s
    return [o == split for o in out]


class CaptionFiles(torch.utils.data.Dataset):
    """(image path, captions) pairs, every image checked once at construction. CocoCaptions and FolderCaptions
    differ only in how they find the pairs. split=None keeps all pairs; n keeps the first n readable ones."""

    def _setup(self, kind, where, items, size, split, n, skipped):
        self.kind, self.where, self.size, self.split = kind, where, size, split
        bad, self.items = list(skipped), []  # skipped: (path, reason) dropped earlier, e.g. for lack of a caption
        with ThreadPoolExecutor(8) as pool:  # verify is I/O-bound: threads hide disk / network latency
            for start in range(0, len(items), 512):
                chunk = items[start:start + 512]
                for item, why in zip(chunk, pool.map(lambda it: check_image(it[0]), chunk)):
                    (bad.append((item[0], why)) if why else self.items.append(item))
                if n is not None and len(self.items) >= n:
                    break
        self.items, self.skipped = self.items[:n], len(bad)
        self.skipped_examples = [f"{p} ({why})" for p, why in bad[:5]]
        if not self.items:
            eg = f", e.g. {self.skipped_examples[0]}" if bad else ""
            raise DataError(f"no readable images in {where} (split {split or 'all'}, {len(bad)} skipped{eg}): "
                            f"check the image files and paths")

    def __len__(self):
        return len(self.items)

    def caption(self, i):
        """The training caption of item i (its first), without decoding the image."""
        return self.items[i][1][0]

    def all_captions(self, i):
        """All reference captions of item i, without decoding the image."""
        return list(self.items[i][1])

    def __getitem__(self, i):
        if not -len(self) <= i < len(self):
            raise IndexError(i)
        for k in range(len(self)):  # a file that passed the check can still fail to decode: use the next one
            path, captions = self.items[(i + k) % len(self)]
            try:
                img = load_rgb(path, self.size)
            except Exception as e:
                warnings.warn(f"unreadable image {path} ({type(e).__name__}: {e}); using the next one")
                continue
            return {"image": pil_to_tensor(img), "caption": captions[0], "captions": list(captions), "attrs": {}}
        raise DataError(f"no image in {self.where} can be decoded: check the files")

    def cache_key(self):
        digest = hashlib.sha1("\n".join([os.path.abspath(self.where)] + [p for p, _ in self.items]).encode())
        name = re.sub(r"[^A-Za-z0-9_.-]+", "_", os.path.basename(os.path.normpath(self.where)))
        return f"{self.kind}-{name}-{digest.hexdigest()[:10]}-{self.split or 'all'}-{self.size}-{len(self)}"


class CocoCaptions(CaptionFiles):
    """COCO captions: {"images": [{id, file_name}], "annotations": [{image_id, caption}]}, one item per image,
    captions in file order. image_dir=None: the folder named after the json (captions_val2017.json -> val2017)
    beside the annotations folder (the official layout), inside it, or the annotations folder itself."""

    def __init__(self, ann_file, image_dir=None, size=32, split=None, n=None):
        try:
            with open(ann_file, encoding="utf-8") as f:
                data = json.load(f)
            captions = {}
            for a in data["annotations"]:
                if str(a["caption"]).strip():
                    captions.setdefault(a["image_id"], []).append(str(a["caption"]).strip())
            images = [(im["file_name"], captions.get(im["id"], [])) for im in data["images"]]
        except FileNotFoundError:
            raise DataError(f"COCO annotation file not found: {ann_file}; pass an existing captions_*.json") from None
        except json.JSONDecodeError as e:
            raise DataError(f"malformed JSON in {ann_file} at line {e.lineno}: {e.msg}; fix or re-download it") from None
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise DataError(f"{ann_file} is not a COCO captions file ({type(e).__name__}: {e}); expected "
                            f"'images' [{{id, file_name}}] and 'annotations' [{{image_id, caption}}]") from None
        if split is not None:
            images = [im for im, keep in zip(images, split_items([f for f, _ in images], split)) if keep]
        if image_dir is None:
            ann_dir = os.path.dirname(os.path.abspath(ann_file))
            stem = os.path.splitext(os.path.basename(ann_file))[0].split("captions_", 1)[-1]
            dirs = [os.path.join(os.path.dirname(ann_dir), stem), os.path.join(ann_dir, stem), ann_dir]
            image_dir = next((d for d in dirs if any(os.path.isfile(os.path.join(d, f)) for f, _ in images[:20])),
                             None)
            if image_dir is None:
                raise DataError(f"images of {ann_file} not found in {' or '.join(dirs)}: put them in {dirs[0]}")
        items = [(os.path.join(image_dir, f), caps) for f, caps in images]
        self._setup("coco", ann_file, [it for it in items if it[1]], size, split, n,
                    [(p, "no caption") for p, caps in items if not caps])


class FolderCaptions(CaptionFiles):
    """A plain folder: captions.jsonl (lines {"image": relative path, "caption": str} or {"captions": [str]};
    lines naming the same image merge) or else images (searched recursively) each with a same-named .txt of
    one caption per line. Images without captions are skipped (counted in every split: a folder problem)."""

    def __init__(self, root, size=32, split=None, n=None):
        if not os.path.isdir(root):
            raise DataError(f"data folder not found: {root}; pass an existing folder of images with captions")
        jsonl = os.path.join(root, "captions.jsonl")
        found = read_jsonl(jsonl) if os.path.isfile(jsonl) else scan_txt(root)
        missing = [(os.path.join(root, r), "no caption") for r, caps in found.items() if not caps]
        rel = [r for r, caps in found.items() if caps]
        if not rel:
            raise DataError(f"no captioned images in {root} ({len(missing)} images without captions): add "
                            f"captions.jsonl or a same-named .txt caption file next to each image")
        if split is not None:
            rel = [r for r, keep in zip(rel, split_items([r.replace(os.sep, "/") for r in rel], split)) if keep]
        self._setup("folder", root, [(os.path.join(root, r), found[r]) for r in rel], size, split, n, missing)


def read_jsonl(path):
    merged = {}
    with open(path, encoding="utf-8", errors="replace") as f:
        for lineno, line in enumerate(f, 1):
            try:
                if line.strip():
                    rec = json.loads(line)
                    caps = [rec["caption"]] if "caption" in rec else list(rec["captions"])
                    merged.setdefault(os.path.normpath(rec["image"]), []).extend(
                        str(c).strip() for c in caps if str(c).strip())
            except (ValueError, KeyError, TypeError) as e:
                raise DataError(f"malformed line {lineno} of {path} ({type(e).__name__}: {e}); each line must be "
                                f'{{"image": "relative/path.jpg", "caption": "..."}}') from None
    return merged


def scan_txt(root):
    """{relative image path: captions from its .txt}. A folder named like an image is listed too, so that it
    fails the image check and is reported rather than silently ignored."""
    found = {}
    for d, dirs, files in os.walk(root):
        dirs[:] = sorted(x for x in dirs if not x.startswith("."))
        txt = {os.path.splitext(f)[0]: os.path.join(d, f) for f in files if f.lower().endswith(".txt")}
        for f in sorted(f for f in files + dirs if f.lower().endswith(IMAGE_EXTS)):
            t = txt.get(os.path.splitext(f)[0])
            caps = open(t, encoding="utf-8", errors="replace").read().splitlines() if t else []
            found[os.path.relpath(os.path.join(d, f), root)] = [c.strip() for c in caps if c.strip()]
    return found


def check_data_path(spec):
    """The one-line error for a --data that names no file or folder (train.py checks it before any work)."""
    if spec != "shapes" and not os.path.exists(os.path.expanduser(str(spec))):
        raise DataError(f"data path not found: {spec}; pass 'shapes', a COCO captions_*.json or a caption folder")


def open_real(spec, split="train", size=32, n=None):
    """open_dataset for a COCO captions_*.json, a COCO root or an image-caption folder (its docstring says how)."""
    if split not in REAL_SPLITS:
        raise ValueError(f"unknown split {split!r}; use one of {sorted(REAL_SPLITS)}")
    path, wanted = os.path.expanduser(str(spec)), (split, "val") if split == "test" else (split,)
    split_of = lambda p: next((s for s in REAL_SPLITS if s in os.path.basename(p).lower()), None)
    check_data_path(spec)
    if os.path.isfile(path):
        if split_of(path) is None:
            return CocoCaptions(path, None, size, split=split, n=n)
        siblings = glob.glob(os.path.join(os.path.dirname(os.path.abspath(path)), "captions_*.json"))
        jsons = sorted(j for j in siblings if split_of(j)) + [path]  # the file named last wins over siblings
    else:
        jsons = sorted(glob.glob(os.path.join(path, "annotations", "captions_*.json")) +
                       glob.glob(os.path.join(path, "captions_*.json")))
    if jsons:
        by_split = {split_of(j): j for j in jsons}  # sorted: the newest year wins (captions_train2017 > 2014)
        if any(s in by_split for s in wanted):
            return CocoCaptions(by_split[next(s for s in wanted if s in by_split)], None, size, n=n)
        if None in by_split:
            return CocoCaptions(by_split[None], None, size, split=split, n=n)
        raise DataError(f"no captions json for split '{split}' beside {path}: add captions_{split}2017.json")
    subs = [s for s in REAL_SPLITS if os.path.isdir(os.path.join(path, s))]
    if subs and any(s in subs for s in wanted):
        return FolderCaptions(os.path.join(path, next(s for s in wanted if s in subs)), size, n=n)
    if subs:
        raise DataError(f"{path} has {'/'.join(subs)} subfolders but no '{split}' one: add {os.path.join(path, split)}")
    return FolderCaptions(path, size, split=split, n=n)


def open_dataset(spec, split="train", size=32, seed=0, n=None):
    """"shapes", a COCO captions_*.json, a COCO root (annotations/captions_*.json) or an image-caption folder.

    COCO: the json whose name holds `split` (test falls back to val: COCO has no public test captions); a json
    without a split in its name is hash-split by split_items. Folders: train/val/test subfolders if
    present (test falls back to val), else split_items (98/1/1 by hash of the relative path).
    `seed`: Shapes only.
    """
    if spec == "shapes":
        return ShapesDataset(split, size, n, seed)
    return open_real(spec, split, size, n)
