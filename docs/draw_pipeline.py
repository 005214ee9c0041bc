"""Draws docs/pipeline.png, the README's picture of FlowTok in both directions: python docs/draw_pipeline.py"""
import os

import matplotlib
matplotlib.use("Agg")
import matplotlib.pyplot as plt
from matplotlib.patches import FancyArrowPatch, FancyBboxPatch
from PIL import Image

HERE = os.path.dirname(os.path.abspath(__file__))
FROZEN, TRAINED, TOKENS = "#dfe7f2", "#f7d9b5", "#d8efd3"


def box(ax, x, y, text, color, w=1.8, h=0.7):
    ax.add_patch(FancyBboxPatch((x - w / 2, y - h / 2), w, h, boxstyle="round,pad=0.03", fc=color, ec="#555", lw=0.8))
    ax.text(x, y, text, ha="center", va="center", fontsize=7)


def arrow(ax, x0, x1, y):
    ax.add_patch(FancyArrowPatch((x0, y), (x1, y), arrowstyle="-|>", mutation_scale=9, lw=0.9, color="#333"))


def row(ax, y, items, title):
    ax.text(-0.2, y + 0.55, title, fontsize=9, weight="bold", va="bottom")
    xs = [i * 2.2 + 0.9 for i in range(len(items))]
    for x, (text, color) in zip(xs, items):
        if isinstance(text, str):
            box(ax, x, y, text, color)
        else:  # an image
            ax.imshow(text, extent=(x - 0.42, x + 0.42, y - 0.42, y + 0.42), zorder=3)
    for a, b in zip(xs, xs[1:]):
        arrow(ax, a + 0.93, b - 0.93, y)


def main():
    img = Image.open(os.path.join(HERE, "examples", "shapes_test_16.png")).convert("RGB")
    fig, ax = plt.subplots(figsize=(12, 3.3))
    row(ax, 2.0, [('"a big blue square\nin the top left"', "white"), ("text encoder\n(MiniLM / CLIP)", FROZEN),
                  ("projector\n-> mean, logvar", TRAINED), ("Z_T: text tokens\n(N x D)", TOKENS),
                  ("flow, 20 Euler\nsteps t = 0 -> 1", TRAINED), ("Z_I: image tokens\n(N x D)", TOKENS),
                  ("tokenizer decoder\n(1D ViT)", FROZEN), (img, None)],
        "text to image: the text is the source, no noise, no cross-attention")
    row(ax, 0.4, [(img, None), ("tokenizer encoder\n(1D ViT)", FROZEN), ("Z_I: image tokens\n(N x D)", TOKENS),
                  ("flow, 20 Euler\nsteps t = 0 -> 1", TRAINED), ("Z_T: text tokens\n(N x D)", TOKENS),
                  ("text decoder\n(small GPT)", FROZEN), ('"a big blue square\nin the top left"', "white")],
        "image to text: the same kind of flow, from image tokens to text tokens")
    for color, label, x in ((FROZEN, "frozen (trained before)", 7.0), (TRAINED, "trained in this task", 10.0),
                            (TOKENS, "N x D tokens (16 x 16 here, 77 x 16 in the paper)", 13.0)):
        ax.add_patch(FancyBboxPatch((x, -0.55), 0.3, 0.2, boxstyle="round,pad=0.02", fc=color, ec="#555", lw=0.6))
        ax.text(x + 0.4, -0.45, label, fontsize=7, va="center")
    ax.set_xlim(-0.3, 17.4), ax.set_ylim(-0.7, 2.75), ax.set_aspect("equal"), ax.axis("off")
    fig.savefig(os.path.join(HERE, "pipeline.png"), dpi=110, bbox_inches="tight")


if __name__ == "__main__":
    main()
