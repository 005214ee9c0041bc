"""probes.py: a linear probe reads a linearly coded attribute, also on combinations it was not fitted on."""
import torch

import probes


def test_a_probe_reads_linear_codes_of_unseen_combinations():
    g = torch.Generator().manual_seed(0)
    codes = [torch.randn(k, 32, generator=g) for k in (3, 6)]  # one direction per class of each attribute
    labels = torch.stack([torch.randint(0, 3, (3000,), generator=g), torch.randint(0, 6, (3000,), generator=g)], 1)
    feats = lambda y: codes[0][y[:, 0]] + codes[1][y[:, 1]] + 0.3 * torch.randn(len(y), 32, generator=g)
    seen = ~((labels[:, 0] == 2) & (labels[:, 1] == 4))  # one combination is never fitted on
    probe = probes.fit(feats(labels[seen]).view(-1, 4, 8), labels[seen], [3, 6])  # any shape: flattened
    held = torch.tensor([[2, 4]] * 200)
    assert (probe.predict(feats(held)) == held).all(1).float().mean() > 0.95
    # features that carry no information read at chance
    noise = probes.fit(torch.randn(3000, 32, generator=g), labels, [3, 6])
    assert (noise.predict(torch.randn(500, 32, generator=g))[:, 1] == torch.randint(0, 6, (500,), generator=g)).float().mean() < 0.3
