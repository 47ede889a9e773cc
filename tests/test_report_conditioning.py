"""MedSyn2's report conditioning (pre-prompt and report encoded separately, concatenated), its four
conditioning modes (independent report / mask dropout), and graded severity read from case metadata
(ViCTr's low / mild / severe), with the offline MiniLM text encoder; and that the defaults change nothing."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import yaml

from medsynth.generator.conditioning import (
    REPORT_SEP,
    encode_conditions,
    metadata_grades,
    prompt_table,
    report_texts,
    slice_prompts,
)
from medsynth.generator.data import LatentData, build_latent_data, slice_grades
from medsynth.generator.step import GeneratorStep, build_step, drop_report_tokens
from medsynth.models.prompts import ABSENT_MASK_VALUE, NO_SEGMENTATION, independent_dropout_probs
from medsynth.objectives import sample_timesteps
from medsynth.settings import section
from medsynth.train.data import TensorDictDataset

REPO = Path(__file__).resolve().parents[1]
NAMES = ["liver", "lungs"]
REPORT = {"enabled": True, "fields": ["report", "impression"], "pre_prompt_length": 32, "report_length": 512,
          "separator": None}
LEVELS = {"1": "low", "2": "mild", "3": "severe"}

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _index() -> pd.DataFrame:
    """Five slices of three cases: reports, impressions and grades as the training-set index carries them
    (``prompt_<field>`` columns, missing values read as "")."""
    return pd.DataFrame({
        "case_id": ["a", "a", "b", "c", "c"],
        "modality": ["CT"] * 5,
        "organs": [json.dumps(["liver"]), json.dumps(["liver", "lungs"]), json.dumps(["lungs"]), "[]", "[]"],
        "prompt_region": ["chest"] * 5,
        "prompt_contrast": ["none"] * 5,
        "prompt_report": ["Ground glass opacity in the left lower lobe.", "Ground glass opacity in the left lower lobe.",
                          "No consolidation.", "", ""],
        "prompt_impression": ["Viral pneumonia.", "Viral pneumonia.", "", "", ""],
        "prompt_grade": ["2", "2", "3", "", ""],
    })


# ------------------------------------------------------------------------------------------------ reports
def test_report_and_preprompt_are_encoded_separately_and_concatenated(text_encoder):
    index = _index()
    table = encode_conditions(index, None, None, text_encoder, 16, REPORT)
    reports = report_texts(index, ["report", "impression"], " [SEP] ")
    assert reports[0] == "Ground glass opacity in the left lower lobe. [SEP] Viral pneumonia."
    assert reports[2] == "No consolidation." and reports[3] is None
    # [SEP] between findings and impressions is the tokenizer's separator token (MedSyn2's <SEP>)
    assert text_encoder.separator_token == "[SEP]" and text_encoder.token_counts(["lungs [SEP] liver"]) == [5]
    pre = slice_prompts(index)
    assert table.prompts == list(dict.fromkeys(p if r is None else f"{p}{REPORT_SEP}{r}" for p, r in zip(pre, reports)))
    p = len(table.prompts)
    assert table.tokens.shape == (p + 1, 32 + 512, 384) and table.keep.shape == (p + 1, 544)
    assert table.report_start == 32 and table.no_mask is None and table.pooled is None
    for row, i in enumerate(table.ids):
        pre_tokens, pre_keep = text_encoder.encode([pre[row]], 32)
        assert torch.equal(table.tokens[i, :32], pre_tokens[0]) and torch.equal(table.keep[i, :32], pre_keep[0])
        if reports[row] is None:  # no report: its positions zeroed and masked
            assert not table.keep[i, 32:].any() and not table.tokens[i, 32:].any()
        else:
            rep_tokens, rep_keep = text_encoder.encode([reports[row]], 512)
            assert torch.equal(table.tokens[i, 32:], rep_tokens[0]) and torch.equal(table.keep[i, 32:], rep_keep[0])
    null_tokens, null_keep = text_encoder.encode_compound([""], [None], 32, 512)
    assert torch.equal(table.tokens[-1], null_tokens[0]) and torch.equal(table.keep[-1], null_keep[0])
    # a dropped report in training is exactly a missing report
    i = table.ids[0]
    text, keep = drop_report_tokens(table.tokens[i:i + 1], table.keep[i:i + 1], torch.tensor([True]), 32)
    missing_tokens, missing_keep = text_encoder.encode_compound([pre[0]], [None], 32, 512)
    assert torch.equal(text, missing_tokens) and torch.equal(keep, missing_keep)


def test_truncated_reports_are_counted_in_the_log(text_encoder, caplog):
    index = _index()
    long_report = " ".join(["bilateral ground glass opacities with consolidation"] * 20)  # > 100 tokens
    index.loc[3, "prompt_report"] = long_report
    with caplog.at_level(logging.INFO, logger="medsynth.generator.conditioning"):
        table = encode_conditions(index, None, None, text_encoder, 16,
                                  {**REPORT, "report_length": 48, "pre_prompt_length": 8})
    assert "1 of 3 distinct reports exceed report_length 48 tokens and are truncated" in caplog.text
    assert "1 of 5 samples have no report" in caplog.text
    assert table.tokens.shape[1] == 8 + 48 and table.keep[table.ids[3], 8:].all()
    with pytest.raises(KeyError, match="prompt_findings"):
        report_texts(index, ["findings"], " ")


def test_defaults_change_neither_prompts_nor_tokens(text_encoder):
    """With report off and no mask variants the table is HEAD's by construction: the unique compound
    prompts in order of first appearance plus the empty prompt, encoded at max_length."""
    index = _index()
    grades = np.array([0, 2, 1, 1, 0])
    prompts = slice_prompts(index, grades, "liver involvement")
    unique = list(dict.fromkeys(prompts))
    tokens, keep = text_encoder.encode(unique + [""], 16)
    table = encode_conditions(index, grades, "liver involvement", text_encoder, 16)
    assert table.prompts == unique and [table.prompts[i] for i in table.ids] == prompts
    assert torch.equal(table.tokens, tokens.float()) and torch.equal(table.keep, keep)
    assert table.no_mask is None and table.report_start is None
    old = prompt_table(text_encoder, unique, 16)
    assert torch.equal(table.tokens, old[0]) and torch.equal(table.keep, old[1])
    # the embedded config: report off, no report / mask dropout in any stage, the mask-area grade
    config = yaml.safe_load((REPO / "config" / "config.yaml").read_text())
    gen = section("generator", config["generator"])
    assert gen["report"]["enabled"] is False and gen["severity"]["from_field"] is None
    for name in ("base", "stage1", "stage2"):
        stage = section(name, config.get(name) or {})
        assert stage["report_dropout"] == 0.0 and stage["mask_dropout"] == 0.0
    from medsynth.generator.loaders import prompt_settings, report_settings

    assert report_settings(prompt_settings(config["generator"])) is None


# ------------------------------------------------------------------------------------------ the four modes
class _Recorder:
    """A stand-in main term that records what the step conditions on."""

    def __call__(self, model, x0, x1, t, text, keep, mask, pooled=None):
        self.text, self.keep, self.mask = text, keep, mask
        return torch.zeros(()), x0, None


def _step(n_prompt: int = 1, **kwargs) -> tuple[GeneratorStep, _Recorder]:
    # rows: 0 = the prompt (mask named), 1 = its no-mask variant, 2 = the null condition; report tokens 4:
    tokens = torch.arange(1, 4, dtype=torch.float32).view(3, 1, 1).expand(3, 8, 2).clone()
    keep = torch.ones(3, 8, dtype=torch.bool)
    keep[2, 2:] = False
    tokens[2, 2:] = 0
    recorder = _Recorder()
    step = GeneratorStep(tokens, keep, 2, objective=recorder, report_start=4,
                         no_mask=torch.tensor([1, 1, 2]), **kwargs)
    return step, recorder


def _modes(n: int, seed: int, **kwargs):
    step, rec = _step(**kwargs)
    batch = {"latent": torch.zeros(n, 1, 1, 1), "mask": torch.full((n, 2, 1, 1), 0.5),
             "prompt": torch.zeros(n, dtype=torch.long)}
    step(None, batch, 0, torch.Generator().manual_seed(seed))
    null = rec.text[:, 0, 0] == 3
    mask_dropped = (rec.mask == ABSENT_MASK_VALUE).flatten(1).all(1)
    report_dropped = ~rec.keep[:, 4:].any(1)
    # a dropped mask comes with the no-mask prompt; a dropped report with its positions zeroed
    assert torch.equal(mask_dropped & ~null, rec.text[:, 0, 0] == 2)
    assert not rec.text[report_dropped][:, 4:].any()
    return null, report_dropped & ~null, mask_dropped & ~null, rec


@pytest.mark.parametrize(("report", "mask", "cond"), [(0.25, 0.25, 0.0), (0.3, 0.6, 0.0), (0.25, 0.25, 0.25)])
def test_four_conditioning_modes_have_their_frequencies(report, mask, cond):
    n = 40000
    null, r, m, _ = _modes(n, 7, report_dropout=report, mask_dropout=mask, cond_dropout=cond)
    live = ~null
    probs = independent_dropout_probs(report, mask)
    observed = {  # MedSyn2's four modes among the samples not dropped to the null condition
        "both": (~r & ~m & live).sum() / live.sum(),         # report and mask
        "report only": (~r & m & live).sum() / live.sum(),   # the mask dropped
        "mask only": (r & ~m & live).sum() / live.sum(),     # the report dropped
        "neither": (r & m & live).sum() / live.sum(),
    }
    expected = {"both": probs["neither"], "report only": probs["mask"], "mask only": probs["report"],
                "neither": probs["both"]}
    for key, p in expected.items():
        sigma = (p * (1 - p) / int(live.sum())) ** 0.5
        assert abs(float(observed[key]) - p) < 4 * sigma, (key, float(observed[key]), p)
    assert abs(float(null.float().mean()) - cond) < 4 * (cond * (1 - cond) / n) ** 0.5 + 1e-9
    # seeded: the same draws again
    again = _modes(n, 7, report_dropout=report, mask_dropout=mask, cond_dropout=cond)
    assert torch.equal(again[1], r) and torch.equal(again[2], m)


def test_without_report_or_mask_dropout_the_step_draws_what_it_always_drew():
    n = 64
    step, rec = _step(cond_dropout=0.25)
    batch = {"latent": torch.zeros(n, 1, 1, 1), "mask": torch.full((n, 2, 1, 1), 0.5),
             "prompt": torch.zeros(n, dtype=torch.long)}
    gen = torch.Generator().manual_seed(5)
    step(None, batch, 0, gen)
    replica = torch.Generator().manual_seed(5)  # HEAD's draws: t, the noise, the cond_dropout coin
    sample_timesteps(n, replica, "uniform", device=torch.device("cpu"), dtype=torch.float32)
    torch.randn((n, 1, 1, 1), generator=replica)
    drop = torch.rand(n, generator=replica) < 0.25
    assert torch.equal(gen.get_state(), replica.get_state())
    assert torch.equal(rec.text[:, 0, 0] == 3, drop) and torch.equal((rec.mask == ABSENT_MASK_VALUE).flatten(1).all(1), drop)


def test_report_and_mask_dropout_need_their_tables():
    tokens, keep = torch.zeros(2, 4, 2), torch.ones(2, 4, dtype=torch.bool)
    with pytest.raises(ValueError, match="generator.report.enabled"):
        GeneratorStep(tokens, keep, 1, report_dropout=0.1)
    with pytest.raises(ValueError, match="no-mask variants"):
        GeneratorStep(tokens, keep, 1, mask_dropout=0.1)


# ------------------------------------------------------------------------------------ severity from a field
def test_severity_grades_from_a_metadata_field(caplog):
    index = _index()
    with caplog.at_level(logging.WARNING, logger="medsynth.generator.conditioning"):
        grades = metadata_grades(index, "grade", LEVELS)
    assert grades.tolist() == [1, 1, 2, -1, -1]
    assert "'grade': 2 of 5 samples have no value" in caplog.text
    prompts = slice_prompts(index, grades, "cirrhosis")
    assert prompts[0] == "CT; segmentation of liver; mild cirrhosis; chest"
    assert prompts[2] == "CT; segmentation of lungs; severe cirrhosis; chest"
    assert prompts[3] == f"CT; {NO_SEGMENTATION}; chest"  # no value: no severity phrase
    grades, columns = slice_grades(index, np.zeros((5, 2, 4, 4)), NAMES,
                                   {"from_field": "grade", "levels": LEVELS, "pathology": "cirrhosis"})
    assert columns == {"severity": ["mild", "mild", "severe", "", ""]}  # no area fraction: not that quantity
    # values read as numbers, the words themselves without levels, and the errors
    numeric = index.assign(prompt_grade=[2.0, 2.0, 3.0, np.nan, np.nan])
    assert metadata_grades(numeric, "grade", LEVELS).tolist() == [1, 1, 2, -1, -1]
    words = index.assign(prompt_grade=["Mild", "mild", "severe", "", "low"])
    assert metadata_grades(words, "grade").tolist() == [1, 1, 2, -1, 0]
    with pytest.raises(ValueError, match="no entry for grade value '4'"):
        metadata_grades(index.assign(prompt_grade="4"), "grade", LEVELS)
    with pytest.raises(KeyError, match="prompt_stage"):
        metadata_grades(index, "stage", LEVELS)


def test_controllability_is_not_applicable_to_metadata_grades():
    from medsynth.evaluation.runs import controllability, metadata_grade_status

    pred = torch.zeros(3, 2, 4, 4, dtype=torch.bool)
    status = "not applicable: grades from metadata field grade; no image measure of them"
    assert controllability(pred, NAMES, ["mild", "severe", ""], {"from_field": "grade"}) == {"status": status}
    assert metadata_grade_status({"from_field": "grade"}) == status
    assert metadata_grade_status(section("generator")["severity"]) is None
    area = controllability(pred, NAMES, ["low", "low", "mild"], section("generator")["severity"])
    assert area["accuracy"] == pytest.approx(2 / 3) and "status" not in area


# ------------------------------------------------------------------------------------------------ end to end
def test_latent_data_with_reports_metadata_grades_and_mask_variants(text_encoder):
    from medsynth.vae import TINY_VAE_CONFIGS, build_autoencoder

    index = _index()
    rng = np.random.default_rng(0)
    images = rng.uniform(-1, 1, (5, 1, 32, 32)).astype(np.float32)
    masks = np.full((5, 2, 32, 32), -0.5, np.float32)
    masks[:3, 0, :8] = 0.5
    torch.manual_seed(0)
    vae = build_autoencoder(dict(TINY_VAE_CONFIGS["2d"]))
    stats = {"mean": [0.0] * 4, "std": [1.0] * 4}
    severity = {**section("generator")["severity"], "from_field": "grade", "levels": LEVELS, "pathology": "cirrhosis"}
    data = build_latent_data([], vae, stats, text_encoder, None, severity, slices=(index, images, masks, NAMES),
                             report=REPORT, mask_variants=True)
    assert isinstance(data, LatentData) and data.report_start == 32 and data.tokens.shape[1] == 544
    assert data.index["severity"].tolist() == ["mild", "mild", "severe", "", ""]
    assert "severity_fraction" not in data.index
    ids = data.dataset.tensors["prompt"]
    variants = data.no_mask[ids]
    for i, v in zip(ids.tolist(), variants.tolist()):  # the no-mask variant: same report, no segmentation
        pre, _, report = data.prompts[i].partition(REPORT_SEP)
        assert data.prompts[v].partition(REPORT_SEP)[2] == report
        assert NO_SEGMENTATION in data.prompts[v].partition(REPORT_SEP)[0]
    assert data.no_mask[data.null_id] == data.null_id and data.prompts[: len(set(ids.tolist()))] == data.index[
        "prompt"].drop_duplicates().tolist()
    stage = section("base", {"report_dropout": 0.5, "mask_dropout": 0.5})
    step = build_step(data, stage)
    assert step.report_dropout == 0.5 and step.mask_dropout == 0.5 and step.report_start == 32
    plain = LatentData(TensorDictDataset(dict(data.dataset.tensors)), data.prompts, data.tokens, data.keep, data.index)
    with pytest.raises(ValueError, match="generator.report.enabled"):
        build_step(plain, stage)
