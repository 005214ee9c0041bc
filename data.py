"""
Data for flowtok: the synthetic Shapes dataset (the embedded default) and real image-caption sets.

Every dataset here yields dicts with the same keys, so the training code never asks where data came from:
    image    float tensor (3, H, W) in [0, 1]       -- the one image convention of the whole repository
    caption  str                                     -- the caption used for training
    captions list[str]                               -- all reference captions (COCO has ~5 per image)
    attrs    dict[str, str]                          -- Shapes attributes; {} for real data
Use `collate` as the DataLoader's collate_fn (default collation cannot batch variable-length lists).
"""
import os
import re
import glob
import json
import hashlib
import warnings
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageOps

# -----------------------------------------------------------------------------
# Shapes: attribute vocabulary (names are part of the public interface: evaluate.py and tests use them)

SHAPES = ("circle", "square", "triangle")
COLORS = {  # name -> RGB
    "red": (220, 40, 40),
    "green": (40, 170, 60),
    "blue": (40, 80, 225),
    "yellow": (235, 205, 30),
    "purple": (140, 55, 185),
    "orange": (245, 130, 25),
}
SIZES = ("small", "large")
POSITIONS = ("top left", "top", "top right", "left", "center", "right", "bottom left", "bottom", "bottom right")
ATTRIBUTES = {"shape": SHAPES, "color": tuple(COLORS), "size": SIZES, "position": POSITIONS}

# (shape, color) pairs that never occur in the train split but do occur in val and test: the model must
# compose "triangle" and "blue" (each seen many times) without ever having seen a blue triangle.
HELDOUT_PAIRS = frozenset({("triangle", "blue"), ("circle", "yellow"), ("square", "purple")})

BACKGROUND = (235, 235, 235)  # plain light-grey background
SPLIT_SIZES = {"train": 50_000, "val": 1_000, "test": 1_000, "judge": 20_000}
# separate random streams => disjoint splits. "judge" trains evaluate.py's Shapes judge (judge.py): every
# composition, held-out pairs included, and never an image any model trains or is tested on.
SPLIT_IDS = {"train": 0, "val": 1, "test": 2, "judge": 3}
REAL_SPLITS = ("train", "val", "test")  # real data has no judge split

# Geometry, as fractions of the image side. Grid cell centres at 22% / 50% / 78%. (Bigger objects, radius
# 0.15 / 0.23 on a 25 / 50 / 75% grid, made the CPU tokenizer learn colour much later: README, Design choices.)
GRID = (0.22, 0.5, 0.78)
RADIUS = {"small": 0.10, "large": 0.17}
POS_JITTER = 0.03  # uniform +- fraction of the side
SIZE_JITTER = 0.10  # uniform +- fraction of the radius
ROT_JITTER = 0.0  # degrees, squares and triangles; 0: upright, to keep edges cheap for the CPU tokenizer
COLOR_JITTER = 12  # uniform +- per RGB channel
SUPERSAMPLE = 4  # draw at 4x and downsample: anti-aliased edges
CAPTIONS_PER_IMAGE = 5  # reference captions per Shapes image, as COCO has ~5: the first is the training caption


# Changes whenever the pictures would: part of every cache key, so no stale renders or judges are ever reused.
SHAPES_VERSION = hashlib.sha1(repr((SHAPES, COLORS, SIZES, POSITIONS, sorted(HELDOUT_PAIRS), BACKGROUND, GRID, RADIUS,
                                    POS_JITTER, SIZE_JITTER, ROT_JITTER, COLOR_JITTER, SUPERSAMPLE)).encode()).hexdigest()[:6]


def sample_params(split, index, seed=0):
    """The full description of Shapes sample `index` of `split`: attributes plus continuous jitter."""
    rng = np.random.default_rng([seed, SPLIT_IDS[split], index])
    while True:
        attrs = {k: str(v[rng.integers(len(v))]) for k, v in ATTRIBUTES.items()}
        if split != "train" or (attrs["shape"], attrs["color"]) not in HELDOUT_PAIRS:
            break
    jitter = {
        "dx": rng.uniform(-POS_JITTER, POS_JITTER), "dy": rng.uniform(-POS_JITTER, POS_JITTER),
        "scale": rng.uniform(1 - SIZE_JITTER, 1 + SIZE_JITTER), "rot": rng.uniform(-ROT_JITTER, ROT_JITTER),
        "rgb": rng.integers(-COLOR_JITTER, COLOR_JITTER + 1, size=3).tolist(),
        "template": int(rng.integers(1 << 30)),
    }
    return attrs, jitter


def render(attrs, jitter=None, size=32):
    """Draw one Shapes image (PIL RGB, size x size). `jitter=None` draws the canonical, centred object."""
    j = jitter or {"dx": 0.0, "dy": 0.0, "scale": 1.0, "rot": 0.0, "rgb": [0, 0, 0]}
    S = size * SUPERSAMPLE
    img = Image.new("RGB", (S, S), BACKGROUND)
    draw = ImageDraw.Draw(img)
    row, col = divmod(POSITIONS.index(attrs["position"]), 3)
    cx, cy = (GRID[col] + j["dx"]) * S, (GRID[row] + j["dy"]) * S
    r = RADIUS[attrs["size"]] * j["scale"] * S
    rgb = tuple(int(np.clip(c + d, 0, 255)) for c, d in zip(COLORS[attrs["color"]], j["rgb"]))
    if attrs["shape"] == "circle":
        draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=rgb)
    else:
        # square: 4 corners at radius r (side r*sqrt2); triangle: 3 corners, pointing up, centroid at (cx, cy)
        n, r_poly = (4, r * 1.05) if attrs["shape"] == "square" else (3, r * 1.25)
        start = 45.0 if n == 4 else -90.0
        angles = np.deg2rad(start + j["rot"] + np.arange(n) * 360.0 / n)
        draw.polygon([(cx + r_poly * np.cos(a), cy + r_poly * np.sin(a)) for a in angles], fill=rgb)
    return img.resize((size, size), Image.BOX)


# -----------------------------------------------------------------------------
# Shapes: captions (several templates and synonyms, varied word order, every attribute always stated)

SIZE_WORDS = {"small": ("small", "tiny", "little"), "large": ("large", "big")}
SHAPE_WORDS = {"circle": ("circle", "disc"), "square": ("square", "box"), "triangle": ("triangle",)}
POSITION_PHRASES = {
    "top left": ("in the top left", "at the top left", "in the upper left corner"),
    "top": ("at the top", "at the top center", "in the upper middle"),
    "top right": ("in the top right", "at the top right", "in the upper right corner"),
    "left": ("on the left", "at the middle left", "on the left side"),
    "center": ("in the center", "in the middle", "at the center"),
    "right": ("on the right", "at the middle right", "on the right side"),
    "bottom left": ("in the bottom left", "at the bottom left", "in the lower left corner"),
    "bottom": ("at the bottom", "at the bottom center", "in the lower middle"),
    "bottom right": ("in the bottom right", "at the bottom right", "in the lower right corner"),
}
TEMPLATES = (
    "a {size} {color} {shape} {pos}",
    "{pos} there is a {size} {color} {shape}",
    "a {color} {shape}, {size}, {pos}",
    "{pos}, a {color} {shape} that is {size}",
    "there is a {size} {shape} {pos} and it is {color}",
    "a {shape} {pos}, {size} and {color}",
)


def make_caption(attrs, rng=None):
    """A caption for `attrs`; rng=None gives the canonical first template with the first synonyms."""
    pick = (lambda xs: xs[0]) if rng is None else (lambda xs: xs[rng.integers(len(xs))])
    return pick(TEMPLATES).format(
        size=pick(SIZE_WORDS[attrs["size"]]), color=attrs["color"], shape=pick(SHAPE_WORDS[attrs["shape"]]),
        pos=pick(POSITION_PHRASES[attrs["position"]]))


def parse_caption(text):
    """Read Shapes attributes back from free text (a generated caption). Missing attributes map to None."""
    words = re.findall(r"[a-z]+", text.lower())
    find = lambda table: next((k for k, syns in table.items() if any(s in words for s in syns)), None)
    vert = "top" if ({"top", "upper"} & set(words)) else "bottom" if ({"bottom", "lower"} & set(words)) else ""
    horiz = "left" if "left" in words else "right" if "right" in words else ""
    pos = (vert + " " + horiz).strip()
    if not pos:
        pos = "center" if ({"center", "middle", "centre"} & set(words)) else None
    return {"shape": find(SHAPE_WORDS), "color": find({c: (c,) for c in COLORS}), "size": find(SIZE_WORDS),
            "position": pos}


# -----------------------------------------------------------------------------
# Shapes: the dataset

class ShapesDataset(torch.utils.data.Dataset):
    """Sample i of a split is a pure function of (seed, split, i): no files, identical on every machine."""

    def __init__(self, split="train", size=32, n=None, seed=0):
        if split not in SPLIT_IDS:
            raise ValueError(f"unknown Shapes split {split!r}; use one of {sorted(SPLIT_IDS)}")
        self.split, self.size, self.seed = split, size, seed
        self.n = SPLIT_SIZES[split] if n is None else n
        self.skipped, self.skipped_examples = 0, []  # interface shared with real data (renders never fail)

    def __len__(self):
        return self.n

    def caption(self, i):
        """The training caption of sample i, without rendering its image."""
        attrs, jitter = sample_params(self.split, i, self.seed)
        return make_caption(attrs, np.random.default_rng(jitter["template"]))

    def all_captions(self, i):
        """All CAPTIONS_PER_IMAGE reference captions of sample i (the first is `caption(i)`): independent wordings
        of the same attributes, which may repeat."""
        attrs, jitter = sample_params(self.split, i, self.seed)
        seeds = [jitter["template"]] + [[jitter["template"], k] for k in range(1, CAPTIONS_PER_IMAGE)]
        return [make_caption(attrs, np.random.default_rng(seed)) for seed in seeds]

    def sample(self, i):
        attrs, jitter = sample_params(self.split, i, self.seed)
        return render(attrs, jitter, self.size), self.all_captions(i), attrs

    def __getitem__(self, i):
        img, captions, attrs = self.sample(i)
        return {"image": pil_to_tensor(img), "caption": captions[0], "captions": captions, "attrs": attrs}

    def cache_key(self):
        return f"shapes{SHAPES_VERSION}-{self.split}-{self.size}-{self.n}-{self.seed}"


def pil_to_tensor(img):
    """PIL RGB -> float tensor (3, H, W) in [0, 1]."""
    return torch.from_numpy(np.asarray(img, dtype=np.uint8).copy()).permute(2, 0, 1).float().div_(255.0)


def collate(batch):
    """Stack images; keep strings and attribute dicts as lists."""
    return {"image": torch.stack([b["image"] for b in batch]),
            "caption": [b["caption"] for b in batch],
            "captions": [b["captions"] for b in batch],
            "attrs": [b["attrs"] for b in batch]}


def image_tensor(dataset, cache_dir=None, desc="images"):
    """All images of a dataset as one uint8 tensor (N, 3, H, W), cached on disk when cache_dir is given.

    Small-image training is bound by Python per-sample overhead, not arithmetic: one uint8 tensor turns an
    epoch of loading into a single index operation. The cache is memory-mapped, so a large real dataset
    (COCO at 256 px is ~23 GB) is read from disk page by page instead of filling RAM.
    """
    shape = (len(dataset), 3, dataset.size, dataset.size)
    if cache_dir is None:
        out = np.empty(shape, dtype=np.uint8)
    else:
        path = os.path.join(cache_dir, dataset.cache_key() + ".npy")
        if os.path.exists(path):
            return torch.from_numpy(np.load(path, mmap_mode="c"))  # copy-on-write: writable, file untouched
        os.makedirs(cache_dir, exist_ok=True)
        tmp = path + f".tmp{os.getpid()}.npy"
        out = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.uint8, shape=shape)
    from tqdm import tqdm
    for i in tqdm(range(len(dataset)), desc=f"preparing {desc}", leave=False, mininterval=2.0):
        out[i] = (dataset[i]["image"] * 255.0).round().byte().numpy()
    if cache_dir is None:
        return torch.from_numpy(out)
    out.flush()
    del out
    os.replace(tmp, path)  # atomic: a killed run never leaves half a cache behind
    return torch.from_numpy(np.load(path, mmap_mode="c"))



# -----------------------------------------------------------------------------
# Real data: COCO captions and plain image-caption folders
#
# Bad input surfaces as a DataError (one line: the path and what to do) when the dataset is unusable, or as a count
# in `dataset.skipped` (+ a few `skipped_examples`) for images dropped at construction: train.py reports them at
# start instead of dying hours into a run.

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


def open_dataset(spec, split="train", size=32, seed=0, n=None):
    """"shapes", a COCO captions_*.json, a COCO root (annotations/captions_*.json) or an image-caption folder.

    COCO: the json whose name holds `split` (test falls back to val: COCO has no public test captions); a json
    without a split in its name is hash-split by split_items. Folders: train/val/test subfolders if present
    (test falls back to val), else split_items (98/1/1 by hash of the relative path). `seed`: Shapes only.
    """
    if spec == "shapes":
        return ShapesDataset(split, size, n, seed)
    if split not in REAL_SPLITS:
        raise ValueError(f"unknown split {split!r}; use one of {sorted(REAL_SPLITS)}")
    path, wanted = os.path.expanduser(str(spec)), (split, "val") if split == "test" else (split,)
    split_of = lambda p: next((s for s in REAL_SPLITS if s in os.path.basename(p).lower()), None)
    if not os.path.exists(path):
        raise DataError(f"data path not found: {path}; pass 'shapes', a COCO captions_*.json or a caption folder")
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
