"""The reader-study kit: a blinded, reproducible draw; the scoring of returned answers; the page in Chromium.

The kit is built from a small training-set shard and generated set written in tmp with the package's own
writers. The browser test opens the kit's index.html from file:// in headless Chromium (Debian's
``chromium``, driven through its DevTools pipe by tests/chromium_pipe.py), answers every case as two
readers (one clicking, one with the keyboard), saves both answer files and scores them.
"""

from __future__ import annotations

import contextlib
import json
import shutil
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from chromium_pipe import Chromium, find_chromium
from medsynth.io.generated import write_generated
from medsynth.io.trainsets import write_shard
from medsynth.preprocess.intensity import hu_to_unit, unit_window
from medsynth.readers.answers import read_answers
from medsynth.readers.draw import draw_cases
from medsynth.readers.kit import build_kit
from medsynth.readers.scores import NO_ANSWERS, score_answers

NAMES = ["liver", "lesion"]
MODEL, RUN = "victr-kit-test", "euler-7"
WINDOWS = {"lung": [-600, 1500], "soft_tissue": [50, 350]}
INTENSITY = {"ct_hu_range": [-1024, 1024], "windows": WINDOWS}


def _make_study(root: Path, size: int = 24, n_slices: int = 12) -> dict:
    """A slice shard of two test patients (liver from slice 3 on) and a generated set conditioned on every slice."""
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[:size, :size]
    body = (yy - size / 2) ** 2 + (xx - size / 2) ** 2 < (0.42 * size) ** 2
    liver = (yy - 0.45 * size) ** 2 + (xx - 0.6 * size) ** 2 < (0.2 * size) ** 2
    lesion = (yy - 0.45 * size) ** 2 + (xx - 0.6 * size) ** 2 < (0.07 * size) ** 2
    samples, rows, generated, masks = [], [], [], []
    for case in ("patient-alpha", "patient-beta"):
        for z in range(n_slices):
            msk = np.stack([liver & (z >= 3), lesion & (z >= 3) & (z % 2 == 0)]).astype(np.uint8)
            hu = np.where(body, 40.0, -1000.0) + 60.0 * msk[0] - 30.0 * msk[1] + rng.normal(0, 15, (size, size))
            image = hu_to_unit(hu)[None]
            present = [n for n, m in zip(NAMES, msk) if m.any()]
            samples.append(({"case_id": case, "patient_id": case, "dataset": "t", "modality": "CT", "split": "test",
                             "normalisation": "{}", "prompt_contrast": "portal venous", "prompt_region": "upper abdomen",
                             "slice": z, "organs": json.dumps(present)}, image, msk))
            rows.append({"case_id": case, "patient_id": case, "modality": "CT", "split": "test", "slice": z,
                         "organs": json.dumps(present), "prompt": f"CT; segmentation of {' and '.join(present) or 'nothing'};"
                                                                  " upper abdomen, portal venous phase"})
            generated.append(np.clip(image + rng.normal(0, 0.05, image.shape), -1, 1).astype(np.float32))
            masks.append(msk)
    shards = root / "trainsets"
    shards.mkdir(parents=True)
    write_shard(samples, NAMES, shards / "shard-000.safetensors", shards / "shard-000.csv")
    write_generated(root / "eval.safetensors", np.stack(generated), np.stack(masks), NAMES, RUN)
    pd.DataFrame(rows).assign(sample=range(len(rows))).to_csv(root / "eval.csv", index=False)
    return {"shards": [str(shards / "shard-000.safetensors"), str(shards / "shard-000.csv")],
            "generated": str(root / "eval.safetensors"), "index": str(root / "eval.csv"),
            "real": np.stack([s[1] for s in samples]), "synthetic": np.stack(generated)}


def _build(study: dict, out: Path, **readers) -> pd.DataFrame:
    cfg = {"real": 5, "synthetic": 5, "seed": 7, **readers}
    return build_kit(study["shards"], study["generated"], study["index"], cfg, INTENSITY, MODEL, RUN,
                     out / "kit", out / "key.csv")


@pytest.fixture(scope="module")
def study(tmp_path_factory) -> dict:
    return _make_study(tmp_path_factory.mktemp("study"))


def test_the_kit_shows_real_and_synthetic_cases_blinded_and_keeps_the_key_apart(study, tmp_path):
    key = _build(study, tmp_path)
    kit = tmp_path / "kit"
    assert sorted(key["truth"].value_counts().items()) == [("real", 5), ("synthetic", 5)]
    assert key["sample"].is_unique  # a real slice is never shown beside the image generated from its mask
    assert list(key["truth"]) != sorted(key["truth"])  # shuffled, not real first
    assert set(key.loc[key["truth"] == "synthetic", "model"]) == {MODEL}
    assert set(key.loc[key["truth"] == "real", "model"]) == {""}
    assert list(pd.read_csv(kit / "cases.csv").columns) == ["case_id"]
    assert list(pd.read_csv(kit / "cases.csv")["case_id"]) == list(key["case_id"])
    # what readers get names nothing of the key: no truth, model, run or source slice
    texts = [p.read_text() for p in (kit / "index.html", kit / "cases.csv")]
    for secret in (MODEL, RUN, "patient-alpha", "patient-beta", "truth", "source", "euler"):
        assert not any(secret in t for t in texts), secret
    html = texts[0]
    data = json.loads(html.split('id="kit-data">', 1)[1].split("</script>", 1)[0])
    assert {frozenset(c) for c in data["cases"]} == {frozenset({"id", "prompt", "images", "mask", "conditions"})}
    assert [c["id"] for c in data["cases"]] == list(key["case_id"])
    assert not {"real", "synthetic"} & {str(v) for c in data["cases"] for v in c.values()}
    files = sorted(p.relative_to(kit).as_posix() for p in kit.rglob("*") if p.is_file())
    assert files == sorted(["index.html", "cases.csv", *[f"images/{c}_{w}.png" for c in key["case_id"]
                                                          for w in ["lung", "soft_tissue", "mask"]]])
    for png in kit.glob("images/*.png"):
        with Image.open(png) as im:
            assert not getattr(im, "text", {}) and set(im.info) <= {"dpi", "gamma"}, png
    # each picture is its source in the window: the real slice for a real case, the generated one otherwise
    for _, case in key.iterrows():
        source = (study["synthetic"] if case["truth"] == "synthetic" else study["real"])[case["sample"], 0]
        expected = np.round(unit_window(source, 50, 350).T[::-1, ::-1] * 255)
        with Image.open(kit / "images" / f"{case['case_id']}_soft_tissue.png") as im:
            assert np.abs(np.asarray(im, dtype=float) - expected).max() <= 1.0
    assert key["kit_id"].nunique() == 1 and data["kit_id"] == key["kit_id"].iloc[0]


def test_the_same_seed_gives_the_same_kit_byte_for_byte(study, tmp_path):
    first, second = _build(study, tmp_path / "a"), _build(study, tmp_path / "b")
    pd.testing.assert_frame_equal(first, second)
    files = sorted(p.relative_to(tmp_path / "a" / "kit") for p in (tmp_path / "a" / "kit").rglob("*") if p.is_file())
    assert files and all((tmp_path / "a/kit" / f).read_bytes() == (tmp_path / "b/kit" / f).read_bytes() for f in files)
    assert (tmp_path / "a/key.csv").read_bytes() == (tmp_path / "b/key.csv").read_bytes()
    other = _build(study, tmp_path / "c", seed=8)
    assert list(other["sample"]) != list(first["sample"]) and other["kit_id"].iloc[0] != first["kit_id"].iloc[0]


def test_the_draw_scales_down_to_the_conditions_with_a_mask():
    masks = np.zeros((10, 1, 4, 4), np.uint8)
    masks[[1, 2, 4, 6, 7, 9], 0, 1, 1] = 1
    draw = draw_cases(masks, 6, 4, seed=0)
    assert len(draw) == 6 and sorted(draw["truth"].value_counts().items()) == [("real", 4), ("synthetic", 2)]
    assert set(draw["sample"]) == {1, 2, 4, 6, 7, 9}
    assert len(draw_cases(masks, 6, 4, seed=0, require_mask=False)) == 10
    with pytest.raises(ValueError, match="require_mask"):
        draw_cases(np.zeros((3, 1, 2, 2)), 1, 1, seed=0)


# -- scoring ------------------------------------------------------------------------------------------------
CASES = [f"c{i:02d}" for i in range(1, 11)]  # c01-c05 real, c06-c10 synthetic
ANSWERS_A = {"turing": "R R R S R S S R S S", "match": "m m p n m m p p n n"}  # 8/10 correct
ANSWERS_B = {"turing": "R S R S R S R R S S", "match": "m m m m p m p n n -"}  # 6/10 correct, c10 match unanswered
WORDS = {"R": "real", "S": "synthetic", "m": "match", "p": "partial match", "n": "not match", "-": ""}


def _key(path: Path) -> Path:
    pd.DataFrame({"kit_id": "kit1", "case_id": CASES, "truth": ["real"] * 5 + ["synthetic"] * 5}).to_csv(path, index=False)
    return path


def _answer_file(path: Path, reader: str, answers: dict, stamp: str = "2026-12-01T10:00:00Z") -> Path:
    turing, match = answers["turing"].split(), answers["match"].split()
    pd.DataFrame({"reader_id": reader, "kit_id": "kit1", "case_id": CASES, "turing": [WORDS[t] for t in turing],
                  "match": [WORDS[m] for m in match], "timestamp": stamp}).to_csv(path, index=False)
    return path


def test_scores_match_hand_computed_accuracy_interval_and_kappa(tmp_path):
    key = _key(tmp_path / "key.csv")
    stale = {"turing": "S S S S S S S S S S", "match": "n n n n n n n n n n"}  # saved earlier, superseded
    files = [_answer_file(tmp_path / "a.csv", "A", ANSWERS_A), _answer_file(tmp_path / "b.csv", "B", ANSWERS_B),
             _answer_file(tmp_path / "b-old.csv", "B", stale, "2026-11-30T09:00:00Z")]
    outputs = {n: (str(tmp_path / f"{n}.csv"), str(tmp_path / f"{n}.md")) for n in ("visual_turing", "match", "agreement")}
    score_answers(files, key, outputs)
    turing = pd.read_csv(outputs["visual_turing"][0]).set_index("reader")
    a, b = turing.loc["A"], turing.loc["B"]
    assert (a["answered"], a["correct"], b["correct"]) == (10, 8, 6)
    assert a["accuracy"] == pytest.approx(0.8) and b["accuracy"] == pytest.approx(0.6)
    # Clopper-Pearson 95 %: 8/10 -> [0.4439, 0.9748], 6/10 -> [0.2624, 0.8784], 4/5 -> [0.2836, 0.9949]
    assert (a["accuracy CI low"], a["accuracy CI high"]) == pytest.approx((0.44390454, 0.97478927))
    assert (b["accuracy CI low"], b["accuracy CI high"]) == pytest.approx((0.26237808, 0.87844774))
    assert (a["sensitivity"], a["specificity"], b["sensitivity"], b["specificity"]) == pytest.approx((0.8, 0.8, 0.6, 0.6))
    assert (a["sensitivity CI low"], a["sensitivity CI high"]) == pytest.approx((0.28358206, 0.99494924))
    assert turing.loc["all readers (pooled)", "correct"] == 14
    match = pd.read_csv(outputs["match"][0]).set_index(["reader", "cases"])
    counts = ["answered", "match", "partial match", "not match"]
    assert list(match.loc[("A", "real"), counts]) == [5, 3, 1, 1]
    assert list(match.loc[("A", "synthetic"), counts]) == [5, 1, 2, 2]
    assert list(match.loc[("B", "real"), counts]) == [5, 4, 1, 0]
    assert list(match.loc[("B", "synthetic"), counts]) == [4, 1, 1, 2]
    assert match.loc[("A", "real"), "match %"] == pytest.approx(60.0)
    agreement = pd.read_csv(outputs["agreement"][0]).set_index("question")
    # real/synthetic: p_o = 8/10, p_e = .5 * .5 + .5 * .5 -> kappa = (.8 - .5) / .5 = .6
    assert agreement.loc["real or synthetic", "cases"] == 10
    assert float(agreement.loc["real or synthetic", "kappa"]) == pytest.approx(0.6)
    # match on the 9 cases both answered: p_o = 5/9, p_e = (4*5 + 3*2 + 2*2) / 81 -> kappa = 15/51
    assert agreement.loc["match", "cases"] == 9 and agreement.loc["match", "observed"] == pytest.approx(5 / 9)
    assert float(agreement.loc["match", "kappa"]) == pytest.approx(15 / 51)
    md = Path(outputs["visual_turing"][1]).read_text()
    assert "0.8 [0.4439, 0.9748]" in md and "Clopper-Pearson" in md


def test_no_answers_yet_is_said_in_every_table(tmp_path):
    key = _key(tmp_path / "key.csv")
    outputs = {n: (str(tmp_path / f"{n}.csv"), str(tmp_path / f"{n}.md")) for n in ("visual_turing", "match", "agreement")}
    score_answers([], key, outputs, answers_folder="results/x/readers/answers")
    for csv, md in outputs.values():
        assert NO_ANSWERS in Path(csv).read_text() and NO_ANSWERS in Path(md).read_text()
        assert "no answer file yet in results/x/readers/answers" in Path(md).read_text()


def test_answers_of_another_kit_or_unknown_values_are_refused(tmp_path):
    key = pd.read_csv(_key(tmp_path / "key.csv"), dtype=str, keep_default_na=False)
    path = _answer_file(tmp_path / "a.csv", "A", ANSWERS_A)
    pd.read_csv(path).assign(kit_id="other").to_csv(tmp_path / "other.csv", index=False)
    with pytest.raises(ValueError, match="not to this kit"):
        read_answers([tmp_path / "other.csv"], key)
    pd.read_csv(path).assign(turing="maybe").to_csv(tmp_path / "bad.csv", index=False)
    with pytest.raises(ValueError, match="bad.csv line 2: 'maybe'"):
        read_answers([tmp_path / "bad.csv"], key)
    typed = pd.DataFrame({"reader_id": ["A"], "case_id": ["c01"], "turing": ["Real"], "match": ["Partial"]})
    typed.to_csv(tmp_path / "typed.csv", index=False)  # typed by hand: no kit id, no timestamp, other spelling
    assert read_answers([tmp_path / "typed.csv"], key)[["turing", "match"]].values.tolist() == [["real", "partial match"]]


def test_the_tasks_run_the_rules_jobs(study, tmp_path):
    from medsynth.settings import section
    from medsynth.tasks.readers import reader_kit, reader_scores

    readers = section("readers", {"real": 3, "synthetic": 3})
    job = SimpleNamespace(input=SimpleNamespace(shards=study["shards"], generated=study["generated"], index=study["index"]),
                          output=SimpleNamespace(kit=str(tmp_path / "kit"), key=str(tmp_path / "key.csv")),
                          params=SimpleNamespace(readers=readers, model=MODEL, run=RUN, intensity=INTENSITY),
                          wildcards=SimpleNamespace(), resources=SimpleNamespace())
    reader_kit(job)
    assert reader_kit.seed_of(job) == readers["seed"] and len(pd.read_csv(tmp_path / "key.csv")) == 6
    names = {"turing": "visual_turing", "match": "match", "match_by_pathology": "match_by_pathology",
             "agreement": "agreement"}
    out = {**{k: str(tmp_path / f"{v}.csv") for k, v in names.items()},
           **{f"{k}_md": str(tmp_path / f"{v}.md") for k, v in names.items()}}
    reader_scores(SimpleNamespace(input=SimpleNamespace(key=str(tmp_path / "key.csv"), answers=[]),
                                  output=SimpleNamespace(**out), params=SimpleNamespace(readers=readers, answers="a"),
                                  wildcards=SimpleNamespace(), resources=SimpleNamespace()))
    assert NO_ANSWERS in (tmp_path / "visual_turing.csv").read_text()
    assert NO_ANSWERS in (tmp_path / "match_by_pathology.csv").read_text()


# -- the page in a browser ----------------------------------------------------------------------------------
CHROMIUM = find_chromium()


def _kappa(x: list[str], y: list[str]) -> float:
    labels = sorted(set(x) | set(y))
    po = np.mean([a == b for a, b in zip(x, y)])
    pe = sum(x.count(c) / len(x) * y.count(c) / len(y) for c in labels)
    return (po - pe) / (1 - pe)


def _wait_for_file(folder: Path, timeout: float = 20.0) -> Path:
    import time

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        done = [p for p in folder.glob("*.csv")]
        if done and not list(folder.glob("*.crdownload")):
            return done[0]
        time.sleep(0.1)
    raise TimeoutError(f"no download in {folder}")


@contextlib.contextmanager
def _served(folder: Path):
    """``http://127.0.0.1:<port>`` serving ``folder`` (Python's http.server) for the duration of the block."""
    import functools
    import http.server
    import threading

    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Quiet, directory=str(folder)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


@pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (Debian: apt-get install -y chromium); "
                                              "the reader page's browser test needs it")
def test_two_readers_answer_every_case_in_chromium_and_their_files_are_scored(study, tmp_path):
    key = _build(study, tmp_path)
    truth = dict(zip(key["case_id"], key["truth"]))
    flip = {"real": "synthetic", "synthetic": "real"}
    match_words = ["match", "partial match", "not match"]
    plans = {  # reader -> case -> (turing, match): A errs on cases 1 and 4, B on case 2
        "reader-A": {c: (flip[truth[c]] if i in (0, 3) else truth[c], match_words[i % 3]) for i, c in enumerate(truth)},
        "reader-B": {c: (flip[truth[c]] if i == 1 else truth[c], "match" if i % 4 else "not match")
                     for i, c in enumerate(truth)},
    }
    answers_dir = tmp_path / "answers"
    answers_dir.mkdir()
    url = (tmp_path / "kit" / "index.html").as_uri()
    with Chromium(tmp_path / "profile", CHROMIUM) as browser:
        for reader, plan in plans.items():
            downloads = tmp_path / f"downloads-{reader}"
            downloads.mkdir()
            browser.open(url, downloads)
            assert browser.js("document.title") == "Reader study"
            if reader == "reader-A":  # nothing to save before a reader id
                assert browser.js("document.getElementById('save').disabled")
            else:  # the page remembers the last reader; a new one starts with no answers
                assert browser.js("document.getElementById('reader-id').value") == "reader-A"
            browser.js("const r = document.getElementById('reader-id'); r.value = ''; r.focus();")
            browser.type_text(reader)
            browser.js("document.getElementById('reader-id').blur()")
            assert browser.js("document.body.dataset.answered") == "0"
            for i, case in enumerate(key["case_id"]):
                assert browser.js("document.getElementById('case-title').textContent").startswith(f"Case {case} ")
                # the slice and its mask loaded from the folder (file://, no server)
                assert browser.js("new Promise(r => { const im = document.getElementById('image');"
                                  " im.complete ? r(im.naturalWidth) : im.onload = () => r(im.naturalWidth); })") == 24
                turing, match = plan[case]
                if reader == "reader-A":  # clicks, and looks at both windows
                    browser.js("document.querySelector('#windows button[data-window=lung]').click()")
                    assert browser.js("document.getElementById('image').getAttribute('src')") == f"images/{case}_lung.png"
                    browser.js(f"document.querySelector('#q-turing button[data-value=\"{turing}\"]').click()")
                    browser.js(f"document.querySelector('#q-match button[data-value=\"{match}\"]').click()")
                    browser.js("document.getElementById('next').click()")
                else:  # keys: r / s, 1 / 2 / 3, arrow right
                    browser.key(turing[0])
                    browser.key(str(match_words.index(match) + 1))
                    browser.key("ArrowRight")
            assert browser.js("document.body.dataset.answered") == str(len(key))
            kit_url = url.rsplit("/", 1)[0] + "/"
            requested = browser.requested_urls()
            assert requested and all(u.startswith(kit_url) for u in requested), requested  # offline: the folder only
            browser.js("location.reload()")  # answers survive a reload (local storage) until saved
            browser.wait_event("Page.loadEventFired")
            assert browser.js("document.getElementById('reader-id').value") == reader
            assert browser.js("document.body.dataset.answered") == str(len(key))
            browser.js("document.getElementById('save').click()")
            saved = _wait_for_file(downloads)
            assert saved.name == f"answers-{reader}-{key['kit_id'].iloc[0]}.csv"
            shutil.copy(saved, answers_dir / saved.name)
        with _served(tmp_path / "kit") as address:  # the same folder from a localhost server
            browser.open(f"{address}/index.html")
            assert browser.js("document.querySelectorAll('#cases button').length") == len(key)
            assert browser.js("new Promise(r => { const im = document.getElementById('image');"
                              " im.complete ? r(im.naturalWidth) : im.onload = () => r(im.naturalWidth); })") == 24
    files = sorted(answers_dir.glob("*.csv"))
    table = pd.read_csv(files[0], dtype=str, keep_default_na=False)
    assert list(table.columns) == ["reader_id", "kit_id", "case_id", "turing", "match", "timestamp"]
    assert list(table["case_id"]) == list(key["case_id"]) and (table["timestamp"] != "").all()
    outputs = {n: (str(tmp_path / f"{n}.csv"), str(tmp_path / f"{n}.md")) for n in ("visual_turing", "match", "agreement")}
    score_answers(files, tmp_path / "key.csv", outputs)
    turing = pd.read_csv(outputs["visual_turing"][0]).set_index("reader")
    n = len(key)
    assert turing.loc["reader-A", "correct"] == n - 2 and turing.loc["reader-B", "correct"] == n - 1
    assert turing.loc["reader-A", "accuracy"] == pytest.approx((n - 2) / n)
    match = pd.read_csv(outputs["match"][0]).set_index(["reader", "cases"])
    for reader, plan in plans.items():
        for kind in ("real", "synthetic"):
            expected = [sum(plan[c][1] == w for c in plan if truth[c] == kind) for w in match_words]
            assert list(match.loc[(reader, kind), match_words]) == expected
    agreement = pd.read_csv(outputs["agreement"][0]).set_index("question")
    expected = _kappa([plans["reader-A"][c][0] for c in truth], [plans["reader-B"][c][0] for c in truth])
    assert float(agreement.loc["real or synthetic", "kappa"]) == pytest.approx(expected)
