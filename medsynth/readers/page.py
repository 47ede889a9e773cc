"""The reader's web page: one self-contained ``index.html`` (no network, no server needed; ``file://`` works).

The case data (ids, prompts, image file names: nothing of the key) sits in the page as JSON. The reader
enters a reader id, views each case (slice with a window selector, the conditioning mask beside it or over
it, the report/prompt), answers the Visual Turing question (real / synthetic) and the match question
(match / partial match / not match), and saves the answers as a CSV (:data:`ANSWER_COLUMNS`). Answers
are kept in the browser's local storage (per kit and reader) until saved, so a reload loses nothing.
Keys: r / s (real / synthetic), 1 / 2 / 3 (match / partial / not match), arrows (previous / next case),
w (next window), m (mask overlay).
"""

from __future__ import annotations

import html
import json
from collections.abc import Mapping

__all__ = ["ANSWER_COLUMNS", "TURING_ANSWERS", "MATCH_ANSWERS", "render_page"]

#: columns of an answer file, as the page writes them
ANSWER_COLUMNS = ("reader_id", "kit_id", "case_id", "turing", "match", "timestamp")
TURING_ANSWERS = ("real", "synthetic")
MATCH_ANSWERS = ("match", "partial match", "not match")

_STYLE = """
body { font-family: system-ui, sans-serif; margin: 0; background: #1b1d21; color: #e8e8e8; }
header { display: flex; flex-wrap: wrap; gap: 1em; align-items: center; padding: .6em 1em; background: #25282e; }
header h1 { font-size: 1.1em; margin: 0 1em 0 0; }
main { display: flex; flex-wrap: wrap; gap: 1.5em; padding: 1em; }
.panel { position: relative; background: #000; line-height: 0; }
.panel img { width: var(--size); height: auto; display: block; }
#overlay { position: absolute; left: 0; top: 0; opacity: .45; pointer-events: none; }
#mask { width: calc(var(--size) / 2); }
.box { background: #25282e; padding: .8em 1em; border-radius: 6px; margin-bottom: 1em; max-width: 34em; line-height: 1.4; }
.box h2 { font-size: 1em; margin: 0 0 .5em 0; }
label { margin-right: 1em; cursor: pointer; }
button { background: #3a3f48; color: #e8e8e8; border: 1px solid #555; border-radius: 4px; padding: .3em .8em; cursor: pointer; }
button.on { background: #4a78c2; border-color: #4a78c2; }
button:disabled { opacity: .4; cursor: default; }
#cases button { min-width: 3.2em; margin: 0 .2em .2em 0; padding: .15em .3em; font-size: .8em; }
#cases button.done { background: #2e6b3a; }
#cases button.partial { background: #7a6a2a; }
#cases button.current { outline: 2px solid #fff; }
.legend span { display: inline-block; width: .9em; height: .9em; margin: 0 .3em 0 .8em; vertical-align: middle; }
#prompt { white-space: pre-wrap; }
#status { color: #9fd49f; }
.warn { color: #f0b050; }
textarea { width: 100%; height: 8em; background: #111; color: #ddd; }
"""

_BODY = """
<header>
  <h1 id="title"></h1>
  <label>Reader id <input id="reader-id" autocomplete="off" size="12"></label>
  <span id="progress"></span>
  <button id="prev" type="button">&larr; previous</button>
  <button id="next" type="button">next &rarr;</button>
  <button id="save" type="button">Save answers (CSV)</button>
  <span id="status"></span>
</header>
<main>
  <section>
    <div class="box" id="case-title"></div>
    <div class="panel"><img id="image" alt="case image"><img id="overlay" alt="" hidden></div>
    <p>Window: <span id="windows"></span></p>
    <p><label><input type="checkbox" id="show-overlay"> show the mask over the image</label></p>
  </section>
  <section>
    <div class="box"><h2>Conditioned on: report / prompt</h2><div id="prompt"></div></div>
    <div class="box"><h2>Conditioned on: mask</h2>
      <div class="panel" style="display:inline-block"><img id="mask" alt="mask"></div>
      <div class="legend" id="legend"></div></div>
    <div class="box" id="questions">
      <p id="need-reader" class="warn">Enter your reader id (top) before answering.</p>
      <h2>1. Is this image real or synthetic?</h2>
      <p id="q-turing"></p>
      <h2>2. Does the image match the report and mask it was conditioned on?</h2>
      <p id="q-match"></p>
    </div>
    <div class="box"><h2>Cases</h2><div id="cases"></div></div>
    <details class="box"><summary>Instructions and keys</summary>
      <p>Each case is one CT/MR slice, real or synthetic, in random order. Answer both questions for every
      case, then press <b>Save answers (CSV)</b> and return the downloaded file. Your answers are kept in this
      browser until you save (a reload loses nothing). Keys: <b>r</b>/<b>s</b> real/synthetic,
      <b>1</b>/<b>2</b>/<b>3</b> match/partial match/not match, arrows previous/next case, <b>w</b> next window,
      <b>m</b> mask overlay.</p>
      <p>If your browser does not download the file, copy the text below into a file named
      answers-&lt;your id&gt;.csv after pressing Save:</p>
      <textarea id="csv-text" readonly></textarea>
    </details>
  </section>
</main>
"""

_SCRIPT = r"""
"use strict";
const KIT = JSON.parse(document.getElementById("kit-data").textContent);
const TURING = ["real", "synthetic"], MATCH = ["match", "partial match", "not match"];
const STORE = "medsynth-reader-kit:" + KIT.kit_id;
const state = {reader: "", index: 0, window: null, answers: {}};
const $ = (id) => document.getElementById(id);

function storageGet(key) { try { return localStorage.getItem(key); } catch (e) { return null; } }
function storageSet(key, value) { try { localStorage.setItem(key, value); } catch (e) { /* private mode */ } }
function loadAnswers(reader) {
  try { return JSON.parse(storageGet(STORE + ":" + reader) || "{}") || {}; } catch (e) { return {}; }
}
function saveLocal() {
  if (!state.reader) return;
  storageSet(STORE + ":" + state.reader, JSON.stringify(state.answers));
  storageSet(STORE + ":reader", state.reader);
}
function setReader(reader) {
  state.reader = reader.trim();
  state.answers = state.reader ? loadAnswers(state.reader) : {};
  render();
}
function answer(question, value) {
  if (!state.reader) { $("reader-id").focus(); return; }
  const id = KIT.cases[state.index].id;
  const a = Object.assign({}, state.answers[id] || {});
  a[question] = value;
  a.timestamp = new Date().toISOString();
  state.answers[id] = a;
  saveLocal();
  render();
}
function go(delta) { state.index = Math.min(KIT.cases.length - 1, Math.max(0, state.index + delta)); render(); }
function complete(a) { return a && a.turing && a.match; }

function choiceButtons(container, question, options, chosen) {
  container.textContent = "";
  options.forEach((option, i) => {
    const b = document.createElement("button");
    b.type = "button"; b.textContent = option; b.dataset.question = question; b.dataset.value = option;
    b.title = "key " + (question === "turing" ? option[0] : String(i + 1));
    b.className = chosen === option ? "on" : ""; b.disabled = !state.reader;
    b.addEventListener("click", () => answer(question, option));
    container.appendChild(b);
  });
}

function render() {
  const c = KIT.cases[state.index];
  const a = state.answers[c.id] || {};
  const names = c.images.map((w) => w[0]);
  if (!names.includes(state.window)) state.window = names[0];
  $("title").textContent = KIT.title;
  $("case-title").textContent = "Case " + c.id + " (" + (state.index + 1) + " of " + KIT.cases.length + ")";
  $("image").src = c.images[names.indexOf(state.window)][1];
  $("overlay").src = c.mask; $("mask").src = c.mask;
  $("overlay").hidden = !$("show-overlay").checked;
  const windows = $("windows"); windows.textContent = "";
  c.images.forEach(([name]) => {
    const b = document.createElement("button");
    b.type = "button"; b.textContent = name; b.dataset.window = name;
    const lw = KIT.windows[name]; if (lw) b.title = "level " + lw[0] + " HU, width " + lw[1] + " HU";
    b.className = name === state.window ? "on" : "";
    b.addEventListener("click", () => { state.window = name; render(); });
    windows.appendChild(b);
  });
  $("prompt").textContent = c.prompt || "(no report)";
  const legend = $("legend"); legend.textContent = "";
  KIT.conditions.forEach((cond) => {
    if (!c.conditions.includes(cond.name)) return;
    const sw = document.createElement("span"); sw.style.background = cond.colour;
    legend.appendChild(sw); legend.appendChild(document.createTextNode(cond.name));
  });
  if (!c.conditions.length) legend.textContent = "(empty mask)";
  choiceButtons($("q-turing"), "turing", TURING, a.turing);
  choiceButtons($("q-match"), "match", MATCH, a.match);
  $("need-reader").hidden = !!state.reader;
  const cases = $("cases"); cases.textContent = "";
  KIT.cases.forEach((k, i) => {
    const b = document.createElement("button"), ka = state.answers[k.id];
    b.type = "button"; b.textContent = k.id.replace(/^case-0*/, "");
    b.className = (complete(ka) ? "done" : ka ? "partial" : "") + (i === state.index ? " current" : "");
    b.addEventListener("click", () => { state.index = i; render(); });
    cases.appendChild(b);
  });
  const done = KIT.cases.filter((k) => complete(state.answers[k.id])).length;
  $("progress").textContent = done + " of " + KIT.cases.length + " answered";
  $("prev").disabled = state.index === 0;
  $("next").disabled = state.index === KIT.cases.length - 1;
  $("save").disabled = !state.reader;
  document.body.dataset.answered = String(done);
}

function csvField(value) {
  const s = value === undefined || value === null ? "" : String(value);
  return /[",\r\n]/.test(s) ? '"' + s.replace(/"/g, '""') + '"' : s;
}
function answersCsv() {
  const rows = [["reader_id", "kit_id", "case_id", "turing", "match", "timestamp"]];
  KIT.cases.forEach((c) => {
    const a = state.answers[c.id] || {};
    rows.push([state.reader, KIT.kit_id, c.id, a.turing, a.match, a.timestamp]);
  });
  return rows.map((r) => r.map(csvField).join(",")).join("\r\n") + "\r\n";
}
function saveCsv() {
  if (!state.reader) { $("reader-id").focus(); return; }
  const text = answersCsv();
  $("csv-text").value = text;
  const name = "answers-" + state.reader.replace(/[^A-Za-z0-9_.-]+/g, "_") + "-" + KIT.kit_id + ".csv";
  const url = URL.createObjectURL(new Blob([text], {type: "text/csv"}));
  const link = document.createElement("a");
  link.href = url; link.download = name; document.body.appendChild(link); link.click(); link.remove();
  setTimeout(() => URL.revokeObjectURL(url), 60000);
  const missing = KIT.cases.length - KIT.cases.filter((k) => complete(state.answers[k.id])).length;
  $("status").textContent = "saved " + name + (missing ? " (" + missing + " cases not fully answered)" : "");
  document.body.dataset.saved = name;
}

$("reader-id").addEventListener("input", (e) => setReader(e.target.value));
$("prev").addEventListener("click", () => go(-1));
$("next").addEventListener("click", () => go(1));
$("save").addEventListener("click", saveCsv);
$("show-overlay").addEventListener("change", render);
document.addEventListener("keydown", (e) => {
  if (e.target.tagName === "INPUT" && e.target.type === "text" || e.target.tagName === "TEXTAREA") return;
  if (e.ctrlKey || e.metaKey || e.altKey) return;
  const keys = {r: ["turing", "real"], s: ["turing", "synthetic"], 1: ["match", MATCH[0]],
                2: ["match", MATCH[1]], 3: ["match", MATCH[2]]};
  if (keys[e.key]) answer(...keys[e.key]);
  else if (e.key === "ArrowRight" || e.key === "n") go(1);
  else if (e.key === "ArrowLeft" || e.key === "p") go(-1);
  else if (e.key === "m") { $("show-overlay").checked = !$("show-overlay").checked; render(); }
  else if (e.key === "w") {
    const names = KIT.cases[state.index].images.map((w) => w[0]);
    state.window = names[(names.indexOf(state.window) + 1) % names.length]; render();
  } else return;
  e.preventDefault();
});
document.documentElement.style.setProperty("--size", KIT.display_size + "px");
const lastReader = storageGet(STORE + ":reader") || "";
$("reader-id").value = lastReader;
setReader(lastReader);
window.readerKit = {answersCsv: answersCsv, state: state};
"""


def render_page(data: Mapping) -> str:
    """``index.html`` of a kit: ``data`` (kit_id, title, display_size, windows, conditions, cases) as JSON in the page."""
    payload = json.dumps(data, indent=1, sort_keys=True, ensure_ascii=True).replace("</", "<\\/")
    title = html.escape(str(data.get("title", "Reader study")))
    return (f'<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n<title>{title}</title>\n'
            f'<meta name="viewport" content="width=device-width, initial-scale=1">\n<style>{_STYLE}</style>\n</head>\n'
            f'<body>{_BODY}<script type="application/json" id="kit-data">\n{payload}\n</script>\n'
            f"<script>{_SCRIPT}</script>\n</body>\n</html>\n")
