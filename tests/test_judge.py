"""judge.py: labels, accuracy, the Frechet distance, and that a briefly trained judge reads attributes."""
import pytest
import torch

import data
import judge as J


def test_targets_and_accuracy():
    attrs = [{"shape": "circle", "color": "red", "size": "small", "position": "top left"},
             {"shape": "triangle", "color": "orange", "size": "large", "position": "bottom right"}]
    t = J.targets(attrs)
    assert t.tolist() == [[0, 0, 0, 0], [2, 5, 1, 8]]
    pred = t.clone()
    pred[1, 1] = 0  # second sample: wrong color
    acc = J.accuracy(pred, t)
    assert acc["acc_shape"] == 1.0 and acc["acc_color"] == 0.5 and acc["acc_all"] == 0.5


def test_frechet_distance_of_gaussians():
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(20000, 4, generator=g), torch.randn(20000, 4, generator=g)
    assert abs(J.frechet_distance(a, b)) < 0.01  # same distribution
    assert abs(J.frechet_distance(a, b + 2.0) - 16.0) < 0.1  # mean shift: |2 * ones(4)|^2
    assert abs(J.frechet_distance(a, 3.0 * b) - 4 * (1 + 9 - 2 * 3)) < 0.3  # tr(S1 + S2 - 2 sqrt(S1 S2))


def test_a_briefly_trained_judge_reads_position_and_size():
    ds = data.ShapesDataset("train", size=32, n=3000)
    images = data.image_tensor(ds)
    labels = J.targets([ds.sample(i)[2] for i in range(len(ds))])
    judge = J.train_judge(images, labels, steps=150, batch_size=64)
    test = data.ShapesDataset("test", size=32, n=300)
    x = torch.stack([test[i]["image"] for i in range(300)])
    feats, pred = J.predict(judge, x)
    acc = J.accuracy(pred, J.targets([test[i]["attrs"] for i in range(300)]))
    assert feats.shape == (300, J.FEATURES)
    assert acc["acc_position"] > 0.8 and acc["acc_size"] > 0.8, acc  # chance: 0.11 and 0.5


def test_augment_blurs_some_images_and_keeps_the_rest_sharp():
    x = torch.full((200, 3, 32, 32), 0.3)
    x[:, :, 16, 16] = 0.8  # one bright pixel on grey: blur spreads it, noise alone barely moves it
    y = J.augment(x, torch.Generator().manual_seed(0))
    assert y.shape == x.shape and y.min() >= 0 and y.max() <= 1
    blurred = (y[:, 0, 16, 16] < 0.3 + 0.8 * 0.5).float().mean().item()
    assert 0.1 < blurred < 0.5, blurred  # half the images get a random blur, some of it too weak to matter
    assert (y.mean((1, 2, 3)) - x.mean((1, 2, 3))).abs().max() < 0.01  # light is moved around, not lost or added


def test_the_judge_split_shows_every_composition():
    pairs = {(a["shape"], a["color"]) for a in (data.sample_params("judge", i)[0] for i in range(2000))}
    assert data.HELDOUT_PAIRS <= pairs and len(pairs) == len(data.SHAPES) * len(data.COLORS)
    train_pairs = {(a["shape"], a["color"]) for a in (data.sample_params("train", i)[0] for i in range(2000))}
    assert not (data.HELDOUT_PAIRS & train_pairs)
    assert data.SHAPES_VERSION in data.ShapesDataset("judge", n=3).cache_key()


def test_split_accuracy_and_scores_separate_seen_and_heldout():
    attrs = [{"shape": s, "color": c, "size": "small", "position": "top"} for s, c in
             [("circle", "red"), ("circle", "red"), ("triangle", "blue"), ("circle", "yellow"), ("square", "green")]]
    truth = J.targets(attrs)
    pred = truth.clone()
    pred[1, 0] = 2  # a seen image with the wrong shape
    pred[3, 1] = 0  # the yellow circle (held out) called red
    out = J.split_accuracy("acc", pred, truth, attrs)
    approx = lambda x: pytest.approx(x, abs=1e-6)
    assert out["acc"] == approx(3 / 5) and out["acc_seen"] == approx(2 / 3) and out["acc_heldout"] == approx(1 / 2)
    assert out["acc_blue_triangle"] == 1.0 and out["acc_yellow_circle"] == 0.0 and "acc_purple_square" not in out
    s = J.scores(pred, attrs)
    assert s["acc_shape"] == approx(4 / 5) and s["acc_color"] == approx(4 / 5) and s["acc_all_heldout"] == approx(1 / 2)
