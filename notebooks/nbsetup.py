"""
What every notebook does first: find the repository, and find trained models or train small ones.

    from nbsetup import ROOT, models
    out_dir = models("tokenizer", "t2i")   # a folder holding finished tokenizer.pt and t2i.pt

Models come from FLOWTOK_OUT (default: out/ at the repository root, where `python train.py --task t2i` and
`python train.py --task i2t` write) when every one asked for has finished there. Otherwise they are trained into
FLOWTOK_WORK (default: notebooks/work/) with the SMALL recipes below: 16 x 16 images, tiny flows, a minute or two
each on 2 CPU cores. Small models show the mechanics; the default run shows the results. The notebooks in the
repository were run with the default run's models in out/, so their pictures are sharper than a fresh clone's.
"""
import os
import subprocess
import sys
import time
import warnings
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # the notebooks import the project's files; there is no second copy of any model

OUT = Path(os.environ.get("FLOWTOK_OUT", ROOT / "out"))
WORK = Path(os.environ.get("FLOWTOK_WORK", ROOT / "notebooks" / "work"))
warnings.filterwarnings("ignore", message="IProgress not found")  # tqdm.auto in a kernel without ipywidgets

# train.py flags of the small models, on top of each task's defaults (their DEFAULTS in tasks.py and text_tasks.py).
# Sized so that a notebook that trains its models from nothing (04: tokenizer, text autoencoder, flow) stays under 5
# minutes on 2 CPU cores, its own cells included.
SMALL = {
    "tokenizer": ["--image-size", "16", "--num-train", "4000", "--max-steps", "700"],
    "t2i": ["--preset", "tiny", "--num-train", "4000", "--batch-size", "64", "--lr", "3e-3", "--max-steps", "2000"],
    "textae": ["--preset", "tiny", "--num-train", "2000", "--batch-size", "64", "--lr", "3e-3", "--max-steps", "1000"],
    "i2t": ["--preset", "tiny", "--num-train", "2000", "--batch-size", "64", "--lr", "3e-3", "--max-steps", "1200"],
}


def models(*tasks):
    """The out-dir that holds finished runs of `tasks`: OUT when it has them all, else WORK, where whatever is
    missing is trained first with the SMALL recipes (in the order given: a flow's frozen inputs come first)."""
    from common import is_finished
    if all(is_finished(str(OUT), t) for t in tasks):
        print(f"using the trained models in {shown(OUT)}")
        return OUT
    for t in tasks:
        if not is_finished(str(WORK), t):
            run_train(t, WORK)
    print(f"using the small models in {shown(WORK)}")
    return WORK


def shown(path):
    """A path as the reader would type it: relative to the repository when inside it."""
    try:
        return str(Path(path).relative_to(ROOT)) + "/"
    except ValueError:
        return str(path)


def run_train(task, out_dir):
    """python train.py --task TASK with the small recipe, quietly; a killed notebook continues where it stopped."""
    cmd = [sys.executable, str(ROOT / "train.py"), "--task", task, *SMALL[task], "--out-dir", str(out_dir), "--resume",
           "--sample-every", "100000"]
    print(f"no finished {task} in {shown(OUT)}: training a small one "
          f"(python train.py --task {task} {' '.join(SMALL[task])} --out-dir {shown(out_dir)})")
    t0 = time.time()
    r = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, env={**os.environ, "TQDM_DISABLE": "1"})
    if r.returncode != 0:
        raise RuntimeError(f"train.py --task {task} failed:\n{r.stderr[-2000:]}")
    print(f"  {r.stdout.strip().splitlines()[-1]} in {time.time() - t0:.0f} s")


def show_images(images, ncol, titles=None, row_titles=None, size=1.2, fontsize=7):
    """Draw images (B, 3, H, W) in [0, 1] as a grid of `ncol` columns, with optional per-image and per-row titles."""
    import matplotlib.pyplot as plt
    nrow = (len(images) + ncol - 1) // ncol
    fig, axes = plt.subplots(nrow, ncol, figsize=(ncol * size, nrow * size), squeeze=False)
    for k, ax in enumerate(axes.flat):
        ax.set_xticks([]), ax.set_yticks([])
        if k < len(images):
            ax.imshow(images[k].permute(1, 2, 0).clamp(0, 1).cpu().numpy())
            if titles is not None:
                ax.set_title(titles[k], fontsize=fontsize)
        else:
            ax.axis("off")
    for r, label in enumerate(row_titles or []):
        axes[r, 0].set_ylabel(label, fontsize=fontsize, rotation=0, ha="right", va="center")
    fig.tight_layout()
    plt.show()
