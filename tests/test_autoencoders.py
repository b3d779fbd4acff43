"""Contract tests over the three autoencoders (tiny configs), their bottleneck, samplers and loss."""

import warnings

import pytest
import torch

from native3d.autoencoders import (
    DiagonalGaussian,
    GridVAE,
    TriplaneVAE,
    VecSetVAE,
    autoencoder_loss,
    farthest_point_sample,
    grid_tiny,
    latent_statistics,
    triplane_tiny,
    vecset_tiny,
)
from native3d.autoencoders.decoders import QueryCrossAttentionHead, sample_planes, sample_volume
from native3d.autoencoders.loss import eikonal_loss, soft_iou_loss
from native3d.autoencoders.triplane import axis_context
from native3d.data.schema import grid_coords
from native3d.training.autoencoder import AutoencoderModule


def grid_patched() -> GridVAE:
    """The grid VAE that patchifies its input (2^3 patches): R=32 -> features 16^3 -> latent 8^3."""
    return GridVAE(
        resolution=32,
        channels=(8, 16),
        latent_channels=8,
        feature_channels=8,
        head_hidden=32,
        head_layers=1,
        patch_size=2,
    )


def triplane_with_points() -> TriplaneVAE:
    """The triplane VAE that also pools surface-point embeddings onto its planes, with 2x2 patches."""
    return TriplaneVAE(
        resolution=32,
        channels=(16, 32),
        latent_channels=8,
        feature_channels=16,
        head_hidden=32,
        head_layers=1,
        point_channels=8,
        patch_size=2,
    )


def vecset_wide_latent() -> VecSetVAE:
    """The VecSet VAE with a latent wider than its tokens, as `vecset_cpu.yaml` has it."""
    return VecSetVAE(num_latents=16, latent_channels=96, width=64, heads=2, depth=1)


PRESETS = [vecset_tiny, grid_tiny, triplane_tiny, grid_patched, triplane_with_points, vecset_wide_latent]
B, N, R, Q = 2, 512, 32, 256
RADIUS, TRUNCATION = 0.5, 0.1


def sphere_batch(batch_size: int = B, seed: int = 0) -> dict[str, torch.Tensor]:
    """A shard-like batch of spheres of radius 0.5 (slightly different centres), float16 like shards."""
    g = torch.Generator().manual_seed(seed)
    centres = 0.1 * (torch.rand(batch_size, 1, 3, generator=g) * 2 - 1)  # (B, 1, 3)
    normals = torch.nn.functional.normalize(torch.randn(batch_size, N, 3, generator=g), dim=-1)
    surface = torch.cat([centres + RADIUS * normals, normals], dim=-1)  # (B, N, 6)

    def sdf(pts):  # (B, ..., 3) -> (B, ...)
        c = centres.view(batch_size, *[1] * (pts.ndim - 2), 3)
        return ((pts - c).norm(dim=-1) - RADIUS).clamp(-TRUNCATION, TRUNCATION)

    axis = torch.as_tensor(grid_coords(R), dtype=torch.float32)
    grid = torch.stack(torch.meshgrid(axis, axis, axis, indexing="ij"), dim=-1).expand(batch_size, R, R, R, 3)
    sdf_grid = sdf(grid)  # (B, R, R, R) indexed [x, y, z]
    planes = []
    for reduce_axis in (3, 2, 1):  # xy reduces z, xz reduces y, yz reduces x
        planes.append(
            torch.stack([sdf_grid.amin(reduce_axis), (sdf_grid < 0).float().mean(reduce_axis)], dim=1)
        )
    triplane = torch.stack(planes, dim=1)  # (B, 3, 2, R, R)
    uniform = torch.rand(batch_size, Q // 2, 3, generator=g) * 2 - 1
    near = surface[:, : Q // 2, :3] + 0.02 * torch.randn(batch_size, Q // 2, 3, generator=g)
    pts = torch.cat([uniform, near], dim=1)
    query = torch.cat([pts, sdf(pts)[..., None]], dim=-1)  # (B, Q, 4)
    return {
        k: v.half() for k, v in dict(surface=surface, sdf=sdf_grid, triplane=triplane, query=query).items()
    }


@pytest.fixture(scope="module")
def batch():
    return sphere_batch()


def run(model, batch, sample_posterior=True):
    inputs = model.inputs_from_batch(batch)
    points, target = model.queries_from_batch(batch)
    sdf, posterior = model(inputs, points, sample_posterior=sample_posterior)
    return sdf, target, posterior


@pytest.mark.parametrize("preset", PRESETS)
def test_output_and_latent_shapes(preset, batch):
    model = preset()
    sdf, _, posterior = run(model, batch)
    assert sdf.shape == (B, Q)
    assert posterior.mean.shape == posterior.logvar.shape == (B, *model.latent_shape)
    assert posterior.sample().shape == (B, *model.latent_shape)
    assert model.decode(posterior.mode(), torch.zeros(B, 7, 3)).shape == (B, 7)


@pytest.mark.parametrize("preset", PRESETS)
def test_gradients_reach_every_parameter(preset, batch):
    torch.manual_seed(0)
    model = preset()
    sdf, target, posterior = run(model, batch)
    autoencoder_loss(sdf, target, posterior, kl_weight=1e-3, clamp=TRUNCATION)["loss"].backward()
    missing = [name for name, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert not missing, f"no gradient reached {missing}"


@pytest.mark.parametrize("preset", PRESETS)
def test_same_seed_same_result(preset, batch):
    outputs = []
    for _ in range(2):
        torch.manual_seed(123)
        model = preset()  # train mode: random FPS start and posterior sampling both use the seed
        outputs.append(run(model, batch)[0])
    torch.testing.assert_close(outputs[0], outputs[1], rtol=0, atol=0)
    torch.manual_seed(124)
    assert not torch.allclose(run(preset(), batch)[0], outputs[0])


@pytest.mark.parametrize("preset", PRESETS)
def test_encode_decode_mode_is_deterministic(preset, batch):
    model = preset().eval()
    inputs = model.inputs_from_batch(batch)
    points, _ = model.queries_from_batch(batch)
    first = model.decode(model.encode(inputs).mode(), points)
    torch.manual_seed(999)  # a different RNG state must not matter in eval with mode()
    second = model.decode(model.encode(inputs).mode(), points)
    torch.testing.assert_close(first, second, rtol=0, atol=0)


@pytest.mark.parametrize("preset", PRESETS)
def test_latent_statistics_travel_in_state_dict(preset, batch):
    torch.manual_seed(0)
    model = preset().eval()
    assert {"latent_mean", "latent_std"} <= set(model.state_dict())
    shape = model.latent_shape
    channel_axis = model.latent_channel_dim % len(shape) + 1
    channels = shape[channel_axis - 1]
    assert model.latent_mean.shape == model.latent_std.shape == (channels,)
    # Latents with a known per-channel offset and scale.
    view = [1] * (len(shape) + 1)
    view[channel_axis] = channels
    offset, scale = torch.linspace(-2, 2, channels).view(view), torch.linspace(0.5, 3, channels).view(view)
    latents = [offset + scale * torch.randn(4, *shape) for _ in range(8)]
    mean, std = model.fit_latent_statistics(latents)
    per_channel = torch.cat(latents).movedim(channel_axis, -1).reshape(-1, channels)  # independent reference
    torch.testing.assert_close(mean, per_channel.mean(0), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(std, per_channel.std(0, unbiased=False), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(model.latent_mean, mean)
    normalized = model.normalize_latent(latents[0])
    torch.testing.assert_close(model.denormalize_latent(normalized), latents[0], atol=1e-5, rtol=1e-5)
    stacked = torch.cat([model.normalize_latent(z) for z in latents])
    normalized_mean, _ = latent_statistics([stacked], model.latent_channel_dim)
    torch.testing.assert_close(normalized_mean, torch.zeros(channels), atol=1e-4, rtol=0)
    fresh = preset()
    fresh.load_state_dict(model.state_dict())
    torch.testing.assert_close(fresh.latent_std, model.latent_std)
    assert model.normalize_latent(model.encode(model.inputs_from_batch(batch)).mode()).shape == (B, *shape)


def test_patched_models_read_their_features_at_patch_resolution(batch):
    model = grid_patched().eval()
    latent = model.encode(model.inputs_from_batch(batch)).mode()
    assert latent.shape == (B, 8, 8, 8, 8)
    assert model.decoder_features(latent).shape == (B, 8, 16, 16, 16)
    with pytest.raises(ValueError, match="not divisible"):
        GridVAE(resolution=36, channels=(8, 16), patch_size=4)
    planes = triplane_with_points().eval()
    latent = planes.encode(planes.inputs_from_batch(batch)).mode()
    assert latent.shape == (B, 3, 8, 8, 8)
    assert planes.decoder_features(latent).shape == (B, 3, 16, 16, 16)
    unpatched = TriplaneVAE(
        resolution=32,
        channels=(16, 32),
        latent_channels=8,
        feature_channels=16,
        head_hidden=32,
        head_layers=1,
        patch_size=2,
        unpatch_features=True,
    ).eval()
    latent = unpatched.encode(unpatched.inputs_from_batch(batch)).mode()
    assert latent.shape == (B, 3, 8, 8, 8)
    assert unpatched.decoder_features(latent).shape == (B, 3, 16, 32, 32)
    assert unpatched.decode(latent, torch.zeros(B, 5, 3)).shape == (B, 5)
    with pytest.raises(ValueError, match="patch_size > 1"):
        TriplaneVAE(resolution=32, channels=(16, 32), unpatch_features=True)
    one_level = TriplaneVAE(
        resolution=32,
        channels=(16,),
        blocks_per_level=2,
        latent_channels=8,
        feature_channels=16,
        head_hidden=32,
        head_layers=1,
        patch_size=2,
        unpatch_features=True,
    ).eval()
    latent = one_level.encode(one_level.inputs_from_batch(batch)).mode()
    assert latent.shape == (B, 3, 8, 16, 16)  # no downsampling: the latent stays at R / p
    assert one_level.decoder_features(latent).shape == (B, 3, 16, 32, 32)


def test_point_pooling_averages_point_embeddings_into_their_nearest_plane_cells():
    from native3d.autoencoders.triplane import PointPooling

    torch.manual_seed(0)
    pooling = PointPooling(channels=4, resolution=5)  # corners at -1, -0.5, 0, 0.5, 1
    points = torch.tensor([[[0.5, -1.0, 0.0], [0.45, -0.9, 0.9], [-1.0, 1.0, 1.0]]])  # (1, 3, 3)
    surface = torch.cat([points, torch.nn.functional.normalize(torch.ones(1, 3, 3), dim=-1)], dim=-1)
    planes = pooling(surface)  # (1, 3, 4, 5, 5)
    h = pooling.embed(surface[..., :3], surface[..., 3:])
    h = (h + pooling.mlp(h))[0]  # (3, 4): each point's embedding
    # xy plane: points 0 and 1 share cell (x=3, y=0); point 2 is at (0, 4).
    torch.testing.assert_close(planes[0, 0, :, 3, 0], (h[0] + h[1]) / 2)
    torch.testing.assert_close(planes[0, 0, :, 0, 4], h[2])
    # yz plane: point 0 at (y=0, z=2), point 1 at (0, 4), point 2 at (4, 4).
    torch.testing.assert_close(planes[0, 2, :, 0, 2], h[0])
    torch.testing.assert_close(planes[0, 2, :, 0, 4], h[1])
    filled = (planes[0].abs().sum(1) > 0).sum(dim=(1, 2))
    assert filled.tolist() == [2, 3, 3], "cells no point reaches stay zero"
    model = triplane_with_points()
    with pytest.raises(ValueError, match="pools surface points"):
        model.encode(torch.zeros(1, 3, 2, 32, 32))


def test_farthest_point_sampling_spreads_out():
    torch.manual_seed(0)
    points = torch.rand(3, 2000, 3)
    index = farthest_point_sample(points, 64)
    assert index.shape == (3, 64)
    assert all(len(set(row.tolist())) == 64 for row in index)

    def covering_radius(idx):  # largest distance from any point to its nearest chosen point
        chosen = torch.gather(points, 1, idx[..., None].expand(-1, -1, 3))
        return torch.cdist(points, chosen).amin(-1).amax(-1)

    random_index = torch.stack([torch.randperm(2000)[:64] for _ in range(3)])
    assert (covering_radius(index) < 0.8 * covering_radius(random_index)).all()
    torch.manual_seed(5)
    a = farthest_point_sample(points, 16, random_start=True)
    torch.manual_seed(5)
    torch.testing.assert_close(a, farthest_point_sample(points, 16, random_start=True))
    assert (farthest_point_sample(points, 16)[:, 0] == 0).all()


def test_fpsample_and_the_torch_loop_pick_the_same_points_in_the_same_order():
    from native3d.autoencoders.fps import farthest_point_sample_cpu, farthest_point_sample_torch

    points = torch.rand(2, 3000, 3, generator=torch.Generator().manual_seed(1))
    start = torch.tensor([0, 1234])
    fast = farthest_point_sample_cpu(points, 100, start)
    assert fast.dtype == torch.long and (fast[:, 0] == start).all()
    torch.testing.assert_close(fast, farthest_point_sample_torch(points, 100, start))
    torch.testing.assert_close(fast[:, :40], farthest_point_sample_cpu(points, 40, start))  # a prefix


def test_sample_volume_follows_schema_axis_order():
    axis = torch.as_tensor(grid_coords(9), dtype=torch.float32)
    x, y, z = torch.meshgrid(axis, axis, axis, indexing="ij")
    volume = torch.stack([x + 2 * y + 3 * z, x * 0 + 1])[None]  # (1, 2, R, R, R) indexed [x, y, z]
    points = torch.rand(1, 50, 3) * 2 - 1
    features = sample_volume(volume, points)  # trilinear is exact on a linear function
    torch.testing.assert_close(features[..., 0], points @ torch.tensor([1.0, 2.0, 3.0]), atol=1e-5, rtol=0)
    torch.testing.assert_close(features[..., 1], torch.ones(1, 50))


def test_sample_planes_follows_schema_axis_order():
    axis = torch.as_tensor(grid_coords(9), dtype=torch.float32)
    a, b = torch.meshgrid(axis, axis, indexing="ij")  # plane `ab` is indexed [a, b]
    planes = torch.stack([a + 10 * b] * 3)[None, :, None]  # (1, P, 1, R, R)
    points = torch.rand(1, 50, 3) * 2 - 1
    features = sample_planes(planes, points)[..., 0]  # (1, Q, P)
    x, y, z = points.unbind(-1)
    expected = torch.stack([x + 10 * y, x + 10 * z, y + 10 * z], dim=-1)
    torch.testing.assert_close(features, expected, atol=1e-5, rtol=0)


def test_axis_context_pools_the_shared_axis():
    R = 5
    f = torch.arange(R, dtype=torch.float32)
    xz = f[:, None].expand(R, R)  # depends on x only
    planes = torch.stack([torch.zeros(R, R), xz, torch.zeros(R, R)])[None, :, None]  # (1, P, 1, R, R)
    context = axis_context(planes)  # (1, P, 2, R, R)
    torch.testing.assert_close(context[0, 0, 0], f[:, None].expand(R, R))  # xy gets x from xz, along y
    torch.testing.assert_close(context[0, 2, 1], f.mean().expand(R, R))  # yz gets z from xz (x pooled)


@pytest.mark.parametrize("kind", ["l1", "bce"])
@pytest.mark.parametrize("preset", PRESETS)
def test_overfits_one_sphere_batch(preset, kind, batch):
    torch.manual_seed(0)
    model = preset()
    optimizer = torch.optim.Adam(model.parameters(), lr=2e-3)
    history = []
    for _ in range(30):
        sdf, target, posterior = run(model, batch)
        terms = autoencoder_loss(sdf, target, posterior, kl_weight=1e-4, clamp=TRUNCATION, kind=kind)
        optimizer.zero_grad()
        terms["loss"].backward()
        optimizer.step()
        history.append(terms["recon"].item())
    assert sum(history[-5:]) / 5 < 0.5 * sum(history[:5]) / 5, history


@pytest.mark.parametrize("preset", PRESETS)
def test_bf16_autocast_forward_backward(preset, batch):
    torch.manual_seed(0)
    model = preset()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        sdf, target, posterior = run(model, batch)
        loss = autoencoder_loss(sdf, target, posterior, kl_weight=1e-3, clamp=TRUNCATION)["loss"]
    loss.backward()
    assert torch.isfinite(loss)
    assert all(torch.isfinite(p.grad).all() for p in model.parameters())


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("preset", PRESETS)
def test_bf16_autocast_on_cuda_trains_and_agrees_with_float32(preset, batch):
    torch.manual_seed(0)
    model = preset().cuda()
    cuda_batch = {k: v.cuda() for k, v in batch.items()}
    inputs, (points, target) = model.inputs_from_batch(cuda_batch), model.queries_from_batch(cuda_batch)
    model.eval()
    with torch.no_grad():
        reference = model.decode(model.encode(inputs).mode(), points)
        with torch.autocast("cuda", dtype=torch.bfloat16):
            low = model.decode(model.encode(inputs).mode(), points)
    scale = reference.abs().max()
    assert (low.float() - reference).abs().max() <= 0.05 * scale, "bf16 autocast strays from float32"
    model.train()
    with torch.autocast("cuda", dtype=torch.bfloat16):
        sdf, posterior = model(inputs, points, sample_posterior=True)
        loss = autoencoder_loss(sdf, target, posterior, kl_weight=1e-3, clamp=TRUNCATION)["loss"]
    loss.backward()
    assert torch.isfinite(loss)
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())


@pytest.mark.parametrize("preset", PRESETS)
def test_bce_and_eikonal_give_finite_gradients(preset, batch):
    torch.manual_seed(0)
    model = preset()
    inputs = model.inputs_from_batch(batch)
    points, target = model.queries_from_batch(batch)
    points.requires_grad_()
    sdf, posterior = model(inputs, points)
    terms = autoencoder_loss(
        sdf,
        target,
        posterior,
        kl_weight=1e-3,
        clamp=TRUNCATION,
        kind="bce",
        eikonal_weight=0.1,
        points=points,
        iou_weight=0.5,
    )
    assert set(terms) == {"recon", "kl", "soft_iou", "eikonal", "loss"}
    terms["loss"].backward()
    assert torch.isfinite(terms["loss"]) and terms["eikonal"] > 0 and 0 < terms["soft_iou"] < 1
    grads = [p.grad for p in model.parameters()]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)


def test_loss_terms_values_and_per_sample_reduction():
    target = torch.tensor([[-0.3, 0.05], [0.2, -0.02]])
    posterior = DiagonalGaussian(torch.zeros(2, 4), torch.zeros(2, 4))
    terms = autoencoder_loss(target.clone(), target, posterior, kl_weight=1.0, clamp=0.1, reduction="none")
    assert all(v.shape == (2,) for v in terms.values())
    torch.testing.assert_close(terms["loss"], torch.zeros(2))  # exact prediction, standard-normal posterior
    # Truncation: beyond the band, a target of -0.1 ("at least 0.1 inside") is met by any value below it,
    # but a target inside the band is still an L1 target for a prediction outside it.
    standard = DiagonalGaussian(torch.zeros(1, 4), torch.zeros(1, 4))
    beyond = autoencoder_loss(torch.tensor([[-5.0, 0.05]]), target[:1], standard, 0.0, 0.1)
    torch.testing.assert_close(beyond["recon"], torch.tensor(0.0))
    wrong_side = autoencoder_loss(torch.tensor([[0.5, 0.5]]), target[:1], standard, 0.0, 0.1)
    torch.testing.assert_close(wrong_side["recon"], torch.tensor((0.6 + 0.45) / 2))
    # BCE prefers the right sign.
    right = autoencoder_loss(target, target, posterior, 0.0, 0.1, kind="bce")["recon"]
    wrong = autoencoder_loss(-target, target, posterior, 0.0, 0.1, kind="bce")["recon"]
    assert right < 0.1 < wrong


def test_soft_iou_weighs_a_thin_shape_like_a_thick_one():
    queries = 1000
    thick = torch.where(torch.arange(queries) < 500, -0.05, 0.05)  # half the queries inside
    thin = torch.where(torch.arange(queries) < 20, -0.05, 0.05)  # 2% inside, as a tray
    target = torch.stack([thick, thin])
    posterior = DiagonalGaussian(torch.zeros(2, 4), torch.zeros(2, 4))
    empty = torch.full_like(target, 0.05)  # a decoder that misses every shape's inside
    terms = autoencoder_loss(empty, target, posterior, 0.0, 0.1, kind="bce", iou_weight=1.0, reduction="none")
    assert terms["recon"][1] < terms["recon"][0] / 20, "cross-entropy barely sees the thin shape's loss"
    # IoU sees both
    torch.testing.assert_close(terms["soft_iou"], torch.tensor([1.0, 1.0]), atol=0.05, rtol=0)
    torch.testing.assert_close(terms["loss"], terms["recon"] + terms["soft_iou"])
    sure = autoencoder_loss(
        10 * target, target, posterior, 0.0, 0.1, kind="bce", iou_weight=1.0, reduction="none"
    )
    torch.testing.assert_close(sure["soft_iou"], torch.zeros(2), atol=1e-3, rtol=0)
    # A shape with nothing inside, predicted empty, costs nothing; with a one-point phantom inside, 1/2.
    nothing = torch.full((1, 10), 1.0)
    torch.testing.assert_close(soft_iou_loss(nothing, nothing), torch.zeros(1), atol=1e-6, rtol=0)
    phantom = nothing.clone()
    phantom[0, 0] = -1.0
    torch.testing.assert_close(soft_iou_loss(phantom, nothing), torch.tensor([0.5]), atol=1e-3, rtol=0)


@pytest.mark.parametrize("iou_weight", [0.0, 0.5])
def test_the_training_module_adds_the_soft_iou_term_by_its_weight(batch, iou_weight):
    module = AutoencoderModule(vecset_tiny(), loss="bce", kl_weight=1e-3, iou_weight=iou_weight)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # logging without a trainer
        terms = module.step(
            {**batch, "id": [f"sphere{i}" for i in range(B)]}, "val"
        )  # val: the posterior mode
    assert ("soft_iou" in terms) == (iou_weight > 0)
    expected = terms["recon"] + 1e-3 * terms["kl"] + iou_weight * terms.get("soft_iou", 0.0)
    torch.testing.assert_close(terms["loss"], expected)


def test_kl_closed_form():
    mean, logvar = torch.tensor([[1.0, 0.0]]), torch.tensor([[0.0, 1.0]])
    expected = 0.5 * torch.tensor([1.0, torch.e - 2.0])
    posterior = DiagonalGaussian(mean, logvar)
    torch.testing.assert_close(posterior.kl(reduction="sum"), expected.sum()[None])
    torch.testing.assert_close(posterior.kl(), expected.mean()[None])


def test_fixed_elements_given_exactly_are_kept_by_a_sample_and_left_out_of_the_kl():
    mean, logvar = torch.tensor([[[0.5, 1.0, 0.0]]]), torch.tensor([[[-torch.inf, 0.0, 1.0]]])
    fixed = torch.tensor([True, False, False])
    posterior = DiagonalGaussian(mean, logvar, fixed)
    assert posterior.std[..., 0].item() == 0.0 and posterior.std[..., 1].item() == 1.0
    assert (posterior.sample()[..., 0] == 0.5).all()
    drawn = DiagonalGaussian(mean[..., 1:], logvar[..., 1:])
    torch.testing.assert_close(posterior.kl(), drawn.kl())
    torch.testing.assert_close(posterior.kl(reduction="sum"), drawn.kl(reduction="sum"))


def anchored_vecset() -> VecSetVAE:
    return VecSetVAE(num_latents=16, latent_channels=4, width=32, heads=2, depth=1, token_positions=True)


def test_anchored_tokens_carry_their_surface_points_exactly(batch):
    model = anchored_vecset().eval()
    surface = model.inputs_from_batch(batch)
    posterior = model.encode(surface)
    assert posterior.mean.shape == (B, 16, 3 + 4) and model.latent_shape == (16, 7)
    anchors = posterior.mean[..., :3]
    for points, own in zip(surface[..., :3], anchors):
        assert torch.cdist(own, points).amin(dim=1).max() < 1e-6, "every anchor is one of the surface points"
    assert (posterior.std[..., :3] == 0).all() and (posterior.std[..., 3:] > 0).all()
    torch.testing.assert_close(posterior.sample()[..., :3], anchors)
    features = DiagonalGaussian(posterior.mean[..., 3:], posterior.logvar[..., 3:])
    torch.testing.assert_close(posterior.kl(), features.kl(), msg="the anchors cost no KL")


def test_anchors_given_up_to_a_std_are_jittered_by_a_sample_and_cost_no_kl(batch):
    model = VecSetVAE(
        num_latents=16, latent_channels=4, width=32, heads=2, depth=1, token_positions=True, anchor_std=0.05
    ).eval()
    posterior = model.encode(model.inputs_from_batch(batch))
    torch.testing.assert_close(posterior.std[..., :3], torch.full_like(posterior.mean[..., :3], 0.05))
    jitter = torch.stack([posterior.sample()[..., :3] - posterior.mean[..., :3] for _ in range(50)])
    assert jitter.std().item() == pytest.approx(0.05, rel=0.05)
    features = DiagonalGaussian(posterior.mean[..., 3:], posterior.logvar[..., 3:])
    torch.testing.assert_close(posterior.kl(), features.kl(), msg="the anchors cost no KL")
    with pytest.raises(ValueError, match="anchor_std"):
        VecSetVAE(num_latents=16, latent_channels=4, width=32, heads=2, depth=1, anchor_std=0.05)


def test_an_anchored_head_reads_the_tokens_around_a_point_and_the_null_token_far_from_all():
    torch.manual_seed(0)
    head = QueryCrossAttentionHead(32, heads=2, num_frequencies=6, anchored=True).eval()
    anchors = torch.tensor([[-0.8, 0.0, 0.0], [0.8, 0.0, 0.0]]).repeat(1, 8, 1)  # (1, 16, 3)
    features = torch.cat([torch.randn(1, 16, 32), anchors], -1)
    moved = features.clone()
    moved[0, 0, :32] += 5.0  # token 0, anchored at (-0.8, 0, 0)
    near = anchors[:, :1] + 0.03 * torch.randn(1, 64, 3)
    far = anchors[:, 1:2] + 0.03 * torch.randn(1, 64, 3)
    with torch.no_grad():
        change_near = (head(moved, near) - head(features, near)).abs().mean()
        change_far = (head(moved, far) - head(features, far)).abs().mean()
        assert change_near > 20 * change_far, (change_near, change_far)
        clustered = torch.cat([torch.randn(1, 16, 32), 0.05 * torch.randn(1, 16, 3)], -1)
        corners = torch.tensor([[[1.0, 1.0, 1.0], [-1.0, 1.0, -1.0], [1.0, -1.0, -1.0]]])
        read = head.attention_weights(clustered, corners).sum(-1)  # the tokens' share; the null has the rest
    assert (read < 0.1).all(), read


def test_eikonal_is_zero_for_a_true_sdf():
    points = (torch.rand(2, 100, 3) * 2 - 1).requires_grad_()
    band = torch.ones(2, 100)
    torch.testing.assert_close(
        eikonal_loss(points.norm(dim=-1) - 0.5, points, band), torch.zeros(2), atol=1e-5, rtol=0
    )
    torch.testing.assert_close(
        eikonal_loss(2 * points.norm(dim=-1), points, band), torch.ones(2), atol=1e-5, rtol=0
    )
    with pytest.raises(ValueError):
        eikonal_loss(points.detach().norm(dim=-1), points.detach(), band)


@pytest.mark.parametrize(
    "build",
    [
        lambda: VecSetVAE(num_latents=16, latent_channels=4, width=32, heads=2, depth=1, use_normals=False),
        lambda: VecSetVAE(num_latents=16, latent_channels=4, width=32, heads=1, depth=1),
        lambda: TriplaneVAE(
            resolution=32, channels=(8, 16), latent_channels=4, feature_channels=8, aggregate="concat"
        ),
        lambda: TriplaneVAE(
            resolution=32,
            channels=(8, 16),
            latent_channels=4,
            feature_channels=8,
            patch_size=2,
            unpatch_features=True,
        ),
        lambda: TriplaneVAE(
            resolution=32,
            channels=(8,),
            blocks_per_level=2,
            latent_channels=4,
            feature_channels=8,
            patch_size=2,
            unpatch_features=True,
            aggregate="concat",
            point_channels=4,
        ),
    ],
    ids=[
        "vecset-no-normals",
        "vecset-one-head",
        "triplane-concat",
        "triplane-unpatched",
        "triplane-one-level",
    ],
)
def test_variants_keep_the_contract(build, batch):
    model = build()
    sdf, _, posterior = run(model, batch)
    assert sdf.shape == (B, Q)
    assert posterior.mean.shape == (B, *model.latent_shape)


def test_vecset_qk_norm_reaches_every_attention_layer(batch):
    from native3d.nn.attention import Attention

    model = VecSetVAE(num_latents=16, latent_channels=4, width=32, heads=2, depth=1, qk_norm=True)
    layers = [m for m in model.modules() if isinstance(m, Attention)]
    assert len(layers) == 3  # encoder cross-attention, one self-attention block, the query head
    assert all(
        isinstance(m.q_norm, torch.nn.LayerNorm) and isinstance(m.k_norm, torch.nn.LayerNorm) for m in layers
    )
    plain = VecSetVAE(num_latents=16, latent_channels=4, width=32, heads=2, depth=1)
    assert not any(
        isinstance(m.q_norm, torch.nn.LayerNorm) for m in plain.modules() if isinstance(m, Attention)
    )
    assert run(model, batch)[0].isfinite().all()


def test_wrong_input_resolution_fails_loudly(batch):
    with pytest.raises(ValueError):
        grid_tiny().encode(torch.zeros(1, 1, 16, 16, 16))
    with pytest.raises(ValueError):
        GridVAE(resolution=30, channels=(8, 16, 32))


def test_vecset_trained_with_a_token_list_decodes_at_each_count(batch):
    torch.manual_seed(0)
    model = VecSetVAE(num_latents=32, latent_channels=4, width=32, heads=2, depth=1, train_tokens=[8, 16, 32])
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    seen = set()
    for _ in range(8):
        sdf, target, posterior = run(model, batch)
        seen.add(posterior.mean.shape[1])
        autoencoder_loss(sdf, target, posterior, kl_weight=1e-3, clamp=TRUNCATION)["loss"].backward()
        optimizer.step()
        optimizer.zero_grad()
    assert seen <= {8, 16, 32} and len(seen) > 1, "training draws its token count from the list"
    model.eval()
    inputs, (points, _) = model.inputs_from_batch(batch), model.queries_from_batch(batch)
    assert model.encode(inputs).mean.shape == (B, 32, 4), "eval encodes num_latents tokens"
    for M in (8, 16, 32, 12):
        latent = model.encode(inputs, num_tokens=M).mode()
        assert latent.shape == (B, M, 4)
        sdf = model.decode(latent, points)
        assert sdf.shape == (B, Q) and sdf.isfinite().all()


def sharp_batch(batch: dict, S: int = 128) -> dict:
    """The sphere batch with `sharp` (B, S, 6): points on its equator, as an edge would be."""
    angle = torch.linspace(0, 2 * torch.pi, S + 1)[:S]
    ring = torch.stack([angle.cos(), angle.sin(), torch.zeros(S)], -1) * RADIUS  # (S, 3)
    sharp = torch.cat([ring, ring / RADIUS], -1).expand(B, S, 6)
    return {**batch, "sharp": sharp.half()}


def test_vecset_sharp_tokens_seed_from_the_sharp_points_and_attend_to_both_sets(batch, monkeypatch):
    import native3d.autoencoders.vecset as vecset

    drawn = []

    def recording(points, count, random_start=False):
        drawn.append((points.shape[1], count))
        return farthest_point_sample(points, count, random_start)

    monkeypatch.setattr(vecset, "farthest_point_sample", recording)
    model = VecSetVAE(num_latents=32, latent_channels=4, width=32, heads=2, depth=1, sharp_tokens=8).eval()
    sharp = sharp_batch(batch)
    inputs = model.inputs_from_batch(sharp)
    latent = model.encode(inputs).mode()
    assert latent.shape == (B, 32, 4) and drawn == [(N, 24), (128, 8)]
    drawn.clear()
    assert model.encode(inputs, num_tokens=16).mean.shape == (B, 16, 4)
    assert drawn == [(N, 12), (128, 4)], "the sharp share stays sharp_tokens / num_latents"
    moved = {**sharp, "sharp": sharp["sharp"].clone()}
    moved["sharp"][..., 2] += 0.1
    assert not torch.allclose(model.encode(model.inputs_from_batch(moved)).mode(), latent)
    sdf, _, _ = run(model, sharp)
    assert sdf.shape == (B, Q) and sdf.isfinite().all()


def test_vecset_sharp_tokens_name_the_missing_batch_key(batch):
    from native3d.errors import InputError

    model = VecSetVAE(num_latents=16, latent_channels=4, width=32, heads=2, depth=1, sharp_tokens=4)
    with pytest.raises(InputError, match=r"'sharp'.*--sharp-points"):
        model.inputs_from_batch(batch)
    with pytest.raises(ValueError, match="sharp_tokens"):
        VecSetVAE(num_latents=16, latent_channels=4, width=32, heads=2, depth=1, sharp_tokens=16)
