"""
The Shapes judge: a small CNN that reads shape, color, size and position off a Shapes image. It scores what
the models draw (text-to-image accuracy, tokenizer reconstructions), and its penultimate features give a
Frechet distance between sets of images. Trained on the Shapes "judge" split (every composition, held-out
pairs included; disjoint from train/val/test) and cached in the out-dir.

It must read what a *model* draws, and models draw slightly soft edges and a little noise; a judge that has only
ever seen crisp renders calls a blurred square a circle. So training images are randomly blurred and noised
(augment), within what the eye still reads without doubt.
"""
import os

import torch
import torch.nn as nn
import torch.nn.functional as F

import data
from common import atomic_save

ATTRS = tuple(data.ATTRIBUTES)  # ("shape", "color", "size", "position")
FEATURES = 256


class Judge(nn.Module):
    def __init__(self):
        super().__init__()
        self.convs = nn.Sequential(  # (B, 3, 32, 32) -> (B, 64, 8, 8); position survives: no global pooling
            nn.Conv2d(3, 24, 3, padding=1), nn.GELU(),
            nn.Conv2d(24, 48, 3, stride=2, padding=1), nn.GELU(),
            nn.Conv2d(48, 64, 3, stride=2, padding=1), nn.GELU(),
            nn.Conv2d(64, 64, 3, padding=1), nn.GELU())
        self.fc = nn.Sequential(nn.Flatten(), nn.Linear(64 * 8 * 8, FEATURES), nn.GELU())
        self.heads = nn.ModuleDict({k: nn.Linear(FEATURES, len(v)) for k, v in data.ATTRIBUTES.items()})

    def forward(self, images):
        """images (B, 3, H, W) in [0, 1] -> (features (B, FEATURES), {attribute: logits})."""
        x = F.interpolate(images, size=(32, 32), mode="bilinear", antialias=True) if images.shape[-1] != 32 else images
        f = self.fc(self.convs(x * 2.0 - 1.0))
        return f, {k: head(f) for k, head in self.heads.items()}


def targets(attrs):
    """list of attribute dicts -> (B, 4) long tensor of class indices in ATTRS order."""
    return torch.tensor([[data.ATTRIBUTES[k].index(a[k]) for k in ATTRS] for a in attrs])


BLUR_MAX = 1.0  # Gaussian blur sigma, pixels at 32 px, drawn uniformly in [0, BLUR_MAX] for half the images
NOISE_MAX = 0.04  # std of added Gaussian pixel noise, drawn uniformly in [0, NOISE_MAX]


def augment(x, generator=None):
    """x (B, 3, H, W) in [0, 1] -> per-sample random blur (half the batch) and pixel noise."""
    B, H = x.shape[0], x.shape[2]
    sigma = torch.rand(B, generator=generator) * BLUR_MAX * (H / 32) * (torch.rand(B, generator=generator) < 0.5)
    noise = torch.randn(x.shape, generator=generator) * torch.rand(B, 1, 1, 1, generator=generator) * NOISE_MAX
    return (data.gaussian_blur(x, sigma, radius=max(1, int(3 * BLUR_MAX * H / 32 + 0.5))) + noise).clamp(0, 1)


NUM_TRAIN, STEPS = 20_000, 3000  # the judge's training budget (evaluate.py --judge-images, --judge-steps)


@torch.enable_grad()  # callers may sit under no_grad (evaluate.py)
def train_judge(images, labels, steps=STEPS, batch_size=64, lr=3e-3, seed=0):
    """images (M, 3, H, W) uint8, labels (M, 4) -> a trained Judge in eval mode."""
    torch.manual_seed(seed)
    judge = Judge()
    opt = torch.optim.AdamW(judge.parameters(), lr=lr, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps)
    from tqdm import tqdm
    for _ in tqdm(range(steps), desc="training the judge", leave=False, mininterval=2):
        idx = torch.randint(0, len(images), (batch_size,))
        _, logits = judge(augment(images[idx].float() / 255.0))
        loss = sum(F.cross_entropy(logits[k], labels[idx, i]) for i, k in enumerate(ATTRS))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
    return judge.eval().requires_grad_(False)


def judge_name(image_size):
    """The cached judge's file name: its resolution and the version of the Shapes pictures it reads."""
    return f"judge-{image_size}-{data.SHAPES_VERSION}.pt"


def load_or_train(out_dir, image_size, num_train=NUM_TRAIN, steps=STEPS):
    """The judge cached in OUT_DIR, trained on rendered Shapes "judge"-split images if missing."""
    name = judge_name(image_size) if (num_train, steps) == (NUM_TRAIN, STEPS) else \
        f"judge-{image_size}-{data.SHAPES_VERSION}-{num_train}x{steps}.pt"  # a cheaper judge never stands in
    path = os.path.join(out_dir, name)
    judge = Judge()
    if os.path.exists(path):
        judge.load_state_dict(torch.load(path, weights_only=True))
        return judge.eval().requires_grad_(False)
    print(f"training the Shapes judge on {num_train} rendered images (once; cached at {path})")
    ds = data.ShapesDataset("judge", size=image_size, n=num_train)
    images = data.image_tensor(ds, cache_dir=os.path.join(out_dir, "cache"), desc="judge set")
    labels = targets([data.sample_params("judge", i)[0] for i in range(num_train)])
    judge = train_judge(images, labels, steps)
    os.makedirs(out_dir, exist_ok=True)
    atomic_save(judge.state_dict(), path)
    return judge


@torch.no_grad()
def predict(judge, images, batch_size=500):
    """images (B, 3, H, W) in [0, 1] -> features (B, FEATURES), predicted class indices (B, 4)."""
    feats, preds = [], []
    for x in images.split(batch_size):
        f, logits = judge(x.float())
        feats.append(f)
        preds.append(torch.stack([logits[k].argmax(-1) for k in ATTRS], dim=1))
    return torch.cat(feats), torch.cat(preds)


def accuracy(pred, truth):
    """Per-attribute accuracy and all-attributes-right accuracy."""
    right = pred == truth
    out = {f"acc_{k}": right[:, i].float().mean().item() for i, k in enumerate(ATTRS)}
    out["acc_all"] = right.all(1).float().mean().item()
    return out


def split_accuracy(name, pred, truth, attrs):
    """All-four accuracy of pred against truth (M, 4) overall, on seen and on held-out compositions, and for each
    held-out (shape, colour) pair: {name: ..., name_seen: ..., name_heldout: ..., name_<colour>_<shape>: ...}."""
    pairs = [(a["shape"], a["color"]) for a in attrs]
    right = (pred == truth).all(1).float()
    held = torch.tensor([p in data.HELDOUT_PAIRS for p in pairs])
    out = {name: right.mean().item(), f"{name}_seen": right[~held].mean().item()}
    if held.any():
        out[f"{name}_heldout"] = right[held].mean().item()
    for shape, color in sorted(data.HELDOUT_PAIRS):
        mask = torch.tensor([p == (shape, color) for p in pairs])
        if mask.any():
            out[f"{name}_{color}_{shape}"] = right[mask].mean().item()
    return out


def scores(pred, attrs):
    """Predicted class indices (M, 4) against the true attribute dicts: per-attribute accuracy, and the all-four
    accuracy overall, on seen and held-out compositions and per held-out pair (split_accuracy)."""
    truth = targets(attrs)
    per_attribute = {k: v for k, v in accuracy(pred, truth).items() if k != "acc_all"}
    return {**per_attribute, **split_accuracy("acc_all", pred, truth, attrs)}


def read_captions(captions):
    """What captions say (data.parse_caption), as class indices like `targets` (-1 where an attribute is missing):
    image-to-text is scored by comparing these with the images' true attributes through `accuracy`."""
    said = [data.parse_caption(c) for c in captions]
    return torch.tensor([[data.ATTRIBUTES[k].index(s[k]) if s[k] is not None else -1 for k in ATTRS] for s in said])


def frechet_distance(f1, f2):
    """Frechet distance between Gaussians fitted to two feature sets (N, F): |mu1 - mu2|^2 +
    tr(S1 + S2 - 2 (S1 S2)^(1/2)); tr((S1 S2)^(1/2)) is the sum of square roots of S1 S2's eigenvalues."""
    f1, f2 = f1.double(), f2.double()
    mu1, mu2 = f1.mean(0), f2.mean(0)
    s1, s2 = torch.cov(f1.T), torch.cov(f2.T)
    eig = torch.linalg.eigvals(s1 @ s2).real.clamp_min(0)
    return ((mu1 - mu2).pow(2).sum() + s1.trace() + s2.trace() - 2 * eig.sqrt().sum()).item()
