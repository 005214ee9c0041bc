"""The hand-written pieces: RoPE, SwiGLU, the Gaussian KL, and the tokenizer built from them."""

import pytest
import torch

import layers
import tokenizer as tok


def test_rope_keeps_norms():
    torch.manual_seed(0)
    x = torch.randn(2, 3, 10, 16)
    y = layers.apply_rope(x, layers.rope_1d(10, 16))
    assert torch.allclose(x.norm(dim=-1), y.norm(dim=-1), atol=1e-5)
    assert not torch.allclose(x, y)  # it did rotate


def test_rope_position_zero_is_identity():
    x = torch.randn(4, 8)
    assert torch.equal(layers.apply_rope(x, torch.zeros(4, 4)), x)


def test_rope_scores_depend_only_on_offset_1d():
    torch.manual_seed(0)
    q, k = torch.randn(32), torch.randn(32)
    ang = layers.rope_1d(40, 32)
    rot = lambda v, pos: layers.apply_rope(v[None], ang[pos:pos + 1])[0]
    for offset in (0, 1, 5, 17):
        scores = [rot(q, m) @ rot(k, m + offset) for m in (0, 3, 11, 20)]
        assert max(scores) - min(scores) < 1e-4, (offset, scores)
    # and different offsets do give different scores
    assert abs(rot(q, 0) @ rot(k, 1) - rot(q, 0) @ rot(k, 7)) > 1e-3


def test_rope_2d_scores_depend_only_on_2d_offset():
    torch.manual_seed(1)
    q, k = torch.randn(16), torch.randn(16)
    h = w = 6
    ang = layers.rope_2d(h, w, 16)  # row-major grid
    rot = lambda v, r, c: layers.apply_rope(v[None], ang[r * w + c: r * w + c + 1])[0]
    base = rot(q, 0, 0) @ rot(k, 2, 1)
    for r, c in ((1, 1), (3, 2), (2, 4)):
        assert abs(rot(q, r, c) @ rot(k, r + 2, c + 1) - base) < 1e-4
    # a row offset and a column offset of the same size are different relations
    assert abs(rot(q, 0, 0) @ rot(k, 1, 0) - rot(q, 0, 0) @ rot(k, 0, 1)) > 1e-3


def test_swiglu_shapes_and_gating():
    torch.manual_seed(0)
    f = layers.SwiGLU(24, hidden=40)
    x = torch.randn(3, 5, 24)
    y = f(x)
    assert y.shape == x.shape
    expected = f.w2(torch.nn.functional.silu(f.w1(x)) * f.w3(x))
    assert torch.allclose(y, expected)
    with torch.no_grad():  # a closed gate passes nothing
        f.w1.weight.fill_(-1e4 / 24)  # SiLU(very negative) = 0 for positive inputs
    assert f(x.abs()).abs().max() < 1e-3
    assert layers.swiglu_hidden(96) % 32 == 0 and layers.swiglu_hidden(96) >= 2 * 4 * 96 // 3


def test_gaussian_kl_matches_closed_form():
    torch.manual_seed(0)
    mean, logvar = torch.randn(4, 7, 3), torch.randn(4, 7, 3)
    p = torch.distributions.Normal(mean, (0.5 * logvar).exp())
    q = torch.distributions.Normal(torch.zeros_like(mean), torch.ones_like(mean))
    expected = torch.distributions.kl_divergence(p, q).flatten(1).sum(1)
    assert torch.allclose(layers.gaussian_kl(mean, logvar), expected, atol=1e-5)
    assert layers.gaussian_kl(torch.zeros(2, 5), torch.zeros(2, 5)).abs().max() == 0


def test_split_moments_clamps_logvar():
    mean, logvar = layers.split_moments(torch.tensor([[1.0, 2.0, -100.0, 100.0]]))
    assert mean.tolist() == [[1.0, 2.0]] and logvar.tolist() == [[layers.LOGVAR_MIN, layers.LOGVAR_MAX]]


def test_causal_attention_ignores_the_future():
    torch.manual_seed(0)
    blk = layers.Block(16, 2)
    x = torch.randn(1, 6, 16)
    x2 = x.clone()
    x2[:, 4:] += 1.0
    y, y2 = blk(x, layers.rope_1d(6, 8), causal=True), blk(x2, layers.rope_1d(6, 8), causal=True)
    assert torch.allclose(y[:, :4], y2[:, :4], atol=1e-6) and not torch.allclose(y[:, 4:], y2[:, 4:])


def test_tokenizer_round_trip_shapes():
    torch.manual_seed(0)
    cfg = tok.PRESETS["tiny"]
    m = tok.Tokenizer(cfg)
    x = torch.rand(3, 3, cfg.image_size, cfg.image_size)
    mean, logvar = m.encode(x)
    assert mean.shape == logvar.shape == (3, cfg.num_latents, cfg.latent_dim)
    z = m.encode_sample(x)
    assert z.shape == mean.shape and not torch.equal(z, mean)
    assert torch.equal(m.encode_sample(x, sample=False), mean)
    assert m.decode(z).shape == x.shape
    loss, stats, recon = m(x)
    assert loss.ndim == 0 and recon.shape == x.shape and set(stats) == {"rec", "kl"}
    loss.backward()
    assert all(p.grad is not None for p in m.parameters())


def test_tokenizer_text_aware_decoding():
    torch.manual_seed(0)
    cfg = tok.TokenizerConfig(**{**vars(tok.PRESETS["tiny"]), "text_dim": 12})
    m = tok.Tokenizer(cfg)
    z = torch.randn(2, cfg.num_latents, cfg.latent_dim)
    t1, t2 = torch.randn(2, 5, 12), torch.randn(2, 5, 12)
    assert m.decode(z, t1).shape == (2, 3, cfg.image_size, cfg.image_size)
    assert not torch.allclose(m.decode(z, t1), m.decode(z, t2))  # the text is used
    with pytest.raises(AssertionError):
        m.decode(z)


def test_tokenizer_stem_and_attention_init():
    """The conv stem keeps the patch grid; attention weights start at std 1/sqrt(width) (not 0.02: README)."""
    torch.manual_seed(0)
    for stem in (0, 8):
        cfg = tok.TokenizerConfig(**{**vars(tok.PRESETS["tiny"]), "stem_channels": stem})
        m = tok.Tokenizer(cfg)
        assert isinstance(m.stem, torch.nn.Identity) == (stem == 0)
        mean, _ = m.encode(torch.rand(2, 3, cfg.image_size, cfg.image_size))
        assert mean.shape == (2, cfg.num_latents, cfg.latent_dim)
        for a in [x for x in m.modules() if isinstance(x, layers.Attention)]:
            assert abs(a.qkv.weight.std().item() - cfg.enc_width ** -0.5) < 0.2 * cfg.enc_width ** -0.5
        assert m.to_pixels.weight.std().item() < 0.03  # everything else keeps the ViT recipe


def test_decoder_output_depends_on_every_latent_slot():
    """Latent tokens are unrotated, so the decoder must tell slots apart by their learned slot embedding."""
    torch.manual_seed(0)
    m = tok.Tokenizer(tok.PRESETS["tiny"])
    z = torch.randn(1, m.cfg.num_latents, m.cfg.latent_dim)
    swapped = z[:, [1, 0] + list(range(2, m.cfg.num_latents))]
    assert not torch.allclose(m.decode(z), m.decode(swapped))


def test_latent_scale_and_flow_interface():
    torch.manual_seed(0)
    m = tok.Tokenizer(tok.PRESETS["tiny"])
    x = torch.rand(64, 3, 16, 16)
    s = tok.measure_latent_scale(m, x)
    m.latent_scale.fill_(s)
    z = m.encode_sample(x, generator=torch.Generator().manual_seed(0))  # the measurement's draws (its own generator)
    assert abs(m.to_flow(z).std().item() - 1.0) < 1e-4 and abs(z.std().item() - 1.0) > 0.01
    assert torch.allclose(m.from_flow(m.to_flow(z)), z, atol=1e-6)


def test_psnr():
    a = torch.zeros(2, 3, 4, 4)
    b = a.clone()
    b[1] += 0.1
    p = tok.psnr(b, a)
    assert p[0] == 100.0 and abs(p[1].item() - 20.0) < 1e-4


def test_paper_preset_is_vit_b_encoder_vit_l_decoder():
    with torch.device("meta"):  # shapes only: no memory, no arithmetic
        m = tok.Tokenizer(tok.PRESETS["paper"])
    count = lambda mod: sum(p.numel() for p in mod.parameters())
    assert m.grid == 16 and m.cfg.num_latents == 77 and m.cfg.latent_dim == 16
    assert 80e6 < count(m.encoder) < 90e6  # ViT-B: 12 x 768, ~85M
    assert 290e6 < count(m.decoder) < 320e6  # ViT-L: 24 x 1024, ~302M
