"""Tests for medsynth.objectives: hand-computed values on tiny tensors plus closed-form properties.

Convention: x0 = data, x1 = N(0, I) noise, x_t = (1 - t) x0 + t x1, velocity x1 - x0.
"""

from __future__ import annotations

import copy
import math

import pytest
import torch

from medsynth.objectives import (
    alpha_bar_from_t,
    composite_loss,
    contrastive_lambda,
    dilate_mask,
    euler_step,
    expand_t,
    interpolate,
    noise_from_velocity,
    rectified_flow_loss,
    region_contrastive_loss,
    sample_timesteps,
    score_from_velocity,
    spatial_consistency_loss,
    temporal_consistency_loss,
    tweedie_corrected_loss,
    tweedie_corrected_velocity,
    tweedie_denoise,
    tweedie_one_step,
    velocity_from_x0,
    velocity_target,
    x0_from_velocity,
    x_prediction_v_loss,
)

D = torch.float64


def close(a: torch.Tensor | float, b: torch.Tensor | float, tol: float = 1e-9) -> bool:
    return torch.allclose(torch.as_tensor(a, dtype=D), torch.as_tensor(b, dtype=D), atol=tol, rtol=0)


# --------------------------------------------------------------------------- rectified flow


def test_interpolate_endpoints_and_per_sample_t():
    g = torch.Generator().manual_seed(0)
    x0 = torch.randn(2, 1, 3, 3, generator=g, dtype=D)
    x1 = torch.randn(2, 1, 3, 3, generator=g, dtype=D)
    assert close(interpolate(x0, x1, 0.0), x0)
    assert close(interpolate(x0, x1, 1.0), x1)
    # per-sample t: sample 0 at t=0.25, sample 1 at t=0.75; with x0 = 0, x1 = 1 the value is t itself
    xt = interpolate(torch.zeros(2, 1, 2, 2, dtype=D), torch.ones(2, 1, 2, 2, dtype=D), torch.tensor([0.25, 0.75]))
    assert close(xt[0], 0.25) and close(xt[1], 0.75)


def test_velocity_target_and_path_inverses():
    g = torch.Generator().manual_seed(1)
    x0, x1 = torch.randn(3, 2, 4, generator=g, dtype=D), torch.randn(3, 2, 4, generator=g, dtype=D)
    t = torch.tensor([0.1, 0.5, 0.9], dtype=D)
    v = velocity_target(x0, x1)
    assert close(v, x1 - x0)
    xt = interpolate(x0, x1, t)
    assert close(x0_from_velocity(v, xt, t), x0)
    assert close(noise_from_velocity(v, xt, t), x1)
    assert close(euler_step(xt, v, t, 0.0), x0)  # one exact step back to the data end


def test_rectified_flow_loss_by_hand():
    # sample 0: x0=[1,2], x1=[3,1] -> target [2,-1]; v=[1,1] -> sq. errors 1, 4 -> mse 2.5
    # sample 1: x0=[0,0], x1=[1,1] -> target [1, 1]; v=[1,3] -> sq. errors 0, 4 -> mse 2.0
    x0 = torch.tensor([[1.0, 2.0], [0.0, 0.0]], dtype=D)
    x1 = torch.tensor([[3.0, 1.0], [1.0, 1.0]], dtype=D)
    v = torch.tensor([[1.0, 1.0], [1.0, 3.0]], dtype=D)
    assert close(rectified_flow_loss(v, x0, x1), (2.5 + 2.0) / 2)  # 2.25
    # weights (2, 0.5): (2*2.5 + 0.5*2.0) / 2 = 3.0
    assert close(rectified_flow_loss(v, x0, x1, weight=torch.tensor([2.0, 0.5])), 3.0)
    assert close(rectified_flow_loss(x1 - x0, x0, x1), 0.0)


def test_sample_timesteps():
    a = sample_timesteps(64, torch.Generator().manual_seed(3))
    b = sample_timesteps(64, torch.Generator().manual_seed(3))
    assert a.shape == (64,) and torch.equal(a, b) and a.min() >= 0 and a.max() <= 1
    ln = sample_timesteps(4000, torch.Generator().manual_seed(4), "logit_normal", logit_mean=1.0)
    assert abs(ln.median().item() - 1 / (1 + math.exp(-1.0))) < 0.02  # median = sigmoid(mean)
    r = sample_timesteps(100, torch.Generator().manual_seed(5), t_min=0.2, t_max=0.4)
    assert r.min() >= 0.2 and r.max() <= 0.4
    with pytest.raises(ValueError):
        sample_timesteps(2, None, "cosine")  # type: ignore[arg-type]


# --------------------------------------------------------------------------- MedSyn2 x-prediction


def test_x_prediction_v_loss_by_hand():
    # x0=[0,2], x1=[1,1], t=0.5 -> x_t=[0.5,1.5]; x0_hat=[0,1] -> v=(x_t-x0_hat)/0.5=[1,1]
    # target x1-x0=[1,-1] -> sq. errors 0, 4 -> 2.0  (= mean((x0_hat-x0)^2)/t^2 = 0.5/0.25)
    x0, x1 = torch.tensor([[0.0, 2.0]], dtype=D), torch.tensor([[1.0, 1.0]], dtype=D)
    x0_hat = torch.tensor([[0.0, 1.0]], dtype=D)
    assert close(velocity_from_x0(x0_hat, interpolate(x0, x1, 0.5), 0.5), [[1.0, 1.0]])
    assert close(x_prediction_v_loss(x0_hat, x0, x1, 0.5), 2.0)


def test_x_prediction_equals_v_mse_of_implied_velocity_and_clamps():
    g = torch.Generator().manual_seed(6)
    x0, x1, x0_hat = (torch.randn(4, 1, 3, 3, generator=g, dtype=D) for _ in range(3))
    t = torch.tensor([0.05, 0.3, 0.7, 1.0], dtype=D)
    v_implied = velocity_from_x0(x0_hat, interpolate(x0, x1, t), t)
    assert close(x_prediction_v_loss(x0_hat, x0, x1, t), rectified_flow_loss(v_implied, x0, x1), 1e-10)
    # below the clamp the divisor is t_min = 0.05: loss = mse(x0_hat - x0) / 0.05^2, finite at t = 0
    for t_small in (0.0, 0.01):
        expected = (x0_hat - x0).pow(2).mean() / 0.05**2
        assert close(x_prediction_v_loss(x0_hat, x0, x1, t_small), expected, 1e-8)


# --------------------------------------------------------------------------- Tweedie, closed form
# x0 ~ N(mu, s^2), x1 ~ N(0, 1), independent, per element.  x_t ~ N(m_t, V_t) with
# m_t = (1-t) mu, V_t = (1-t)^2 s^2 + t^2;  Cov(x0, x_t) = (1-t) s^2, Cov(x1, x_t) = t.
#   score(x)      = -(x - m_t) / V_t
#   E[x0 | x_t=x] = mu + (1-t) s^2 (x - m_t) / V_t
#   v*(x, t)      = E[x1 - x0 | x] = t (x - m_t)/V_t - mu - (1-t) s^2 (x - m_t)/V_t
MU, S = 0.7, 0.5


def _gauss(t: float | torch.Tensor):
    t = torch.as_tensor(t, dtype=D)
    return (1 - t) * MU, (1 - t) ** 2 * S**2 + t**2


def v_star(x: torch.Tensor, t: float | torch.Tensor) -> torch.Tensor:
    """Analytic optimal velocity; ``t`` a float or a per-sample ``(B,)`` vector (as ``v_fn`` receives)."""
    t = expand_t(torch.as_tensor(t, dtype=D), x)
    m, var = _gauss(t)
    return t * (x - m) / var - MU - (1 - t) * S**2 * (x - m) / var


def post_mean(x: torch.Tensor, t: float) -> torch.Tensor:
    m, var = _gauss(t)
    return MU + (1 - t) * S**2 * (x - m) / var


def test_closed_form_velocity_is_the_regression_target():
    # independent check of the analytic v*: least-squares fit of (x1 - x0) on [x_t, 1] from samples
    g = torch.Generator().manual_seed(7)
    n, t = 40000, 0.4
    x0 = MU + S * torch.randn(n, generator=g, dtype=D)
    x1 = torch.randn(n, generator=g, dtype=D)
    xt = interpolate(x0, x1, t)
    coef = torch.linalg.lstsq(torch.stack([xt, torch.ones_like(xt)], 1), (x1 - x0)[:, None]).solution[:, 0]
    probe = torch.tensor([-1.0, 0.0, 1.0], dtype=D)
    assert torch.allclose(coef[0] * probe + coef[1], v_star(probe, t), atol=0.03)


@pytest.mark.parametrize("t", [0.2, 0.5, 0.8])
def test_score_and_tweedie_denoise_on_gaussian_closed_form(t: float):
    x = torch.linspace(-2, 2, 9, dtype=D).reshape(1, 1, 9)
    v = v_star(x, t)
    m, var = _gauss(t)
    score = score_from_velocity(v, x, t)
    assert close(score, -(x - m) / var, 1e-12)
    assert close(tweedie_denoise(x, t, score), post_mean(x, t), 1e-12)
    assert close(tweedie_denoise(x, t, score), x0_from_velocity(v, x, t), 1e-12)


def test_one_step_map_on_gaussian_closed_form():
    z = torch.linspace(-2, 2, 5, dtype=D).reshape(5, 1)
    # uncorrected map (abar = 1) from pure noise: z - v*(z, 1) = z - (z - mu) = mu = E[x0 | x1 = z]
    assert close(tweedie_one_step(z, v_star, abar=1.0), MU, 1e-12)
    # ... and from t = 0.5 it returns the Tweedie posterior mean E[x0 | x_0.5]
    assert close(tweedie_one_step(z, v_star, abar=1.0, t=0.5), post_mean(z, 0.5), 1e-12)
    # full correction at t = 1 (abar(1) = 0, score(z, 1) = -z) applied to the plain v*:
    # T = z - v* + (1 - 0)(-z) = mu - z  (the correction only pays off for a model trained with it)
    assert close(tweedie_one_step(z, v_star), MU - z, 1e-12)


@pytest.mark.parametrize("t", [1.0, 0.5, 0.3])
def test_one_step_map_with_model_trained_on_corrected_loss(t: float):
    # "variance" mapping: 1 - abar = t^2, score = -(x + (1-t) v)/t, so the corrected field is
    # u = v + t x + t (1-t) v. Its minimiser satisfies u = v*, i.e. v_c = (v* - t x) / (1 + t (1-t)).
    def v_c(x: torch.Tensor, tv: torch.Tensor) -> torch.Tensor:
        return (v_star(x, tv) - t * x) / (1 + t * (1 - t))

    x = torch.linspace(-2, 2, 5, dtype=D).reshape(5, 1)
    tv = torch.full((5,), t, dtype=D)
    assert close(tweedie_corrected_velocity(v_c(x, tv), x, tv), v_star(x, tv), 1e-12)
    assert close(tweedie_one_step(x, v_c, t=t), post_mean(x, t), 1e-12)


def test_one_step_with_external_score_and_snr_mapping():
    # analytic score passed in; snr mapping at t=0.5: abar = 0.25/(0.25+0.25) = 0.5 -> c = 0.5
    t = 0.5
    x = torch.linspace(-1, 1, 3, dtype=D).reshape(3, 1)
    m, var = _gauss(t)
    score_fn = lambda y, tv: -(y - m) / var  # noqa: E731
    expected = x - t * (v_star(x, t) - 0.5 * score_fn(x, None))
    assert close(tweedie_one_step(x, v_star, t=t, score_fn=score_fn, mapping="snr"), expected, 1e-12)


def test_alpha_bar_mappings():
    # variance: 1 - t^2 -> t=0.5: 0.75;  snr: (1-t)^2/((1-t)^2+t^2) -> t=0.5: 0.5, t=0.25: 0.5625/0.625 = 0.9
    assert close(alpha_bar_from_t(0.5), 0.75) and close(alpha_bar_from_t(0.5, "snr"), 0.5)
    assert close(alpha_bar_from_t(torch.tensor(0.25, dtype=D), "snr"), 0.9, 1e-12)
    assert close(alpha_bar_from_t(0.25, "snr"), 0.9, 1e-6)  # float input -> default dtype
    for mapping in ("variance", "snr"):
        assert close(alpha_bar_from_t(0.0, mapping), 1.0) and close(alpha_bar_from_t(1.0, mapping), 0.0)


def test_tweedie_corrected_loss_by_hand():
    # x0=0, x1=1, t=0.5 -> x_t=0.5, target 1. v=0.  abar = 1 - 0.25 = 0.75 -> c = 0.25
    # score = -(0.5 + 0.5*0)/0.5 = -1 -> u = 0 - 0.25*(-1) = 0.25 -> loss (1 - 0.25)^2 = 0.5625
    x0, x1 = torch.zeros(1, 1, dtype=D), torch.ones(1, 1, dtype=D)
    v = torch.zeros(1, 1, dtype=D, requires_grad=True)
    loss = tweedie_corrected_loss(v, x0, x1, 0.5)
    assert close(loss, 0.5625)
    # gradient through the score: u = 1.25 v + 0.25 -> dL/dv = -2 (1 - u) 1.25 = -1.875
    (g,) = torch.autograd.grad(loss, v)
    assert close(g, -1.875)
    # detached score: dL/dv = -2 (1 - u) = -1.5
    (g,) = torch.autograd.grad(tweedie_corrected_loss(v, x0, x1, 0.5, detach_score=True), v)
    assert close(g, -1.5)
    # abar = 1 removes the correction: (1 - 0)^2 = 1;  external score 2: u = -0.25*2 = -0.5 -> 2.25
    assert close(tweedie_corrected_loss(v, x0, x1, 0.5, abar=1.0), 1.0)
    assert close(tweedie_corrected_loss(v, x0, x1, 0.5, score=torch.full((1, 1), 2.0, dtype=D)), 2.25)


# --------------------------------------------------------------------------- composite (ViCTr)


def test_composite_loss_by_hand_2d():
    # constant images: x0 = 0.5, x1 = 0, t = 0.5 -> x_t = 0.25, target v = -0.5
    # v_pred = -0.3 -> L_diff = 0.2^2 = 0.04; x0_hat = 0.25 + 0.5*0.3 = 0.4 -> L2 = 0.1^2 = 0.01
    # SSIM of constants (sigma = 0): (2*0.4*0.5 + C1)/(0.4^2 + 0.5^2 + C1), C1 = (0.01*1)^2 = 1e-4
    x0 = torch.full((1, 1, 8, 8), 0.5, dtype=D)
    x1 = torch.zeros_like(x0)
    v = torch.full_like(x0, -0.3)
    ssim = 1 - (0.4 + 1e-4) / (0.41 + 1e-4)
    out = composite_loss(v, x0, x1, 0.5, data_range=1.0, win_size=3)
    assert close(out.diff, 0.04, 1e-9) and close(out.l2, 0.01, 1e-9) and close(out.ssim, ssim, 1e-4)  # MONAI SSIM runs in float32
    assert close(out.total, 0.05 + ssim, 1e-4)
    w = composite_loss(v, x0, x1, 0.5, weights={"l2": 2.0, "ssim": 0.5}, data_range=1.0, win_size=3)
    assert close(w.total, 0.04 + 0.02 + 0.5 * ssim, 1e-4)
    with pytest.raises(ValueError):
        composite_loss(v, x0, x1, 0.5, weights={"lpips": 1.0})


def test_composite_loss_3d_decoder_and_zero_at_truth():
    # latent -> pixel decoder z -> 2z. x0 = 0.5, x_t = 0.25, v = -0.3 -> latent x0_hat = 0.4
    # pixels: 0.8 vs 1.0 -> L2 0.04; SSIM, data_range 2: C1 = 4e-4 -> (1.6 + 4e-4)/(0.64 + 1 + 4e-4)
    x0 = torch.full((1, 1, 5, 5, 5), 0.5, dtype=D)
    x1 = torch.zeros_like(x0)
    out = composite_loss(torch.full_like(x0, -0.3), x0, x1, 0.5, decode=lambda z: 2 * z)
    assert close(out.l2, 0.04, 1e-9)
    # float32 SSIM: the variance of a constant volume comes out ~1e-7, not 0 (3D, 125-tap window)
    assert close(out.ssim, 1 - 1.6004 / 1.6404, 1e-3)
    g = torch.Generator().manual_seed(8)
    x0 = torch.rand(2, 1, 6, 6, 6, generator=g, dtype=D) * 2 - 1
    x1 = torch.randn(2, 1, 6, 6, 6, generator=g, dtype=D)
    v = (x1 - x0).clone().requires_grad_(True)
    exact = composite_loss(v, x0, x1, torch.tensor([0.3, 0.8]))
    assert exact.total.item() == pytest.approx(0.0, abs=1e-6)
    (exact.total + composite_loss(v + 0.1, x0, x1, 0.3).total).backward()
    assert v.grad is not None and torch.isfinite(v.grad).all()


# --------------------------------------------------------------------------- consistency (ViCTr stage 2)


def test_temporal_consistency_by_hand():
    # MSE([1,2], [1,0]) = (0 + 4)/2 = 2
    assert close(temporal_consistency_loss(torch.tensor([[1.0, 2.0]]), torch.tensor([[1.0, 0.0]])), 2.0)
    # K=3 timesteps on dim 1: a=[0,1,3], b=[0,1,1] -> align (0+0+4)/3; steps a=[1,2], b=[1,0] -> (0+4)/2
    a, b = torch.tensor([[0.0, 1.0, 3.0]]), torch.tensor([[0.0, 1.0, 1.0]])
    assert close(temporal_consistency_loss(a, b, time_dim=1), 4 / 3 + 2, 1e-6)


def test_spatial_consistency_by_hand():
    # z_a = [[1,2],[3,4]], z_b = 0: MSE = (1+4+9+16)/4 = 7.5
    # d/dH z_a = [[2,2]] -> 4;  d/dW z_a = [[1],[1]] -> 1;  mean 2.5 -> total 10
    za = torch.tensor([[[[1.0, 2.0], [3.0, 4.0]]]])
    assert close(spatial_consistency_loss(za, torch.zeros_like(za)), 10.0, 1e-6)
    assert close(spatial_consistency_loss(za, torch.zeros_like(za), grad_weight=0.0), 7.5, 1e-6)


def test_consistency_zero_for_identical_networks_positive_otherwise():
    torch.manual_seed(9)
    base = torch.nn.Conv3d(1, 1, 3, padding=1).double().requires_grad_(False)
    adapted = copy.deepcopy(base).requires_grad_(True)
    xt = torch.randn(2, 1, 4, 4, 4, dtype=D)
    t, t_prev = torch.tensor([0.6, 0.4], dtype=D), torch.tensor([0.5, 0.3], dtype=D)

    def losses(net_a: torch.nn.Module) -> tuple[torch.Tensor, torch.Tensor]:
        va, vb = net_a(xt), base(xt)
        za, zb = euler_step(xt, va, t, t_prev), euler_step(xt, vb, t, t_prev)
        traj_a = torch.stack([net_a(xt), net_a(0.5 * xt)], dim=1)
        traj_b = torch.stack([base(xt), base(0.5 * xt)], dim=1)
        return temporal_consistency_loss(traj_a, traj_b, time_dim=1), spatial_consistency_loss(za, zb)

    assert all(loss.item() == 0.0 for loss in losses(adapted))
    with torch.no_grad():
        adapted.weight.add_(0.05)
    temporal, spatial = losses(adapted)
    assert temporal.item() > 0 and spatial.item() > 0
    (temporal + spatial).backward()
    assert adapted.weight.grad is not None and base.weight.grad is None


# --------------------------------------------------------------------------- MAISI-v2 contrastive


def _line(values: list[float]) -> torch.Tensor:
    return torch.tensor(values, dtype=D).reshape(1, 1, 1, -1)


def test_region_contrastive_by_hand():
    # 1x7 image, ROI at index 3; dilation radius 1 covers 2..4 -> background = {0, 1, 5, 6}
    mask = _line([0, 0, 0, 1, 0, 0, 0])
    pred_p = torch.zeros(1, 1, 1, 7, dtype=D)
    pred = _line([0.2, 0.0, 5.0, 1.5, 5.0, 0.0, -0.4])  # ring (2, 4) counts in neither term
    out = region_contrastive_loss(pred, pred_p, mask)
    # D_roi = 1.5 -> L_roi = -min(1.5, 2) = -1.5;  L_bg = (0.2 + 0 + 0 + 0.4)/4 = 0.15
    assert close(out.d_roi, [1.5], 1e-6) and close(out.roi, -1.5, 1e-6) and close(out.bg, 0.15, 1e-6)
    assert close(out.total, -1.35, 1e-6)
    # the variant that compares pred_perturbed with a reference (e.g. the flow target) in background
    ref = _line([1.0, 0, 0, 0, 0, 0, 1.0])
    assert close(region_contrastive_loss(pred, pred_p, mask, background_reference=ref).bg, 0.5, 1e-6)


def test_region_contrastive_delta_clamp_gradient():
    mask = _line([0, 0, 0, 1, 1, 0, 0, 0])
    base = torch.zeros(1, 1, 1, 8, dtype=D)
    # below delta: D_roi = 1 -> dL_roi/dpred = -sign(diff)/(n_roi * C) = -1/2 on each ROI voxel
    pred = _line([0, 0, 0, 1, 1, 0, 0, 0]).requires_grad_(True)
    (g,) = torch.autograd.grad(region_contrastive_loss(pred, base, mask).roi, pred)
    assert close(g[..., 3:5], -0.5, 1e-6)
    # above delta: D_roi = 3 > 2 -> L_roi = -2 and zero gradient
    pred = _line([0, 0, 0, 3, 3, 0, 0, 0]).requires_grad_(True)
    out = region_contrastive_loss(pred, base, mask, delta=2.0)
    assert close(out.roi, -2.0, 1e-6)
    (g,) = torch.autograd.grad(out.roi, pred)
    assert close(g, 0.0)


def test_region_contrastive_background_zero_and_resizing():
    g = torch.Generator().manual_seed(10)
    mask = torch.zeros(2, 1, 6, 6, 6, dtype=D)
    mask[:, :, 2:4, 2:4, 2:4] = 1
    near = dilate_mask(mask, 1)
    pred = torch.randn(2, 2, 6, 6, 6, generator=g, dtype=D)
    other = pred + near * torch.randn(2, 2, 6, 6, 6, generator=g, dtype=D)  # differ only in dilated ROI
    out = region_contrastive_loss(pred, other, mask)
    assert out.bg.item() == 0.0 and out.roi.item() < 0
    # mask given on a 2x finer grid than the prediction (label grid vs latent grid): nearest resize
    fine = torch.zeros(1, 1, 8, 8)
    fine[..., 4:6, 4:6] = 1  # -> coarse ROI at (2, 2) of a 4x4 grid
    pred = torch.zeros(1, 1, 4, 4)
    pred[..., 2, 2] = 1.0
    res = region_contrastive_loss(pred, torch.zeros_like(pred), fine)
    assert close(res.d_roi, [1.0], 1e-4) and res.bg.item() == 0.0
    # empty ROI contributes nothing to L_roi
    assert region_contrastive_loss(pred, torch.zeros_like(pred), torch.zeros(1, 4, 4)).roi.item() == 0.0


def test_contrastive_lambda_schedule():
    assert [contrastive_lambda(e) for e in (0, 29, 30, 59)] == [0.01, 0.01, 0.001, 0.001]
    assert contrastive_lambda(7, [(0, 1.0), (5, 0.5), (10, 0.1)]) == 0.5
    with pytest.raises(ValueError):
        contrastive_lambda(-1)
