"""Flow matching: analytic Gaussian sampling, CFG, timestep densities, stats, a real overfit."""

from __future__ import annotations

import json
import math

import pytest
import torch

from vilearn.dit import MMDiT, dit_config
from vilearn.flow import (
    LatentStats,
    TimestepConfig,
    euler_sample,
    flow_matching_loss,
    interpolate,
    sample_latents,
    sample_timesteps,
    shift_sigma,
    time_grid,
    velocity_target,
)


def gaussian_velocity(mean: torch.Tensor, std: torch.Tensor):
    """Exact v*(x, t) = E[x1 - eps | x_t] for x1 ~ N(mean, std^2), x_t = (1-t) eps + t x1.

    Joint Gaussian: Var(x_t) = (1-t)^2 + t^2 std^2, Cov(x1, x_t) = t std^2, Cov(eps, x_t) = 1 - t.
    """

    def model(x, t, cond, visible=None):
        t = t.view(-1, 1, 1)
        var = (1 - t) ** 2 + t**2 * std**2
        return mean + (t * std**2 - (1 - t)) / var * (x - t * mean)

    return model


def test_exact_gaussian_velocity_recovers_mean_and_variance():
    mean, std = torch.tensor([1.5, -2.0, 0.3]), torch.tensor([0.5, 2.0, 1.0])
    noise = torch.randn(10_000, 1, 3, generator=torch.Generator().manual_seed(0))
    # The exact flow of a Gaussian is affine in the noise: with noise standardised per channel
    # the samples' mean and std differ from the target's only by the Euler discretisation.
    noise = (noise - noise.mean(0)) / noise.std(0)
    for shift in (1.0, 3.0):
        x = euler_sample(
            gaussian_velocity(mean, std), noise, torch.zeros(10_000, 1, 1), steps=200, shift=shift
        )
        samples = x.reshape(-1, 3)
        torch.testing.assert_close(samples.mean(0), mean, atol=0.01, rtol=0)
        torch.testing.assert_close(samples.std(0), std, atol=0, rtol=0.02)


def test_cfg_of_two_gaussians_extrapolates_the_mean():
    """Equal-variance Gaussians: v_u + s (v_c - v_u) is exactly the velocity of N(mu_u + s (mu_c -
    mu_u), std^2), so guided samples land there."""
    std = torch.tensor([0.7])
    mu_c, mu_u, scale = torch.tensor([1.0]), torch.tensor([0.0]), 3.0
    cond_model, uncond_model = gaussian_velocity(mu_c, std), gaussian_velocity(mu_u, std)

    def model(x, t, cond, visible=None):  # cond token 1 = conditional, 0 = null
        is_cond = cond[:, :1, :1] > 0.5
        return torch.where(is_cond, cond_model(x, t, cond), uncond_model(x, t, cond))

    n = 10_000
    noise = torch.randn(n, 1, 1, generator=torch.Generator().manual_seed(1))
    x = euler_sample(
        model, noise, torch.ones(n, 1, 1), torch.zeros(n, 1, 1), steps=100, cfg_scale=scale
    )
    assert abs(x.mean().item() - (mu_u + scale * (mu_c - mu_u)).item()) < 0.03
    assert abs(x.std().item() - std.item()) < 0.03
    plain = euler_sample(model, noise, torch.ones(n, 1, 1), torch.zeros(n, 1, 1), steps=100)
    assert abs(plain.mean().item() - 1.0) < 0.03  # cfg_scale 1: the conditional model alone


def test_path_endpoints_and_target():
    x, noise = torch.randn(2, 4, 3), torch.randn(2, 4, 3)
    torch.testing.assert_close(interpolate(x, noise, torch.zeros(2)), noise)
    torch.testing.assert_close(interpolate(x, noise, torch.ones(2)), x)
    t = torch.tensor([0.25, 0.6])
    eps = 1e-3  # finite difference of the path is the velocity target
    slope = (interpolate(x, noise, t + eps) - interpolate(x, noise, t)) / eps
    torch.testing.assert_close(slope, velocity_target(x, noise), atol=1e-3, rtol=1e-3)
    oracle = lambda x_t, t, cond, visible=None: velocity_target(x, noise)  # noqa: E731
    loss = flow_matching_loss(oracle, x, torch.zeros(2, 1, 1), t=t, noise=noise)
    assert loss.loss.item() == 0.0 and loss.per_sample.shape == (2,)


def test_timestep_densities():
    g = torch.Generator().manual_seed(0)
    uniform = sample_timesteps(100_000, TimestepConfig(density="uniform"), generator=g)
    assert abs(uniform.mean().item() - 0.5) < 0.01 and 0 <= uniform.min() and uniform.max() <= 1
    config = TimestepConfig(density="logit-normal", logit_mean=0.5, logit_std=0.8)
    t = sample_timesteps(100_000, config, generator=g).double()
    logit_sigma = torch.log((1 - t) / t)
    assert abs(logit_sigma.mean().item() - 0.5) < 0.01
    assert abs(logit_sigma.std().item() - 0.8) < 0.01
    # shift: sigma' = 3 sigma / (1 + 2 sigma); P(sigma' <= y) = P(sigma <= y / (3 - 2 y))
    shifted = 1 - sample_timesteps(
        100_000, TimestepConfig(density="uniform", shift=3.0), generator=g
    )
    assert abs((shifted <= 0.5).float().mean().item() - 0.5 / 2.0) < 0.01
    assert shift_sigma(torch.tensor(0.5), 3.0).item() == pytest.approx(0.75)
    with pytest.raises(ValueError, match="shift"):
        TimestepConfig(shift=0)


def test_time_grid():
    grid = time_grid(4)
    torch.testing.assert_close(grid, torch.tensor([0.0, 0.25, 0.5, 0.75, 1.0]))
    shifted = time_grid(4, shift=3.0)
    assert shifted[0] == 0 and shifted[-1] == 1 and (shifted.diff() > 0).all()
    assert shifted[2].item() == pytest.approx(1 - 0.75)  # sigma 0.5 -> 0.75
    with pytest.raises(ValueError, match="steps"):
        time_grid(0)


def test_latent_stats_roundtrip(tmp_path):
    latents = torch.randn(50, 16, 4) * torch.tensor([1.0, 2.0, 0.5, 3.0]) + torch.tensor(
        [0, 1, -1, 5.0]
    )
    stats = LatentStats.compute(latents)
    normed = stats.normalize(latents)
    torch.testing.assert_close(normed.reshape(-1, 4).mean(0), torch.zeros(4), atol=1e-5, rtol=0)
    torch.testing.assert_close(normed.reshape(-1, 4).std(0), torch.ones(4), atol=1e-5, rtol=0)
    torch.testing.assert_close(stats.denormalize(normed), latents, atol=1e-5, rtol=1e-5)
    path = tmp_path / "stats.json"
    path.write_text(json.dumps({**stats.to_dict(), "tokens": 16}))
    loaded = LatentStats.load(path)
    torch.testing.assert_close(loaded.mean, stats.mean)
    path.write_text(json.dumps({"mean": [0.0] * 4}))
    with pytest.raises(ValueError, match="missing key 'std'"):
        LatentStats.load(path)
    with pytest.raises(ValueError, match="4 channels but the stats have 3"):
        LatentStats.identity(3).normalize(latents)


def test_latent_stats_move_to_a_device_once():
    stats = LatentStats(torch.tensor([1.0, -2.0]), torch.tensor([2.0, 0.5]))
    moved = stats.to("meta")
    assert moved.mean.device.type == moved.std.device.type == "meta"
    assert stats.mean.device.type == "cpu"  # the original is left where it was
    latents = torch.tensor([[3.0, -1.0]])
    torch.testing.assert_close(stats.to("cpu").normalize(latents), torch.tensor([[1.0, 2.0]]))


TINY = dict(
    in_channels=8, context_in_dim=16, hidden_size=32, num_heads=2, depth=1, depth_single_blocks=1
)


def test_sampling_is_deterministic_and_passes_visibility():
    model = MMDiT(dit_config("tiny", **TINY, vape="va-rope")).eval()
    with torch.no_grad():
        for p in model.final_layer.parameters():  # a non-zero prediction
            p.normal_(0, 0.1)
    cond, uncond = torch.randn(2, 5, 16), torch.zeros(2, 5, 16)
    stats = LatentStats(torch.full((8,), 2.0), torch.full((8,), 0.5))
    visible = model.inference_visibility(2, 12)
    assert visible.sum(1).tolist() == [4, 4]
    kwargs = dict(n_tokens=12, channels=8, steps=4, cfg_scale=3.0, visible=visible, stats=stats)
    a = sample_latents(model, cond, uncond, seed=7, **kwargs)
    b = sample_latents(model, cond, uncond, seed=7, **kwargs)
    c = sample_latents(model, cond, uncond, seed=8, **kwargs)
    assert a.shape == (2, 12, 8) and torch.equal(a, b) and not torch.equal(a, c)
    with pytest.raises(ValueError, match="fixed_partition"):
        sample_latents(model, cond, uncond, seed=7, **{**kwargs, "visible": None})


@pytest.mark.slow
def test_overfit_one_batch_drives_the_loss_down():
    torch.manual_seed(0)
    torch.set_num_threads(1)
    model = MMDiT(dit_config("tiny", **TINY, vape="va-rope"))
    g = torch.Generator().manual_seed(0)
    x, cond = torch.randn(4, 16, 8, generator=g), torch.randn(4, 5, 16, generator=g)
    visible = torch.rand(4, 16, generator=g) < 0.33
    # a fixed validation draw (16 (t, noise) per sample): comparable before and after
    xs, conds, visibles = x.repeat(16, 1, 1), cond.repeat(16, 1, 1), visible.repeat(16, 1)
    eval_t, eval_noise = torch.rand(64, generator=g), torch.randn(64, 16, 8, generator=g)

    def eval_loss(velocity):
        with torch.no_grad():
            loss = flow_matching_loss(velocity, xs, conds, visibles, t=eval_t, noise=eval_noise)
        return loss.loss.item()

    # the best predictor that knows only the batch's per-channel Gaussian fit
    stats = LatentStats.compute(x)
    gaussian = eval_loss(gaussian_velocity(stats.mean, stats.std))
    before = eval_loss(model)
    optimizer = torch.optim.AdamW(model.parameters(), lr=2e-3)
    for _ in range(400):
        loss = flow_matching_loss(model, x, cond, visible, generator=g).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    after = eval_loss(model)
    print(
        f"overfit: validation flow loss {before:.3f} -> {after:.3f} (Gaussian fit {gaussian:.3f})"
    )
    assert math.isfinite(after) and after < 0.65 * before
    assert after < gaussian - 0.1  # it learned this batch, not just its channel statistics


def test_generate_latents_end_to_end():
    from vilearn.dit import ConditionerConfig, build_conditioner, prepare_condition_image
    from vilearn.flow import generate_latents

    conditioner = build_conditioner(
        ConditionerConfig(image_size=32, patch_size=8, width=16, depth=1, num_heads=2), 16
    )
    model = MMDiT(dit_config("tiny", **TINY, vape="va-lpe"))
    image = torch.full((40, 50, 3), 255, dtype=torch.uint8).numpy()
    image[5:30, 10:20] = 30
    stats = LatentStats(torch.zeros(8), torch.full((8,), 2.0))
    kwargs = dict(n_tokens=9, steps=3, cfg_scale=2.0, seed=3, stats=stats)
    a = generate_latents(model, conditioner, [image, image], **kwargs)
    b = generate_latents(model, conditioner, [image, image], **kwargs)
    assert a.shape == (2, 9, 8) and torch.equal(a, b)
    noise = torch.randn(2, 9, 8, generator=torch.Generator().manual_seed(3))
    torch.testing.assert_close(a, 2.0 * noise)  # zero-initialised output: the noise, denormalised
    # a non-zero model: the same as an Euler loop with CFG written out from the convention
    # (t from 0 to 1, x += dt * (v_u + s (v_c - v_u)), first ceil(N / 3) tokens visible)
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 0.2, generator=torch.Generator().manual_seed(5))
        got = generate_latents(model, conditioner, [image, image[:, ::-1].copy()], **kwargs)
        prepared = torch.stack([prepare_condition_image(i, size=32) for i in (image, image[:, ::-1].copy())])
        cond, uncond = conditioner(prepared), conditioner.null(2)
        visible = torch.zeros(2, 9, dtype=torch.bool)
        visible[:, :3] = True
        x = noise.clone()
        for i in range(3):
            t0, t1 = i / 3, (i + 1) / 3
            t = torch.full((2,), t0)
            v_c, v_u = model(x, t, cond, visible=visible), model(x, t, uncond, visible=visible)
            x = x + (t1 - t0) * (v_u + 2.0 * (v_c - v_u))
    torch.testing.assert_close(got, 2.0 * x, atol=1e-5, rtol=1e-5)
    assert (got[0] - got[1]).abs().max() > 1e-2  # the image reaches the latents
    with pytest.raises(ValueError, match="latent stats have 4 channels"):
        generate_latents(
            model, conditioner, [image], **{**kwargs, "stats": LatentStats.identity(4)}
        )
