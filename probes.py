"""
Linear probes: is an attribute of the picture *linearly* readable from a representation (image tokens Z_I, text tokens
Z_T), with a read-out trained on seen compositions only? evaluate.py uses them to follow a held-out composition along
the chain: a probe trained on seen pairs that still reads the held-out pairs' attributes says the representation
places them where their attributes predict; one that fails says the pair was lost at that link (README, Design
choices).

A probe is one softmax regression per attribute on the standardised, flattened features, fitted by full-batch L-BFGS
with a little weight decay: deterministic, a few seconds on a CPU for 10,000 x 256 features.
"""
import torch
import torch.nn.functional as F

WEIGHT_DECAY = 1e-3  # on the probe's weights (the features are standardised)
ITERATIONS = 200  # L-BFGS iterations per attribute


class LinearProbe:
    def __init__(self, mean, std, heads):
        self.mean, self.std, self.heads = mean, std, heads  # heads: one (W (F, classes), b (classes,)) per attribute

    @torch.no_grad()
    def predict(self, features):
        """features (M, ...) -> predicted class indices (M, attributes)."""
        x = (features.flatten(1).float() - self.mean) / self.std
        return torch.stack([(x @ W + b).argmax(-1) for W, b in self.heads], dim=1)


@torch.enable_grad()  # evaluate.py runs under no_grad
def fit(features, labels, num_classes):
    """features (M, ...) float, labels (M, A) long, num_classes: A class counts -> a LinearProbe."""
    x = features.flatten(1).float()
    mean, std = x.mean(0), x.std(0).clamp_min(1e-6)
    x = (x - mean) / std
    heads = []
    for a, k in enumerate(num_classes):
        W = torch.zeros(x.shape[1], k, requires_grad=True)
        b = torch.zeros(k, requires_grad=True)
        opt = torch.optim.LBFGS([W, b], max_iter=ITERATIONS, line_search_fn="strong_wolfe")

        def closure():
            opt.zero_grad()
            loss = F.cross_entropy(x @ W + b, labels[:, a]) + WEIGHT_DECAY * W.pow(2).sum()
            loss.backward()
            return loss

        opt.step(closure)
        heads.append((W.detach(), b.detach()))
    return LinearProbe(mean, std, heads)
