"""Shared blocks: attention against a naive softmax reference, block and embedding shapes/values."""

import math

import pytest
import torch

from native3d.nn.attention import Attention, TransformerBlock
from native3d.nn.embeddings import FourierPointEmbedding, TimestepEmbedding, timestep_sinusoid
from native3d.nn.resblock import ResBlock, group_norm


def naive_attention(attn: Attention, x, context=None, mask=None):
    """Per-head softmax(q k^T / sqrt(d)) v written out with plain matmuls."""
    source = x if context is None else context
    q = attn.to_q(x)
    k, v = attn.to_kv(source).chunk(2, dim=-1)
    B, L, C = q.shape
    d = C // attn.heads
    outs = []
    for h in range(attn.heads):
        qh, kh, vh = (t[..., h * d : (h + 1) * d] for t in (q, k, v))
        logits = qh @ kh.transpose(1, 2) / math.sqrt(d)  # (B, L, S)
        if mask is not None:
            logits = logits.masked_fill(~mask[:, None, :], float("-inf"))
        outs.append(logits.softmax(-1) @ vh)
    return attn.proj(torch.cat(outs, dim=-1))


def test_self_attention_matches_naive_softmax():
    torch.manual_seed(0)
    attn = Attention(32, 4)
    x = torch.randn(2, 7, 32)
    torch.testing.assert_close(attn(x), naive_attention(attn, x), atol=1e-5, rtol=1e-5)


def test_cross_attention_shapes_and_mask_match_naive():
    torch.manual_seed(0)
    attn = Attention(32, 4, context_dim=12)
    x, context = torch.randn(2, 5, 32), torch.randn(2, 9, 12)
    mask = torch.ones(2, 9, dtype=torch.bool)
    mask[0, 4:] = False
    out = attn(x, context, mask=mask)
    assert out.shape == (2, 5, 32)
    torch.testing.assert_close(out, naive_attention(attn, x, context, mask), atol=1e-5, rtol=1e-5)
    # Masked-out keys must have no influence on the output.
    context_changed = context.clone()
    context_changed[0, 4:] += 10.0
    torch.testing.assert_close(attn(x, context_changed, mask=mask)[0], out[0])


def test_attention_rejects_wrong_usage():
    with pytest.raises(ValueError):
        Attention(32, 4, context_dim=8)(torch.randn(1, 3, 32))
    with pytest.raises(ValueError):
        Attention(32, 4)(torch.randn(1, 3, 32), torch.randn(1, 3, 32))
    with pytest.raises(ValueError):
        Attention(30, 4)


@pytest.mark.parametrize("context_dim", [None, 16])
def test_transformer_block_shapes_and_gradients(context_dim):
    torch.manual_seed(0)
    block = TransformerBlock(32, 4, context_dim=context_dim, qk_norm=True)
    x = torch.randn(2, 6, 32)
    context = torch.randn(2, 11, 16) if context_dim else None
    out = block(x, context)
    assert out.shape == x.shape
    out.square().mean().backward()
    assert all(p.grad is not None for p in block.parameters())


def test_block_without_feed_forward_is_attention_plus_residual():
    torch.manual_seed(0)
    block = TransformerBlock(32, 4, context_dim=16, self_attention=False, mlp_ratio=0)
    assert block.mlp is None and block.norm_mlp is None
    x, context = torch.randn(2, 5, 32), torch.randn(2, 7, 16)
    expected = x + block.cross_attn(block.norm_cross(x), block.norm_context(context))
    torch.testing.assert_close(block(x, context), expected)
    full = TransformerBlock(32, 4, context_dim=16, self_attention=False)
    assert sum(p.numel() for p in full.parameters()) > sum(p.numel() for p in block.parameters())
    with pytest.raises(ValueError, match="mlp_ratio"):
        TransformerBlock(32, 4, mlp_ratio=-1)


def test_cross_only_block_ignores_token_order_of_context():
    torch.manual_seed(0)
    block = TransformerBlock(32, 4, context_dim=16, self_attention=False)
    x, context = torch.randn(1, 4, 32), torch.randn(1, 10, 16)
    permuted = context[:, torch.randperm(10)]
    torch.testing.assert_close(block(x, context), block(x, permuted), atol=1e-5, rtol=1e-5)


def test_fourier_point_embedding_values():
    embed = FourierPointEmbedding(out_dim=20, num_frequencies=4)
    points = torch.tensor([[[0.5, -0.25, 1.0]]])  # (1, 1, 3)
    raw = embed.fourier_features(points)
    assert raw.shape == (1, 1, embed.fourier_dim) == (1, 1, 3 * (2 * 4 + 1))
    # First sin entries: sin(pi * x) for each coordinate at frequency 2^0.
    torch.testing.assert_close(raw[0, 0, [0, 4, 8]], torch.sin(math.pi * points[0, 0]))
    # Frequency k of coordinate 0 is 2^k pi; cos block starts after 3F sines.
    torch.testing.assert_close(raw[0, 0, 3], torch.sin(torch.tensor(8 * math.pi * 0.5)))
    torch.testing.assert_close(raw[0, 0, 12], torch.cos(torch.tensor(math.pi * 0.5)))
    torch.testing.assert_close(raw[0, 0, -3:], points[0, 0])
    assert embed(torch.randn(2, 5, 3)).shape == (2, 5, 20)


def test_fourier_point_embedding_with_features():
    embed = FourierPointEmbedding(out_dim=8, num_frequencies=2, include_input=False, feature_dim=3)
    assert embed.fourier_dim == 12
    assert embed(torch.randn(2, 5, 3), torch.randn(2, 5, 3)).shape == (2, 5, 8)
    with pytest.raises(ValueError):
        embed(torch.randn(2, 5, 3))


def test_timestep_embedding_shapes_and_values():
    sinusoid = timestep_sinusoid(torch.tensor([0.0, 3.0]), 8)
    assert sinusoid.shape == (2, 8)
    torch.testing.assert_close(sinusoid[0], torch.tensor([1.0] * 4 + [0.0] * 4))
    torch.testing.assert_close(sinusoid[1, 0], torch.cos(torch.tensor(3.0)))  # lowest index = frequency 1
    embed = TimestepEmbedding(64)
    t = torch.tensor([0.1, 0.2, 0.9])
    out = embed(t)
    assert out.shape == (3, 64)
    assert not torch.allclose(out[0], out[1])
    # Only t * time_scale matters: integer DDPM steps with scale 1 embed like t in [0, 1] with scale 1000.
    ddpm = TimestepEmbedding(64, time_scale=1.0)
    ddpm.load_state_dict(embed.state_dict())
    torch.testing.assert_close(ddpm(t * 1000), out)
    with pytest.raises(ValueError):
        embed(torch.rand(3, 1))


@pytest.mark.parametrize("dims", [2, 3])
def test_res_block_shapes_zero_init_and_conditioning(dims):
    torch.manual_seed(0)
    x = torch.randn(2, 8, *[4] * dims)
    plain = ResBlock(8, 16, dims)
    assert plain(x).shape == (2, 16, *[4] * dims) and plain.modulation is None
    assert not torch.allclose(plain(x), plain.skip(x)), "a plain block's residual branch is live"
    block = ResBlock(8, 8, dims, cond_dim=5, groups=4, zero_init=True)
    c = torch.randn(2, 5)
    torch.testing.assert_close(block(x, c), x)  # zero-init residual branch: the block starts as its skip
    torch.nn.init.normal_(block.conv2.weight, std=0.1)
    out = block(x, c)
    changed = block(x, torch.stack([c[0], c[0] + 1]))
    torch.testing.assert_close(changed[0], out[0])  # each sample reads its own c
    assert not torch.allclose(changed[1], out[1])
    with pytest.raises(ValueError, match="conditioned"):
        block(x)


def test_group_norm_takes_a_valid_group_count_for_any_width():
    assert [group_norm(c).num_groups for c in (8, 32, 48, 256)] == [8, 32, 16, 32]
    assert group_norm(96, groups=8).num_groups == 8
