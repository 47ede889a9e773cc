"""CLIP scores (MedSyn2 Table 2), CT-CLIP zero-shot classification (Table 3) and CT-CLIP's text encoder.

The score functions are checked on hand-computed embeddings; the zero-shot recipe on a constructed text
encoder whose answer is known in closed form; the text encoder on a tiny random BERT written into a
CTCLIP state dict with the published key names (``text_transformer.*``, ``to_text_latent.weight``,
``temperature``, the persistent ``position_ids`` of the released file, a tiny image side) and a tiny
CXR-BERT-like tokenizer folder, against the same BERT run directly.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from test_clip_extractors import TINY_CT, ct_clip_state, ct_volumes

from medsynth.metrics.clip_scores import (
    CT_RATE_ABNORMALITIES,
    classification_metrics,
    clip_score_i2i,
    clip_score_t2i,
    ct_clip_scores,
    ct_clip_threshold,
    zero_shot_classification,
    zero_shot_probabilities,
    zero_shot_prompts,
)
from medsynth.metrics.clip_weights import CheckpointLayoutError
from medsynth.metrics.ct_clip_text import CTClipTextConfig, ct_clip_report_text, load_ct_clip_text

pytestmark = pytest.mark.usefixtures("one_torch_thread")

# -- CLIP scores -----------------------------------------------------------------------------------------


def test_clip_scores_are_100_times_the_paired_cosine():
    e = torch.eye(3)
    assert clip_score_t2i(e, e) == pytest.approx(100.0)  # identical
    assert clip_score_t2i(e, e.roll(1, dims=0)) == pytest.approx(0.0)  # orthogonal
    assert clip_score_i2i(3.0 * e, 0.5 * e) == pytest.approx(100.0)  # scale does not matter
    sixty = torch.tensor([[0.5, math.sqrt(3) / 2]])  # 60 degrees from [1, 0]: cos 0.5
    assert clip_score_t2i(torch.tensor([[1.0, 0.0]]), sixty) == pytest.approx(50.0)
    # mean over pairs: (100 + 0) / 2
    assert clip_score_i2i(np.array([[1.0, 0.0], [0.0, 1.0]]), np.array([[1.0, 0.0], [1.0, 0.0]])) == pytest.approx(50)
    # a negative pair: clipped at 0 by default (the usual CLIPScore), or kept
    fake, real = torch.tensor([[1.0, 0.0], [1.0, 0.0]]), torch.tensor([[-1.0, 0.0], [1.0, 0.0]])
    assert clip_score_i2i(fake, real) == pytest.approx(50.0)
    assert clip_score_i2i(fake, real, clip_at_zero=False) == pytest.approx(0.0)
    with pytest.raises(ValueError, match="one shape"):
        clip_score_t2i(torch.zeros(2, 3), torch.zeros(3, 3))


# -- zero-shot classification -----------------------------------------------------------------------------

class AxisEncoder:
    """Prompt "<k-th name> is present." -> +e_k, "... is not present." -> -e_k (a known zero-shot answer)."""

    def __init__(self, names, logit_scale: float) -> None:
        self.names, self.logit_scale, self.seen = list(names), logit_scale, []

    def encode(self, texts):
        self.seen += list(texts)
        out = torch.zeros(len(texts), len(self.names))
        for i, text in enumerate(texts):
            k = next(k for k, n in enumerate(self.names) if text.startswith(n + " is "))
            out[i, k] = -1.0 if text.endswith("is not present.") else 1.0
        return out


def test_zero_shot_probabilities_follow_ct_clip_softmax_over_the_two_prompts():
    assert zero_shot_prompts("Lung nodule") == ("Lung nodule is present.", "Lung nodule is not present.")
    enc = AxisEncoder(["A", "B"], logit_scale=3.0)
    angles = torch.tensor([0.3, 1.2, 2.5])
    image = torch.stack([torch.cos(angles), torch.sin(angles)], dim=1) * 2.0  # not unit: normalised inside
    probs = zero_shot_probabilities(image, enc, ["A", "B"])
    assert enc.seen == ["A is present.", "A is not present.", "B is present.", "B is not present."]
    # softmax(s cos, -s cos)[0] = sigmoid(2 s cos)
    expected = torch.sigmoid(2 * 3.0 * torch.stack([torch.cos(angles), torch.sin(angles)], dim=1))
    np.testing.assert_allclose(probs, expected.numpy(), rtol=1e-6)
    np.testing.assert_allclose(zero_shot_probabilities(image, enc, ["A", "B"], logit_scale=1.0),
                               torch.sigmoid(2 * F.normalize(image, dim=1)).numpy(), rtol=1e-6)


def test_zero_shot_classification_of_a_separable_case_is_perfect():
    enc = AxisEncoder(["A", "B"], logit_scale=math.e)
    labels = np.array([[1, 0], [0, 1], [1, 1], [0, 0]])
    image = torch.tensor(2.0 * labels - 1.0)  # +-1 along each abnormality's axis
    res = zero_shot_classification(image, enc, ["A", "B"], labels)
    assert res["probabilities"].shape == (4, 2) and res["n_scored"] == 2
    for metric in ("accuracy", "precision", "auroc", "f1"):
        assert res[metric] == pytest.approx(1.0)
        assert all(v[metric] == pytest.approx(1.0) for v in res["per_pathology"].values())
    with pytest.raises(ValueError, match="labels"):
        zero_shot_classification(image, enc, ["A", "B"])


def test_classification_metrics_by_hand_with_ct_clip_threshold():
    scores = np.array([[0.9, 0.1], [0.6, 0.2], [0.4, 0.3], [0.2, 0.4]])
    labels = np.array([[1, 0], [0, 0], [1, 0], [0, 0]])  # second abnormality: never present
    res = classification_metrics(scores, labels, ["A", "B"])
    a = res["per_pathology"]["A"]
    # ROC-corner distances: t in [0.2, 0.4) and [0.6, 0.9) both 0.5; the last grid point < 0.9 wins: 89/99
    assert a["threshold"] == pytest.approx(89 / 99)
    assert a["auroc"] == pytest.approx(0.75)  # 3 of the 4 (positive, negative) pairs ordered
    assert a["accuracy"] == pytest.approx(0.75) and a["precision"] == pytest.approx(1.0)
    assert a["f1"] == pytest.approx((2 / 3 + 0.8) / 2)  # weighted over both classes (2 + 2 samples)
    b = res["per_pathology"]["B"]
    assert b["auroc"] is None and b["status"].startswith("not applicable") and res["n_scored"] == 1
    assert res["auroc"] == pytest.approx(0.75) and res["f1"] == pytest.approx(a["f1"])
    fixed = classification_metrics(scores, labels, ["A", "B"], threshold=0.5)["per_pathology"]["A"]
    assert (fixed["accuracy"], fixed["precision"], fixed["f1"]) == pytest.approx((0.5, 0.5, 0.5))


def test_ct_clip_threshold_matches_its_loop():
    from sklearn.metrics import confusion_matrix

    rng = np.random.default_rng(0)
    for _ in range(5):
        labels = rng.integers(0, 2, 40)
        labels[:2] = [0, 1]
        probs = np.clip(0.3 * labels + rng.random(40) * 0.7, 0, 1)
        best, best_t = 10000.0, 0.0
        for t in np.linspace(0, 1, 100):  # bootstrap_values.find_threshold, step by step
            c = confusion_matrix(labels, (probs > t).astype(int))
            d = math.sqrt((1 - c[1, 1] / (c[1, 1] + c[1, 0])) ** 2 + (c[0, 1] / (c[0, 1] + c[0, 0])) ** 2)
            if d <= best:
                best, best_t = d, t
        assert ct_clip_threshold(probs, labels) == best_t


def test_the_18_ct_rate_abnormalities_and_a_label_table():
    import pandas as pd

    assert len(CT_RATE_ABNORMALITIES) == len(set(CT_RATE_ABNORMALITIES)) == 18
    assert CT_RATE_ABNORMALITIES[0] == "Medical material" and CT_RATE_ABNORMALITIES[-1] == \
        "Interlobular septal thickening"
    table = pd.DataFrame({"VolumeName": ["a", "b"], "B": [1, 0], "A": [0, 1]})
    res = classification_metrics(np.array([[0.2, 0.8], [0.9, 0.1]]), table, ["A", "B"])
    assert res["auroc"] == pytest.approx(1.0)  # columns taken by name
    with pytest.raises(KeyError, match="C"):
        classification_metrics(np.zeros((2, 1)), table, ["C"])


# -- CT-CLIP text encoder ---------------------------------------------------------------------------------

VOCAB = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", ".", ",", "the", "lung", "lungs", "nodule", "is", "are",
         "present", "not", "pleural", "effusion", "clear", "no", "heart", "normal", "medical", "material"]


def tiny_text_side(seed: int = 0):
    """A tiny BERT and the CTCLIP keys of its text side (with the released file's ``position_ids``)."""
    from transformers import BertConfig, BertModel

    torch.manual_seed(seed)
    bert = BertModel(BertConfig(vocab_size=40, hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
                                intermediate_size=32, max_position_embeddings=24)).eval()
    proj = torch.randn(8, 16)
    state = {f"text_transformer.{k}": v.clone() for k, v in bert.state_dict().items()}
    state.update({"to_text_latent.weight": proj, "text_transformer.embeddings.position_ids": torch.arange(24)[None],
                  "temperature": torch.tensor(0.7)})
    return bert, proj, state


def write_checkpoint(tmp_path, text_state: dict, name: str = "CT-CLIP_v2.pt"):
    """The tiny image side (``ct_clip_state``) with this text side, saved as the release is."""
    state = {k: v for k, v in ct_clip_state(TINY_CT).items() if not k.startswith(("text_transformer.", "to_text"))}
    state.update(text_state)
    path = tmp_path / name
    torch.save(state, path)
    return path


def write_tokenizer(folder, heads: int | None = 2):
    """CXR-BERT's folder at tiny size: ``vocab.txt`` and a ``config.json`` (model_type cxr-bert)."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "vocab.txt").write_text("\n".join(VOCAB) + "\n")
    cfg = {"model_type": "cxr-bert", "hidden_size": 16}
    (folder / "config.json").write_text(json.dumps(cfg | ({"num_attention_heads": heads} if heads else {})))
    return folder


def test_ct_clip_text_encoder_equals_its_bert_run_directly(tmp_path):
    from transformers import BertTokenizer

    bert, proj, state = tiny_text_side()
    enc = load_ct_clip_text(write_checkpoint(tmp_path, state), write_tokenizer(tmp_path / "cxr_bert"))
    assert enc.config == CTClipTextConfig(vocab_size=40, hidden_size=16, num_layers=2, heads=2, intermediate_size=32,
                                          max_position_embeddings=24, type_vocab_size=2, dim_latent=8, pooler=True)
    assert enc.max_length == 24 and enc.logit_scale == pytest.approx(math.exp(0.7))
    texts = ["Lung nodule is present.", "Pleural effusion is not present.", "The lungs are clear, heart normal."]
    emb = enc.encode(texts, batch_size=2)
    assert emb.shape == (3, 8)
    torch.testing.assert_close(emb.norm(dim=1), torch.ones(3))
    tok = BertTokenizer.from_pretrained(str(tmp_path / "cxr_bert"), do_lower_case=True)(
        texts, return_tensors="pt", padding="max_length", truncation=True, max_length=24)
    with torch.no_grad():
        cls = bert(tok["input_ids"], attention_mask=tok["attention_mask"]).last_hidden_state[:, 0]
    torch.testing.assert_close(emb, F.normalize(cls @ proj.T, dim=-1), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(enc.encode(["LUNG NODULE IS PRESENT."]), emb[:1])  # lower-cased
    long = enc.encode([" ".join(["lung"] * 40), " ".join(["lung"] * 22)])  # truncated to 24 tokens
    torch.testing.assert_close(long[0], long[1])


def test_head_count_rule_and_missing_text_side(tmp_path):
    _, _, state = tiny_text_side()
    assert CTClipTextConfig.from_state_dict(state).heads == 1  # hidden // 64, at least one
    assert CTClipTextConfig.from_state_dict(state, heads=4).heads == 4
    wide = {"text_transformer.embeddings.word_embeddings.weight": torch.zeros(10, 768)}
    wide.update({k: v for k, v in state.items() if "word_embeddings" not in k})
    assert CTClipTextConfig.from_state_dict(wide).heads == 12  # CXR-BERT: 768 / 64
    image_only = write_checkpoint(tmp_path, {}, "image_only.pt")
    with pytest.raises(CheckpointLayoutError, match="no CT-CLIP text side: missing text_transformer.embeddings"
                                                    r".word_embeddings.weight, .*to_text_latent.weight"):
        load_ct_clip_text(image_only, write_tokenizer(tmp_path / "tok"))
    key = "text_transformer.encoder.layer.1.output.dense.weight"
    renamed = write_checkpoint(tmp_path, {k.replace(key, key + "_old"): v for k, v in state.items()}, "renamed.pt")
    with pytest.raises(CheckpointLayoutError, match=f"missing {key}.*unexpected {key}_old"):
        load_ct_clip_text(renamed, tmp_path / "tok")
    shifted_ids = {"text_transformer.embeddings.position_ids": torch.arange(1, 25)[None]}
    shifted = write_checkpoint(tmp_path, {**state, **shifted_ids}, "shifted.pt")
    with pytest.raises(CheckpointLayoutError, match="position_ids is not 0..23"):
        load_ct_clip_text(shifted, tmp_path / "tok")
    with pytest.raises(FileNotFoundError, match="vocab.txt"):
        load_ct_clip_text(write_checkpoint(tmp_path, state), tmp_path / "nowhere")


def test_ct_clip_report_text_as_its_inference_dataset():
    assert ct_clip_report_text("Lungs are clear (no nodule).", "Not given.") == "Lungs are clear no nodule."
    assert ct_clip_report_text('Heart "normal".', "No effusion.") == "Heart normal.No effusion."


# -- Table 2 / 3 entries from volumes --------------------------------------------------------------------

def test_ct_clip_scores_from_volumes_and_unavailable_without_weights(tmp_path):
    from medsynth.metrics.ct_clip import load_ct_clip

    _, _, state = tiny_text_side()
    ckpt, tok = write_checkpoint(tmp_path, state), write_tokenizer(tmp_path / "cxr_bert")
    hu_range = (-1024.0, 1024.0)

    def units(hu):
        return (hu.clamp(*hu_range) - hu_range[0]) / (hu_range[1] - hu_range[0]) * 2.0 - 1.0

    real_hu, fake_hu = ct_volumes(4, 0), ct_volumes(4, 1, shift=300.0, radius2=0.3)
    reports = ["Lung nodule is present.", "The lungs are clear.", "Pleural effusion.", "Heart normal."]
    labels = np.zeros((4, 18), dtype=int)
    labels[[0, 2], 9] = 1
    labels[[1], 12] = 1
    res = ct_clip_scores(ckpt, tok, units(fake_hu), reports, real=units(real_hu), labels=labels, batch_size=4)
    assert {e["status"] for e in res.values()} == {"ok"}
    image_net, text_net = load_ct_clip(ckpt), load_ct_clip_text(ckpt, tok)
    with torch.no_grad():
        fake_e, real_e = image_net(fake_hu.clamp(*hu_range)), image_net(real_hu.clamp(*hu_range))
    assert res["t2i"]["value"] == pytest.approx(clip_score_t2i(fake_e, text_net.encode(reports)), abs=1e-4)
    assert res["i2i"]["value"] == pytest.approx(clip_score_i2i(fake_e, real_e), abs=1e-4)
    zs = res["zero_shot"]
    assert zs["n_scored"] == 2 and 0.0 <= zs["auroc"] <= 1.0 and zs["n"] == 4
    assert zs["auroc"] == pytest.approx(zero_shot_classification(fake_e, text_net, labels=labels)["auroc"])
    none = ct_clip_scores(None, tok, units(fake_hu), reports, real=units(real_hu), labels=labels)
    assert all(e["status"].startswith("unavailable: metrics.ct_clip_pretrained_path") for e in none.values())
    assert all(e.get("value") is None and e.get("auroc") is None for e in none.values())
    no_tok = ct_clip_scores(ckpt, None, units(fake_hu), reports, real=units(real_hu), batch_size=4)
    assert no_tok["i2i"]["status"] == "ok" and no_tok["t2i"]["status"].startswith("unavailable: metrics.ct_clip_tok")
    assert no_tok["zero_shot"]["status"].startswith("unavailable")
    mr = ct_clip_scores(ckpt, tok, units(fake_hu), reports, hu_range=None)
    assert all(e["status"].startswith("not applicable") for e in mr.values())
