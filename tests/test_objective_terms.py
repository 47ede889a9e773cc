"""The generator's training objective (medsynth.generator.objective / .step): one main term plus extra
terms, each checked on its own against values computed by hand."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from medsynth.generator.objective import (
    AdversarialTerm,
    ConsistencyTerms,
    EWCPenalty,
    FlowMatching,
    NoisePrediction,
    RegionContrastive,
    StepState,
)
from medsynth.generator.step import GeneratorStep, contrastive_term
from medsynth.models.prompts import ABSENT_MASK_VALUE
from medsynth.settings import section
from medsynth.train import EWCTerm


def _value(x) -> float:
    return float(torch.as_tensor(x).detach())


class _Linear(nn.Module):
    """A velocity model ``v = a * x + b * (mask channel 0)``: what predict() calls, without a backbone."""

    def __init__(self, a: float, b: float = 0.0):
        super().__init__()
        self.a, self.b = nn.Parameter(torch.tensor(a)), nn.Parameter(torch.tensor(b))

    def forward(self, x, t, *args, **kwargs):
        return self.a * x[:, :1] + self.b * x[:, 1:2]


@pytest.fixture(autouse=True)
def _predict_is_the_module_call(monkeypatch):
    import medsynth.generator.objective as objective

    monkeypatch.setattr(objective, "predict", lambda m, x, t, text, keep, mask=None, **k: m(torch.cat([x, mask], 1), t))


def _state(model, x_t, t, mask, field=None, objective=FlowMatching()):
    x0 = torch.zeros_like(x_t)
    field = model(torch.cat([x_t, mask], 1), t) if field is None else field
    return StepState(model, None, objective, x0, torch.ones_like(x_t), x_t, t, torch.zeros(len(x_t), 2, 3),
                     torch.ones(len(x_t), 2, dtype=torch.bool), mask, field, 0)


def test_flow_matching_is_the_velocity_loss_of_eq1():
    model = _Linear(2.0)
    x0, x1, t = torch.zeros(1, 1, 2, 2), torch.ones(1, 1, 2, 2), torch.tensor([0.5])
    mask = torch.zeros(1, 1, 2, 2)
    loss, x_t, field = FlowMatching()(model, x0, x1, t, None, None, mask)
    assert torch.equal(x_t, torch.full((1, 1, 2, 2), 0.5))  # (1 - t) x0 + t x1
    assert torch.equal(field, torch.ones(1, 1, 2, 2))  # v = 2 * 0.5
    assert _value(loss) == 0.0  # the target x1 - x0 = 1 is met
    with pytest.raises(ValueError, match="objective must be"):
        FlowMatching("ddim")


def test_ewc_penalty_logs_and_adds_the_penalty():
    model = _Linear(3.0)
    ewc = EWCTerm({"a": torch.tensor(1.0)}, {"a": torch.tensor(2.0)}, lam=0.5)
    logged, parts = EWCPenalty(ewc)(_state(model, torch.zeros(1, 1, 2, 2), torch.tensor([0.5]),
                                           torch.zeros(1, 1, 2, 2)))
    expected = 0.5 / 2 * 2.0 * (3.0 - 1.0) ** 2  # lam/2 F (theta - theta*)^2 on the one anchored parameter
    assert _value(logged["ewc"]) == pytest.approx(expected) and parts == [logged["ewc"]]


def test_consistency_terms_vanish_against_the_model_itself_and_weigh_each_part():
    model, reference = _Linear(2.0), _Linear(1.0)
    x_t, t, mask = torch.full((1, 1, 2, 2), 0.5), torch.tensor([0.5]), torch.zeros(1, 1, 2, 2)
    assert ConsistencyTerms(reference)(_state(model, x_t, t, mask)) == ({}, [])
    same, _ = ConsistencyTerms(_Linear(2.0), temporal_weight=1.0, spatial_weight=1.0)(_state(model, x_t, t, mask))
    assert _value(same["temporal"]) == 0.0 and _value(same["spatial"]) == 0.0
    logged, parts = ConsistencyTerms(reference, temporal_weight=0.25)(_state(model, x_t, t, mask))
    assert _value(logged["temporal"]) == pytest.approx((1.0 - 0.5) ** 2)  # MSE(u, v_ref): v = 1 vs 0.5
    assert set(logged) == {"temporal"} and _value(parts[0]) == pytest.approx(0.25 * 0.25)


def test_region_contrastive_follows_its_schedule_and_sees_the_roi():
    model = _Linear(1.0, b=4.0)  # the mask's channel 0 moves the field: removing the ROI changes it there
    mask = torch.full((1, 1, 4, 4), ABSENT_MASK_VALUE)
    mask[..., :2, :2] = 0.5
    term = RegionContrastive(roi_channel=0, delta=10.0, dilation=0, schedule=[(0, 0.01), (50, 0.001)], total_steps=10)
    state = _state(model, torch.zeros(1, 1, 4, 4), torch.tensor([0.5]), mask)
    logged, parts = term(state)
    # inside the ROI the field drops from 4 * 0.5 to 4 * ABSENT_MASK_VALUE
    assert _value(logged["contrastive_roi_distance"]) == pytest.approx(4 * (0.5 - ABSENT_MASK_VALUE))
    assert _value(logged["contrastive_weight"]) == pytest.approx(0.01)
    assert torch.equal(parts[0], logged["contrastive_weight"] * logged["contrastive"])
    state.step = 6  # 60 % of 10 steps: the schedule's second value
    assert _value(term(state)[0]["contrastive_weight"]) == pytest.approx(0.001)


def test_contrastive_term_is_read_from_the_stage_section():
    assert contrastive_term(section("stage2"), ["liver"]) is None  # off by default
    term = contrastive_term(section("stage2", {"steps": 7, "contrastive": {"enabled": True, "roi": "kidney",
                                                                          "delta": 1.5, "dilation": 2,
                                                                          "schedule": [[0, 0.1]]}}), ["liver", "kidney"])
    assert (term.roi_channel, term.delta, term.dilation, term.schedule, term.total_steps) == (1, 1.5, 2, [(0, 0.1)], 7)
    with pytest.raises(KeyError, match="spleen"):
        contrastive_term(section("stage2", {"contrastive": {"enabled": True, "roi": "spleen"}}), ["liver"])


def test_stage_sections_take_their_defaults_from_the_schema():
    filled = section("stage2", {"lora": {"rank": 8}})
    assert filled["lora"] == {"rank": 8, "alpha": 4.0, "dropout": 0.0}  # the schema's alpha, not the code's
    assert filled["adversarial"]["lr"] == 0.0005 and section("stage1")["ewc"]["lambda"] == 1000.0
    assert section("base", filled_base := section("base")) == filled_base  # a complete section is unchanged
    with pytest.raises(Exception, match="unknown_key"):
        section("base", {"unknown_key": 1})


def test_adversarial_term_needs_a_pair():
    with pytest.raises(TypeError, match="AdversarialPair"):
        AdversarialTerm(0.1)(_state(_Linear(1.0), torch.zeros(1, 1, 2, 2), torch.tensor([0.5]), torch.zeros(1, 1, 2, 2)))


class _Fixed:
    """An extra term that logs one value and adds each of ``parts``."""

    def __init__(self, name, *parts):
        self.name, self.parts = name, [torch.tensor(p) for p in parts]

    def __call__(self, s):
        return {self.name: sum(self.parts)}, self.parts


def test_generator_step_adds_every_contribution_after_the_main_term():
    step = GeneratorStep(torch.zeros(1, 2, 3), torch.ones(1, 2, dtype=torch.bool), 0,
                         extras=[_Fixed("one", 1.0), _Fixed("two", 2.0, 4.0)])
    batch = {"latent": torch.zeros(3, 1, 2, 2), "mask": torch.zeros(3, 1, 2, 2), "prompt": torch.zeros(3, dtype=torch.long)}
    terms = step(_Linear(0.0), batch, 0, torch.Generator().manual_seed(0))
    assert list(terms) == ["flow", "one", "two", "loss"]
    assert _value(terms["loss"]) == pytest.approx(_value(terms["flow"]) + 7.0)
    with pytest.raises(ValueError, match="no extra terms"):
        GeneratorStep(torch.zeros(1, 2, 3), torch.ones(1, 2, dtype=torch.bool), 0, objective=NoisePrediction(None),
                      extras=[_Fixed("one", 1.0)])


def test_region_contrastive_over_several_rois_moves_each_into_its_background_channel(monkeypatch):
    import medsynth.generator.objective as objective
    from medsynth.generator.step import roi_contrastive_term

    seen = []

    def record(m, x, t, text, keep, mask=None, **k):
        seen.append(mask.clone())
        return m(torch.cat([x, mask], 1), t)

    monkeypatch.setattr(objective, "predict", record)
    mask = torch.full((1, 3, 4, 4), ABSENT_MASK_VALUE)  # channels: organ, tumour a (-> organ), tumour b (removed)
    mask[0, 0, :2] = 0.5
    mask[0, 1, 3, 0] = 0.5
    mask[0, 2, 3, 3] = 0.5
    names = ["organ", "tumour_a", "tumour_b"]
    cfg = {"enabled": True, "rois": [{"roi": "tumour_a", "background": "organ"}, {"roi": "tumour_b", "background": None}],
           "delta": 2.0, "dilation": 0, "schedule": [[0, 0.01]]}
    term = roi_contrastive_term(cfg, names, total_steps=10)
    logged, _ = term(_state(_Linear(1.0, b=4.0), torch.zeros(1, 1, 4, 4), torch.tensor([0.5]), mask))
    perturbed = seen[-1]
    expected = mask.clone()
    expected[0, 0, 3, 0] = 0.5  # tumour a's voxel joins the organ
    expected[0, 1] = ABSENT_MASK_VALUE
    expected[0, 2] = ABSENT_MASK_VALUE
    assert torch.equal(perturbed, expected) and torch.isfinite(logged["contrastive"])
    # the ROI is the union of both tumours: the organ channel changed at tumour a's voxel only, so the field
    # (4 x organ) differs there and nowhere else: mean |difference| over the two ROI voxels = 4 x 1.0 / 2
    assert _value(logged["contrastive_roi_distance"]) == pytest.approx(2.0)
    assert roi_contrastive_term({**cfg, "enabled": False}, names, 10) is None
    with pytest.raises(KeyError, match="background = 'liver'"):
        roi_contrastive_term({**cfg, "rois": [{"roi": "tumour_a", "background": "liver"}]}, names, 10)
    with pytest.raises(ValueError, match="at least one"):
        roi_contrastive_term({**cfg, "rois": []}, names, 10)
