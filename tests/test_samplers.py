"""Samplers (medsynth.sample) and the noise-prediction objective, against closed-form flows.

Fields used (conventions of medsynth.objectives: x0 data, x1 noise, x_t = (1 - t) x0 + t x1, v = x1 - x0):

* point mass at ``c``: ``v(x, t) = (x - c) / t``; every trajectory is the straight line to ``c``.
* affine coupling ``x0 = k x1 + m``: ``v(x, t) = (1 - k) x1 - m`` with ``x1 = (x - (1 - t) m) / ((1 - t) k + t)``;
  straight trajectories, and (unlike the point mass) the field is regular at ``t = 0``.
* Gaussian data ``N(0, s^2 I)``: the exact marginal velocity ``v = x (t - (1 - t) s^2) / sig_t^2`` with
  ``sig_t^2 = (1 - t)^2 s^2 + t^2``; the ODE solution from ``t = 1`` is ``x_t = x1 sig_t``, so ``x1 -> s x1``.
"""

from __future__ import annotations

import pytest
import torch

from medsynth.objectives import (
    DDPM_SCHEDULER_DEFAULTS,
    ddpm_add_noise,
    ddpm_model_time,
    noise_prediction_loss,
    sample_ddpm_timesteps,
    tweedie_one_step,
)
from medsynth.sample import (
    SOLVERS,
    CountingField,
    SampleResult,
    diffusion_sample,
    dopri5,
    dopri5_fixed,
    euler,
    heun,
    make_scheduler,
    solve,
    time_grid,
    tweedie_sampler,
)

pytestmark = pytest.mark.usefixtures("one_torch_thread")

SHAPE = (3, 1, 2, 2)
S = 0.5  # data std of the Gaussian case (!= 1, so the flow is curved)


def _tb(t: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    assert t.shape == (x.shape[0],) and t.dtype == x.dtype
    return t.reshape(-1, *([1] * (x.ndim - 1)))


def _noise(seed: int = 0, dtype: torch.dtype = torch.float64) -> torch.Tensor:
    return torch.randn(SHAPE, generator=torch.Generator().manual_seed(seed), dtype=dtype)


def point_mass_field(c: torch.Tensor):
    def field(x, t):
        return (x - c) / _tb(t, x).clamp_min(1e-6)

    return field


def affine_field(k: float, m: torch.Tensor):
    def field(x, t):
        tt = _tb(t, x)
        x1 = (x - (1 - tt) * m) / ((1 - tt) * k + tt)
        return (1 - k) * x1 - m

    return field


def gaussian_field(x, t):
    tt = _tb(t, x)
    sig2 = (1 - tt) ** 2 * S**2 + tt**2
    return x * (tt - (1 - tt) * S**2) / sig2


# --------------------------------------------------------------------------- time grid


def test_time_grid_uniform_and_shifted():
    g = time_grid(4)
    assert torch.allclose(g, torch.tensor([1.0, 0.75, 0.5, 0.25, 0.0]))
    gs = time_grid(4, shift=3.0, dtype=torch.float64)
    u = torch.tensor([1.0, 0.75, 0.5, 0.25, 0.0], dtype=torch.float64)
    assert torch.allclose(gs, 3 * u / (1 + 2 * u))
    assert gs[0] == 1.0 and gs[-1] == 0.0
    assert bool((gs[1:] < gs[:-1]).all())
    assert gs[2] > 0.5  # shift > 1 keeps more of the grid at high noise
    with pytest.raises(ValueError):
        time_grid(0)
    with pytest.raises(ValueError):
        time_grid(3, shift=0.0)


# --------------------------------------------------------------------------- straight flows


def test_point_mass_euler_exact_and_dopri5_close():
    c = _noise(1)[:1]
    x1 = _noise(0)
    field = point_mass_field(c)
    for steps in (1, 3, 7):
        assert torch.allclose(euler(field, x1, steps), c.expand_as(x1), atol=1e-12)
    assert torch.allclose(euler(field, x1, 5, shift=3.0), c.expand_as(x1), atol=1e-12)
    # The field is singular at t = 0 (all trajectories meet there); dopri5 still gets close.
    assert (dopri5(field, x1) - c).abs().max() < 1e-4


def test_straight_affine_flow_exact_for_all_solvers():
    k, m = 0.4, _noise(2)[:1]
    x1 = _noise(0)
    target = k * x1 + m
    field = affine_field(k, m)
    assert torch.allclose(euler(field, x1, 3), target, atol=1e-12)
    assert torch.allclose(heun(field, x1, 3), target, atol=1e-12)
    assert torch.allclose(heun(field, x1, 2, shift=2.0), target, atol=1e-12)
    assert torch.allclose(dopri5(field, x1), target, atol=1e-8)


# --------------------------------------------------------------------------- curved flow


def test_gaussian_flow_convergence():
    x1 = _noise(0)
    target = S * x1

    def err(x):
        return (x - target).abs().max().item()

    assert err(dopri5(gaussian_field, x1, rtol=1e-6, atol=1e-6)) < 1e-4
    e10, e100 = err(euler(gaussian_field, x1, 10)), err(euler(gaussian_field, x1, 100))
    assert e10 > 1e-3  # the flow is curved: Euler is not exact
    assert e100 < e10 / 5  # first order: ~10x smaller
    assert err(heun(gaussian_field, x1, 10)) < e10 / 5


# --------------------------------------------------------------------------- Tweedie sampler


@pytest.mark.parametrize("mapping", ["variance", "snr"])
def test_tweedie_one_step_matches(mapping):
    x1 = _noise(0)
    out = tweedie_sampler(gaussian_field, x1, 1, mapping=mapping)
    assert torch.allclose(out, tweedie_one_step(x1, gaussian_field, t=1.0, mapping=mapping), atol=1e-12)
    # At t = 1 both mappings give abar = 0 and the velocity-derived score is -x, so T(x) = -v(x, 1).
    assert torch.allclose(out, -gaussian_field(x1, torch.ones(SHAPE[0], dtype=x1.dtype)), atol=1e-12)


def test_tweedie_multi_step_is_euler_on_corrected_field():
    from medsynth.objectives import euler_step, tweedie_corrected_velocity

    x1 = _noise(0)
    x = x1
    for t, tn in ((1.0, 0.5), (0.5, 0.0)):
        tv = torch.full((SHAPE[0],), t, dtype=x.dtype)
        x = euler_step(x, tweedie_corrected_velocity(gaussian_field(x, tv), x, tv), t, tn)
    assert torch.allclose(tweedie_sampler(gaussian_field, x1, 2), x, atol=1e-12)


# --------------------------------------------------------------------------- solve / NFE


def test_solve_nfe_and_result():
    x1 = _noise(0)
    expected = {"euler": 6, "heun": 12, "tweedie": 6, "dopri5": 37}
    for method in SOLVERS:
        r = solve(method, gaussian_field, x1, 6)
        assert isinstance(r, SampleResult)
        assert r.x0.shape == x1.shape and torch.isfinite(r.x0).all()
        assert r.seconds >= 0.0
        assert r.nfe == expected[method]
    assert torch.allclose(solve("heun", gaussian_field, x1, 6).x0, heun(gaussian_field, x1, 6))
    # dopri5 without steps is adaptive
    assert solve("dopri5", gaussian_field, x1, None).nfe not in (0, 37)


def test_solve_errors():
    x1 = _noise(0)
    with pytest.raises(ValueError, match="euler, heun, dopri5, tweedie"):
        solve("rk4", gaussian_field, x1, 4)
    with pytest.raises(ValueError):
        solve("euler", gaussian_field, x1, None)
    with pytest.raises(RuntimeError, match="max_num_steps"):
        dopri5(gaussian_field, x1, rtol=1e-12, atol=1e-12, max_num_steps=2)


# --------------------------------------------------------------------------- Dormand-Prince, fixed steps

A = 1.7  # the linear field dx/dt = A x, integrated from t = 1 to 0: x0 = x1 exp(-A)


def linear_field(x, t):
    return A * x


def test_dopri5_fixed_takes_exactly_steps_and_is_fifth_order():
    x1 = _noise(0)
    target = x1 * torch.exp(torch.tensor(-A, dtype=x1.dtype))
    errors = {}
    for steps in (1, 2, 3, 16, 32, 50):
        counted = CountingField(linear_field)
        errors[steps] = (dopri5_fixed(counted, x1, steps) - target).abs().max().item()
        assert counted.nfe == 6 * steps + 1  # FSAL: one evaluation at t = 1, then 6 per step, none rejected
    assert 24 < errors[16] / errors[32] < 45  # 5th order: 2^5 = 32
    assert errors[50] < 1e-10


def test_dopri5_fixed_through_solve_and_errors():
    x1 = _noise(0)
    r = solve("dopri5", gaussian_field, x1, 50)
    assert r.nfe == 301 and (r.x0 - S * x1).abs().max() < 1e-8
    assert torch.equal(r.x0, dopri5_fixed(gaussian_field, x1, 50))
    for bad in (0, 2.5):
        with pytest.raises(ValueError, match="steps"):
            dopri5_fixed(gaussian_field, x1, bad)
    with pytest.raises(RuntimeError, match="fixed steps"):  # a non-finite field fails loudly
        dopri5_fixed(lambda x, t: x / 0.0, x1, 4)


def test_dopri5_auto_unchanged():
    from torchdiffeq import odeint

    from medsynth.generator.integrate import SamplingSpec, solve_batch

    x1, calls = _noise(0), []

    def func(t, x):  # torchdiffeq called directly, as dopri5-auto always has been
        calls.append(float(t))
        return gaussian_field(x, torch.full((x.shape[0],), float(t), dtype=x.dtype))

    tol = {"rtol": 1e-3, "atol": 1e-3, "max_num_steps": 500}
    reference = odeint(func, x1, torch.tensor([1.0, 0.0], dtype=torch.float64), rtol=1e-3, atol=1e-3,
                       method="dopri5", options={"max_num_steps": 500})[-1]
    r = solve("dopri5", gaussian_field, x1, None, **tol)
    assert torch.equal(r.x0, reference) and r.nfe == len(calls)
    spec = SamplingSpec.from_config({"dopri5": tol}, "dopri5-auto")
    x0, nfe, _ = solve_batch(gaussian_field, x1, spec, "flow", torch.Generator())
    assert spec.steps is None and torch.equal(x0, reference) and nfe == len(calls)
    fixed = SamplingSpec.from_config({"dopri5": tol}, "dopri5-50")
    x0, nfe, _ = solve_batch(gaussian_field, x1, fixed, "flow", torch.Generator())
    assert fixed.steps == 50 and nfe == 301 and torch.equal(x0, dopri5_fixed(gaussian_field, x1, 50))


def test_parse_dopri5_runs():
    from medsynth.generator.integrate import parse_run

    assert parse_run("dopri5-50") == ("dopri5", 50) and parse_run("dopri5-1") == ("dopri5", 1)
    assert parse_run("dopri5-auto") == ("dopri5", None)
    for bad in ("dopri5-0", "dopri5-x", "dopri5-", "dopri5"):
        with pytest.raises(ValueError, match="steps >= 1"):
            parse_run(bad)


def test_counting_field():
    f = CountingField(gaussian_field)
    x1 = _noise(0)
    euler(f, x1, 4)
    assert f.nfe == 4
    f.reset()
    assert f.nfe == 0


# --------------------------------------------------------------------------- guidance


# --------------------------------------------------------------------------- DDPM / DDIM


def exact_eps_fn(c: torch.Tensor, abar: torch.Tensor):
    def eps_fn(x, k):
        assert k.dtype == torch.int64 and k.shape == (x.shape[0],)
        a = abar[k].to(x.dtype).reshape(-1, *([1] * (x.ndim - 1)))
        return (x - a.sqrt() * c) / (1 - a).sqrt()

    return eps_fn


def test_make_scheduler():
    sched = make_scheduler("ddpm")
    assert sched.config.num_train_timesteps == DDPM_SCHEDULER_DEFAULTS["num_train_timesteps"]
    assert abs(float(sched.betas[0]) - 0.0015) < 1e-7 and abs(float(sched.betas[-1]) - 0.0195) < 1e-7
    assert type(make_scheduler("ddim", beta_schedule="linear")).__name__ == "DDIMScheduler"
    with pytest.raises(ValueError, match="ddpm, ddim"):
        make_scheduler("euler")


@pytest.mark.parametrize("kind", ["ddim", "ddpm"])
def test_diffusion_sample_point_mass(kind):
    c = _noise(1, torch.float32)[:1].clamp(-2, 2)
    x_T = _noise(0, torch.float32)
    eps_fn = exact_eps_fn(c, make_scheduler(kind).alphas_cumprod)
    gen = torch.Generator().manual_seed(0)
    out = diffusion_sample(eps_fn, x_T, kind, 50, generator=gen)
    # With the exact noise of a point mass every x0 estimate is c; the last step (to abar = 1) returns it.
    assert (out - c).abs().max() < 1e-3


def test_ddpm_reproducible_with_generator():
    x_T = _noise(0, torch.float32)

    def eps_fn(x, k):
        return 0.5 * x

    def run(seed):
        return diffusion_sample(eps_fn, x_T, "ddpm", 10, generator=torch.Generator().manual_seed(seed))

    a, b, other = run(3), run(3), run(4)
    assert a.shape == x_T.shape and torch.isfinite(a).all()
    assert torch.equal(a, b)
    assert not torch.allclose(a, other)
    # DDIM with eta = 0 is deterministic without a generator; eta applies to DDIM only
    assert torch.equal(diffusion_sample(eps_fn, x_T, "ddim", 10), diffusion_sample(eps_fn, x_T, "ddim", 10))
    with pytest.raises(ValueError):
        diffusion_sample(eps_fn, x_T, "ddpm", 10, eta=0.5)


# --------------------------------------------------------------------------- noise-prediction objective


def test_noise_prediction_loss():
    noise = _noise(0, torch.float32)
    assert noise_prediction_loss(noise.clone(), noise).item() == 0.0
    eps_pred = torch.tensor([[1.0, 2.0], [3.0, 4.0]])
    zeros = torch.zeros(2, 2)
    assert noise_prediction_loss(eps_pred, zeros).item() == pytest.approx((2.5 + 12.5) / 2)
    assert noise_prediction_loss(eps_pred, zeros, weight=torch.tensor([1.0, 0.0])).item() == pytest.approx(1.25)


def test_ddpm_add_noise_and_timesteps():
    sched = make_scheduler("ddpm")
    x0, noise = _noise(1, torch.float32), _noise(2, torch.float32)
    k = torch.tensor([0, 500, 999])
    a = sched.alphas_cumprod[k].reshape(-1, 1, 1, 1)
    assert torch.allclose(ddpm_add_noise(x0, noise, k, sched), a.sqrt() * x0 + (1 - a).sqrt() * noise, atol=1e-6)
    with pytest.raises(ValueError):
        ddpm_add_noise(x0, noise, k[:2], sched)

    g1, g2 = torch.Generator().manual_seed(5), torch.Generator().manual_seed(5)
    ks = sample_ddpm_timesteps(64, g1, 10)
    assert ks.dtype == torch.int64 and ks.shape == (64,)
    assert int(ks.min()) >= 0 and int(ks.max()) <= 9 and len(set(ks.tolist())) > 1
    assert torch.equal(ks, sample_ddpm_timesteps(64, g2, 10))

    assert torch.allclose(ddpm_model_time(k), torch.tensor([0.0, 0.5, 0.999]))
