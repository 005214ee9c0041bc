"""flow.py: the path and its velocity, the CFG indicator, the loss, guidance and the Euler sampler."""
import torch

import flow


class ConstantField(torch.nn.Module):
    """v(x, t, flag) = c (flag 0) or c_flagged (flag 1), whatever x and t."""

    def __init__(self, c, c_flagged=None):
        super().__init__()
        self.c, self.cf = c, c if c_flagged is None else c_flagged

    def forward(self, x, t, flag):
        f = flag.view(-1, 1, 1).float()
        return (1 - f) * self.c + f * self.cf


def test_path_endpoints_and_velocity():
    torch.manual_seed(0)
    x0, x1 = torch.randn(4, 5, 3), torch.randn(4, 5, 3)
    xa, v = flow.interpolate(x0, x1, torch.zeros(4))
    xb, _ = flow.interpolate(x0, x1, torch.ones(4))
    assert torch.equal(xa, x0)  # t = 0 is the source
    assert torch.allclose(xb, x1 + flow.SIGMA_MIN * x0, atol=1e-6)  # t = 1 is (almost exactly) the target
    t = torch.rand(4)
    h = 1e-3
    xp, _ = flow.interpolate(x0, x1, t + h)
    xm, _ = flow.interpolate(x0, x1, t - h)
    assert torch.allclose((xp - xm) / (2 * h), v, atol=1e-3)  # v is d x_t / dt


def test_flow_loss_is_zero_for_the_true_velocity_and_known_otherwise():
    torch.manual_seed(0)
    x0 = torch.randn(64, 4, 2)
    c = torch.randn(1, 4, 2)
    x1 = x0 * (1 - flow.SIGMA_MIN) + c  # every pair moves by the same c: the true field is constant
    loss, err, t = flow.flow_loss(ConstantField(c), x0, x1, flag_prob=0.0)
    assert loss < 1e-10 and err.shape == t.shape == (64,)
    loss0, _, _ = flow.flow_loss(ConstantField(torch.zeros(1, 4, 2)), x0, x1, flag_prob=0.0)
    assert torch.allclose(loss0, c.pow(2).mean(), rtol=1e-4)


def test_t_is_logit_normal():
    t = flow.sample_t(200_000, generator=torch.Generator().manual_seed(0))
    n = torch.logit(t)
    assert 0 < t.min() and t.max() < 1
    assert abs(n.mean()) < 0.01 and abs(n.std() - 1) < 0.01


def test_cfg_indicator_permutes_flagged_targets_only():
    x1 = torch.arange(1000.0).view(1000, 1, 1)
    out, flag = flow.cfg_indicator(x1, prob=0.3, generator=torch.Generator().manual_seed(0))
    f = flag.bool()
    assert 200 < f.sum() < 400
    assert torch.equal(out[~f], x1[~f])  # unflagged: untouched
    assert torch.equal(out[f].sort(0).values, x1[f].sort(0).values)  # flagged: a permutation of themselves
    assert (out[f] != x1[f]).float().mean() > 0.9  # ... and really shuffled
    none, flag0 = flow.cfg_indicator(x1, prob=0.0)
    assert torch.equal(none, x1) and flag0.sum() == 0


def test_euler_is_exact_on_a_constant_field():
    torch.manual_seed(0)
    x0, c = torch.randn(3, 4, 2), torch.randn(1, 4, 2)
    for steps in (1, 7, 20):
        x1 = flow.euler_sample(ConstantField(c), x0, steps=steps, cfg_scale=1.0)
        assert torch.allclose(x1, x0 + c, atol=1e-5)
    traj = flow.euler_sample(ConstantField(c), x0, steps=4, cfg_scale=1.0, return_trajectory=True)
    assert traj.shape == (5, 3, 4, 2) and torch.equal(traj[0], x0)
    assert torch.allclose(traj[2], x0 + 0.5 * c, atol=1e-6)


def test_guidance_combines_the_two_branches():
    torch.manual_seed(0)
    x = torch.randn(2, 4, 2)
    cu, cf = torch.randn(1, 4, 2), torch.randn(1, 4, 2)
    field = ConstantField(cu, cf)
    t = torch.rand(2)
    assert torch.allclose(flow.guided_velocity(field, x, t, 1.0), cu.expand(2, -1, -1))
    assert torch.allclose(flow.guided_velocity(field, x, t, 0.0), cf.expand(2, -1, -1))
    assert torch.allclose(flow.guided_velocity(field, x, t, 2.0), (cf + 2 * (cu - cf)).expand(2, -1, -1))


def test_cfg_scale_one_equals_the_unflagged_branch_of_a_real_network():
    torch.manual_seed(0)
    net = flow.VelocityNet(flow.PRESETS["tiny"])
    for p in net.parameters():  # leave the zero init, so both branches and the output are non-trivial
        torch.nn.init.normal_(p, std=0.1)
    x, t = torch.randn(3, 16, 16), torch.rand(3)
    unflagged = net(x, t, torch.zeros(3, dtype=torch.long))
    assert not torch.allclose(unflagged, net(x, t, torch.ones(3, dtype=torch.long)))
    assert torch.allclose(flow.guided_velocity(net, x, t, 1.0), unflagged, atol=1e-6)


def test_velocity_net_shapes_and_adaln_zero_init():
    net = flow.VelocityNet(flow.PRESETS["tiny"])
    x = torch.randn(5, 16, 16)
    v = net(x, torch.rand(5), torch.randint(0, 2, (5,)))
    assert v.shape == x.shape and v.abs().max() == 0  # adaLN-Zero: the untrained net predicts v = 0
    loss, _, _ = flow.flow_loss(net, torch.randn(5, 16, 16), x)
    loss.backward()
    assert net.x_out.weight.grad.abs().sum() > 0


def test_a_tiny_flow_learns_to_map_one_gaussian_to_another():
    """Source N(0, I) tokens, target N(3, I): after training the samples' mean moves to ~3."""
    torch.manual_seed(0)
    net = flow.VelocityNet(flow.FlowConfig(num_tokens=4, token_dim=2, width=32, depth=2, heads=2))
    opt = torch.optim.AdamW(net.parameters(), lr=3e-3)
    for _ in range(300):
        loss, _, _ = flow.flow_loss(net, torch.randn(64, 4, 2), torch.randn(64, 4, 2) + 3.0)
        opt.zero_grad()
        loss.backward()
        opt.step()
    out = flow.euler_sample(net, torch.randn(256, 4, 2), steps=20, cfg_scale=1.0)
    assert abs(out.mean().item() - 3.0) < 0.3 and 0.5 < out.std().item() < 1.5


def test_presets_match_the_paper_sizes():
    with torch.device("meta"):
        counts = {k: sum(p.numel() for p in flow.VelocityNet(flow.PRESETS[k]).parameters()) for k in ("B", "XL")}
    # paper (incl. the text projector): B 153M, XL 698M; the velocity net alone is somewhat smaller
    assert 100e6 < counts["B"] < 153e6 and 600e6 < counts["XL"] < 698e6, counts


def test_t_distributions_weight_the_start_of_the_path_differently():
    g = torch.Generator().manual_seed(0)
    ln = flow.sample_t(100_000, generator=g)
    un = flow.sample_t(100_000, generator=g, dist="uniform")
    early = flow.sample_t(100_000, generator=g, dist="early")
    assert 0 < ln.min() and ln.max() < 1 and 0 <= un.min() and un.max() < 1 and 0 <= early.min() and early.max() < 1
    assert abs((ln < 0.1).float().mean().item() - 0.0140) < 0.002  # P(sigmoid(n) < 0.1) = P(n < -2.197)
    assert abs((un < 0.1).float().mean().item() - 0.1) < 0.005
    assert abs((early < 0.1).float().mean().item() - 0.1 ** 0.5) < 0.005  # P(u^2 < 0.1) = P(u < 0.316)
    assert abs((early > 0.9).float().mean().item() - (1 - 0.9 ** 0.5)) < 0.003  # the end of the path: 5%, not 10%


def test_generate_scales_the_source_noise_around_the_projector_mean():
    import projector as pj
    torch.manual_seed(0)
    pcfg = pj.ProjectorConfig(**{**vars(pj.PRESETS["tiny"]), "text_dim": 8, "num_tokens": 4, "token_dim": 6})
    fcfg = flow.FlowConfig(**{**vars(flow.PRESETS["tiny"]), "num_tokens": 4, "token_dim": 6})
    model = flow.TextToImage(pcfg, fcfg).eval()
    text = torch.randn(3, 4, 8)
    traj = lambda scale, noise: model.generate(text, steps=2, noise_scale=scale, noise=noise, return_trajectory=True)
    mean, logvar = model.projector(text)
    n1, n2 = torch.randn(3, 4, 6), torch.randn(3, 4, 6)
    assert torch.allclose(traj(0.0, n1)[0], mean) and torch.equal(traj(0.0, n1)[-1], traj(0.0, n2)[-1])
    assert torch.allclose(traj(0.5, n1)[0], mean + 0.5 * torch.exp(0.5 * logvar) * n1)
    assert not torch.equal(traj(1.0, n1)[-1], traj(1.0, n2)[-1])


def test_one_size_name_means_one_size_in_every_component():
    """The projector, text decoder and flow tables are keyed alike (train.py --preset picks all of them), agree
    on N x D per name, and the bench's tokenizer for each name exists."""
    import projector as pj
    import text_decoder as td
    import tokenizer as tok
    from benchmarks.measure import TOKENIZER_FOR
    assert list(pj.PRESETS) == list(td.PRESETS) == list(flow.PRESETS)
    for name, f in flow.PRESETS.items():
        assert (pj.PRESETS[name].num_tokens, pj.PRESETS[name].token_dim) == (f.num_tokens, f.token_dim), name
        assert td.PRESETS[name].num_tokens == f.num_tokens, name
    assert set(TOKENIZER_FOR) == set(flow.PRESETS) and set(TOKENIZER_FOR.values()) <= set(tok.PRESETS)
    t = tok.PRESETS["cpu"]  # the default size: its tokenizer makes the tokens its flow and projector expect
    assert (t.num_latents, t.latent_dim) == (flow.PRESETS["cpu"].num_tokens, flow.PRESETS["cpu"].token_dim)
