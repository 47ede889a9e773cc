"""Distribution matching distillation: the surrogate's gradient, the one-step map and the two players."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from medsynth.generator.distill import DistillationPair, DistributionMatchingStep
from medsynth.objectives import distribution_matching_loss, one_step_sample, regression_loss
from medsynth.train.loop import save_model

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_surrogate_gradient_is_the_normalised_score_difference():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(3, 2, 4, 4, generator=g, requires_grad=True)
    real, fake = torch.randn(3, 2, 4, 4, generator=g), torch.randn(3, 2, 4, 4, generator=g)
    distribution_matching_loss(x, real, fake).backward()
    w = (x.detach() - real).abs().mean(dim=(1, 2, 3), keepdim=True)
    expected = (fake - real) / w / x.numel()
    assert torch.allclose(x.grad, expected, atol=1e-7)


def test_no_gradient_when_fake_and_real_scores_agree():
    x = torch.randn(2, 1, 3, 3, requires_grad=True)
    real = torch.randn(2, 1, 3, 3)
    loss = distribution_matching_loss(x, real, real.clone())
    loss.backward()
    assert float(loss.detach()) == 0.0 and torch.count_nonzero(x.grad) == 0


def test_one_step_sample_and_regression():
    gen = torch.Generator().manual_seed(0)  # its own draws: the global RNG's state depends on the tests before
    x, z = torch.randn(2, 3, 4, 4, generator=gen), torch.randn(2, 3, 4, 4, generator=gen)
    # the straight coupling's velocity maps z to x, up to the rounding of z - (z - x) (|z| ~ 3: ~3e-7)
    assert torch.allclose(one_step_sample(z - x, z), x, rtol=0, atol=1e-6)
    assert float(regression_loss(x, x)) == 0.0
    assert torch.isclose(regression_loss(x, x + 2.0), torch.tensor(4.0))


class _Velocity(nn.Module):
    """predict()-compatible toy backbone: v = a * x + b (ignores text and mask)."""

    def __init__(self, a: float, b: float):
        super().__init__()
        self.a, self.b = nn.Parameter(torch.tensor(a)), nn.Parameter(torch.tensor(b))
        self.config = type("C", (), {"in_channels": 2})()

    def forward(self, sample, timestep, encoder_hidden_states=None, **kwargs):
        return type("O", (), {"sample": self.a * sample[:, :1] + self.b})()


def _step(teacher, guidance=1.0):
    return DistributionMatchingStep(torch.zeros(2, 3, 8), torch.ones(2, 3, dtype=torch.bool), 1, teacher,
                                    guidance_scale=guidance)


@pytest.mark.parametrize("guidance", [1.0, 2.0])
def test_each_term_reaches_only_its_player(guidance, monkeypatch):
    import medsynth.generator.distill as distill
    import medsynth.generator.field as field

    for module in (distill, field):  # the players' and the guided teacher's backbone calls
        monkeypatch.setattr(module, "predict", lambda m, x, t, *a, **k: m(x, t).sample)
    teacher = _Velocity(0.5, 0.1).requires_grad_(False)
    pair = DistillationPair(_Velocity(0.3, 0.0), _Velocity(0.7, -0.2))
    batch = {"noise": torch.randn(4, 1, 4, 4), "latent": torch.randn(4, 1, 4, 4), "mask": torch.zeros(4, 1, 4, 4),
             "prompt": torch.zeros(4, dtype=torch.long)}
    terms = _step(teacher, guidance)(pair, batch, 0, torch.Generator().manual_seed(0))
    assert set(terms) == {"dm", "regression", "fake_flow", "dm_gap", "loss"}
    for name, owner, other in (("dm", pair.generator, pair.fake), ("regression", pair.generator, pair.fake),
                               ("fake_flow", pair.fake, pair.generator)):
        pair.zero_grad()
        terms = _step(teacher, guidance)(pair, batch, 0, torch.Generator().manual_seed(0))
        terms[name].backward()
        assert all(p.grad is not None and torch.count_nonzero(p.grad) > 0 for p in owner.parameters()), name
        assert all(p.grad is None or torch.count_nonzero(p.grad) == 0 for p in other.parameters()), name
    assert teacher.a.grad is None


def test_the_final_folder_holds_the_generator_only(tmp_path):
    pair = DistillationPair(nn.Linear(2, 2), nn.Linear(2, 3))
    out = save_model(pair, tmp_path / "final")
    from safetensors.torch import load_file

    weights = load_file(str(out / "model.safetensors"))
    assert {k: tuple(v.shape) for k, v in weights.items()} == {"weight": (2, 2), "bias": (2,)}
