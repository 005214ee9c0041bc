"""
Data for flowtok: the synthetic Shapes dataset (the embedded default); real image-caption sets, and open_dataset
(any --data), are in real_data.py.

Every dataset here yields dicts with the same keys, so the training code never asks where data came from:
    image    float tensor (3, H, W) in [0, 1]       -- the one image convention of the whole repository
    caption  str                                     -- the caption used for training
    captions list[str]                               -- all reference captions (COCO has ~5 per image)
    attrs    dict[str, str]                          -- Shapes attributes; {} for real data
Use `collate` as the DataLoader's collate_fn (default collation cannot batch variable-length lists).
"""
import os
import re
import hashlib

import numpy as np
import torch
from PIL import Image, ImageDraw

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


def render(attrs, jitter=None, size=32, background=BACKGROUND):
    """Draw one Shapes image (PIL RGB, size x size). `jitter=None` draws the canonical, centred object."""
    j = jitter or {"dx": 0.0, "dy": 0.0, "scale": 1.0, "rot": 0.0, "rgb": [0, 0, 0]}
    S = size * SUPERSAMPLE
    img = Image.new("RGB", (S, S), tuple(background))
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


COLOR_WORD = re.compile(r"\b(" + "|".join(COLORS) + r")\b")


def recolor(caption, color):
    """`caption` with its Shapes colour word replaced by `color`: text only, no image. The text autoencoder's
    augmentation (train.py --recolor), so that it meets every colour word with every shape word, as the tokenizer's
    hue rotation shows it every colour on every shape; neither pairs a caption with a picture (README, Design
    choices)."""
    return COLOR_WORD.sub(color, caption)


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

    def attrs(self, i):
        """The attributes of sample i, without rendering its image."""
        return sample_params(self.split, i, self.seed)[0]

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


# -----------------------------------------------------------------------------
# Colour and blur transforms of image batches (B, 3, H, W) in [0, 1]: evaluate.py's perturbed test copies (a
# user's picture is never exactly the renderer's) and the tokenizer's training augmentation.

def hue_rotation(degrees):
    """(B,) angles -> (B, 3, 3) rotations of RGB space about the grey axis (Rodrigues' formula): every hue turns by
    the angle, and greys, the background among them, stay where they are."""
    a = torch.deg2rad(torch.as_tensor(degrees, dtype=torch.float32))
    k = torch.full((3,), 3 ** -0.5)
    K = torch.tensor([[0.0, -k[2], k[1]], [k[2], 0.0, -k[0]], [-k[1], k[0], 0.0]])  # k x (cross product)
    c, s = a.cos()[:, None, None], a.sin()[:, None, None]
    return c * torch.eye(3) + s * K + (1 - c) * torch.outer(k, k)


def rotate_hue(images, degrees):
    """images (B, 3, H, W), degrees (B,) -> the images with every hue turned, clamped to [0, 1]."""
    return torch.einsum("bij,bjhw->bihw", hue_rotation(degrees).to(images.device), images).clamp(0, 1)


def random_hue(images, prob, generator=None):
    """Each image's hue turned by a uniform random angle with probability prob, else unchanged: the tokenizer's
    augmentation, so that it codes colour apart from shape (README, Design choices)."""
    B = images.shape[0]
    turn = torch.rand(B, generator=generator) * 360.0 * (torch.rand(B, generator=generator) < prob)
    return rotate_hue(images, turn)


def gaussian_blur(images, sigma, radius=None):
    """images (B, 3, H, W), sigma (B,) in pixels (0: unchanged) -> each image blurred by its own Gaussian, cut off
    at `radius` pixels (default: 3 sigma)."""
    B, C, H, W = images.shape
    sigma = torch.as_tensor(sigma, dtype=torch.float32).expand(B)
    r = radius or max(1, int(3 * float(sigma.max()) + 0.5))
    d = torch.arange(-r, r + 1, dtype=torch.float32)
    k = torch.exp(-0.5 * (d[None] / sigma.clamp_min(1e-3)[:, None]) ** 2)  # (B, 2r + 1); sigma ~ 0: a delta
    k = (k / k.sum(1, keepdim=True)).repeat_interleave(C, 0).to(images)  # one kernel per (image, channel)
    y = torch.nn.functional.pad(images.reshape(1, B * C, H, W), (r, r, r, r), mode="replicate")
    y = torch.nn.functional.conv2d(y, k[:, None, None, :], groups=B * C)  # separable: along W, then along H
    return torch.nn.functional.conv2d(y, k[:, None, :, None], groups=B * C).reshape(B, C, H, W)


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
