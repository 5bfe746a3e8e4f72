"""The Gradio demo, through gradio's own Python client against an app launched in this process on a tiny
model: synthesis, side-by-side comparison (with and without an evaluation report), cloning (finished and
cancelled), upload checks, and that nothing outside the app's folders can be read. The evaluation table of
the Compare tab is also tested on its own, from report.json files written here. One end-to-end test drives
the page in a real headless Chromium.
"""

from __future__ import annotations

import json
import re
import shutil
import socket
import time
from pathlib import Path
from types import SimpleNamespace

import httpx
import numpy as np
import pytest
import soundfile as sf
from gradio_client import Client, handle_file
from gradio_client.exceptions import AppError

from tts_adapt.adapt.adapt_config import AdaptConfig
from tts_adapt.adapt.train import adapt
from tts_adapt.demo.app import (MAX_SLOTS, DemoService, build_app, change_verdict, comparison_table, launch,
                                measure_definitions)
from tts_adapt.demo.bank import AdapterBank
from tts_adapt.demo.uploads import Clip, UploadError, check_clips, clips_from_upload, transcripts_from_files
from tts_adapt.evaluate.measures import MEASURES

TEXT = "A short test sentence."
EMPTY_TABLE = {"headers": ["clip", "transcript"], "data": []}


def _row(set_: str, metric: str, base, base_ci, adapted, adapted_ci, change, change_ci, real=None,
         real_ci=(None, None), n: int = 8) -> dict:
    """One row of report.json as ``tts-adapt evaluate --adapter`` writes it."""
    return {"set": set_, "metric": metric, "n": n, "base": base, "base_ci": list(base_ci), "adapted": adapted,
            "adapted_ci": list(adapted_ci), "change": change, "change_ci": list(change_ci), "real": real,
            "real_ci": list(real_ci)}


# Two adapters of one bank (the same base figures). Learning: both lower the new voice's MCD, A outside the
# noise (better), B inside it (a tie). Forgetting: A's word error rate on the old voices rises outside the
# noise (worse), B's inside it; A's mel loss changes by a few parts in a hundred thousand (never "e-05").
REPORT = {"rows": [
    _row("target", "mcd_db", 9.23, (8.9, 9.6), 8.12, (7.8, 8.4), -1.11, (-1.4, -0.8)),
    _row("target", "similarity", 0.61, (0.58, 0.64), 0.80, (0.77, 0.83), 0.19, (0.15, 0.23), 0.86, (0.84, 0.88)),
    _row("pretrain", "wer", 0.41, (0.35, 0.47), 0.52, (0.46, 0.58), 0.11, (0.06, 0.16), 0.30, (0.25, 0.35), n=32),
    _row("pretrain", "mel_loss", 0.5, (0.49, 0.51), 0.50003, (0.49, 0.51), -2.72e-05, (-0.00934, 0.00911)),
    _row("unseen", "gpe", 0.05, (0.03, 0.07), 0.06, (0.04, 0.08), 0.01, (-0.005, 0.02))],
    "definitions": {"mcd_db": MEASURES["mcd_db"].definition, "interval": "95 % percentile bootstrap over utterances"},
    "strategy": "lora", "lam": 0.0}
REPORT_B = {"rows": [
    _row("target", "mcd_db", 9.23, (8.9, 9.6), 8.40, (8.0, 8.8), -0.83, (-1.9, 0.2)),
    _row("target", "similarity", 0.61, (0.58, 0.64), 0.70, (0.66, 0.74), 0.09, (0.05, 0.13), 0.86, (0.84, 0.88)),
    _row("pretrain", "wer", 0.41, (0.35, 0.47), 0.43, (0.37, 0.49), 0.02, (-0.01, 0.05), 0.30, (0.25, 0.35), n=32),
    _row("unseen", "dnsmos", 3.1, (3.0, 3.2), 3.05, (2.95, 3.15), -0.05, (-0.12, 0.02), 3.4, (3.3, 3.5))],
    "definitions": {}, "strategy": "kfac", "lam": 1000.0}
# A report of an earlier version: no intervals, a standard error, measures since renamed.
OLD_REPORT = {"rows": [{"set": "pretrain", "metric": "mcd_db", "base": 6.9, "adapted": 7.4, "change": 0.5,
                        "change_se": 0.1, "n": 8},
                       {"set": "unseen", "metric": "f0_rmse_hz", "base": None, "adapted": 21.0, "change": None},
                       {"set": "target", "metric": "voicing_error", "base": 0.2, "adapted": 0.1, "change": -0.1,
                        "change_se": 0.02, "n": 8}],
              "definitions": {"f0_rmse_hz": "RMSE of F0 (Hz) over frames voiced in both"}}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _audio_of(path: str) -> np.ndarray:
    wav, rate = sf.read(path)
    assert rate == 16000
    return wav


# --------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def bank(tiny_model, tiny_target_clips, feature_cache, tmp_path_factory) -> Path:
    """A bank with two adapters of the same target: 'evaluated' (with eval/report.json) and 'plain'."""
    root = tmp_path_factory.mktemp("bank")
    config = AdaptConfig(strategy="lora", rank=2, steps=2, batch_size=4, val_every=2, checkpoint_every=2)
    adapt(tiny_target_clips, root / "evaluated", tiny_model, config, cache_dir=feature_cache, progress=False)
    shutil.copytree(root / "evaluated", root / "plain")
    (root / "evaluated" / "eval").mkdir()
    (root / "evaluated" / "eval" / "report.json").write_text(json.dumps(REPORT))
    return root


@pytest.fixture(scope="module")
def served(tiny_model, bank):
    service = DemoService(tiny_model, bank, curvature=[], min_clips=5, max_steps=5000)
    app, url = launch(build_app(service), port=_free_port(), block=False, quiet=True)
    yield service, url
    app.close()
    service.close()


@pytest.fixture(scope="module")
def client(served) -> Client:
    return Client(served[1], verbose=False)


@pytest.fixture(scope="module")
def old_speaker(served) -> str:
    return served[0].models.old_speakers()[0]


def _upload(clips: Path, n: int) -> list:
    wavs = sorted(clips.glob("*.wav"))[:n]
    return [handle_file(str(p)) for w in wavs for p in (w, w.with_suffix(".txt"))]


def _clone(client: Client, files, name: str, steps: int = 2, strategy: str = "lora", submit: bool = False):
    args = (files, EMPTY_TABLE, name, strategy, 0, 2, steps)
    return client.submit(*args, api_name="/clone") if submit else client.predict(*args, api_name="/clone")


def _no_staging_left(bank: Path) -> bool:
    return not [p for p in bank.iterdir() if p.name.startswith(".")]


# --------------------------------------------------------------------------- listening
def test_binds_to_localhost(served):
    assert served[1].startswith("http://127.0.0.1:")


def test_synthesize_speaks_an_old_speaker_and_an_adapters_target(client, old_speaker):
    audio, image = client.predict(TEXT, "base", f"old:{old_speaker}", None, api_name="/synthesize")
    wav = _audio_of(audio)
    assert len(wav) > 1600 and np.abs(wav).max() > 0.01
    assert Path(image).suffix == ".png" and Path(image).stat().st_size > 0
    audio, _ = client.predict(TEXT, "evaluated", "target:evaluated", None, api_name="/synthesize")
    assert len(_audio_of(audio)) > 1600


LOAD_REQUESTS = 8
LOAD_SECONDS = 240  # all of them, on a busy 2-core machine (one takes about a second)


@pytest.mark.slow
def test_under_load_every_synthesis_request_is_answered_and_none_fails(served, old_speaker):
    """Concurrent requests from separate clients are queued (one synthesis at a time) and all answered, and
    the page's other calls are still served meanwhile."""
    clients = [Client(served[1], verbose=False) for _ in range(LOAD_REQUESTS)]
    voices = [f"old:{old_speaker}", "target:evaluated"]
    jobs = [c.submit(f"{TEXT} Request {i}.", "evaluated" if i % 2 else "base", voices[i % 2], None,
                     api_name="/synthesize") for i, c in enumerate(clients)]
    _, adapters, _, _ = clients[0].predict(api_name="/refresh")  # answered while the synthesis queue is full
    assert [c[1] for c in adapters["choices"]] == ["evaluated", "plain"]
    deadline = time.monotonic() + LOAD_SECONDS
    for i, job in enumerate(jobs):
        audio, image = job.result(timeout=max(1.0, deadline - time.monotonic()))
        assert len(_audio_of(audio)) > 1600 and Path(image).stat().st_size > 0, i
        assert job.status().success, i
    for c in clients:
        c.close()


def test_voices_group_adapters_of_the_same_target_and_list_old_speakers(client, old_speaker):
    compare_voice, adapters, models, _ = client.predict(api_name="/refresh")
    labels = dict((key, label) for label, key in compare_voice["choices"])
    assert labels["target:evaluated"] == "target voice of evaluated, plain"  # one voice, two adapters
    assert f"old:{old_speaker}" in labels and "reference" in labels
    assert [c[1] for c in adapters["choices"]] == ["evaluated", "plain"]
    assert [c[1] for c in models["choices"]] == ["base", "evaluated", "plain"]


def test_compare_shows_every_model_with_its_evaluation(client, old_speaker):
    out = client.predict(TEXT, f"old:{old_speaker}", None, ["evaluated", "plain"], api_name="/compare")
    status, slots = out[0], [out[1 + 4 * i: 5 + 4 * i] for i in range(MAX_SLOTS)]
    table, definitions = out[1 + 4 * MAX_SLOTS:]
    assert status.startswith("3 model(s)")
    titles = [s[0]["value"] for s in slots[:3]]
    assert titles[0].startswith("### base model") and titles[1].startswith("### evaluated")
    assert "lora" in titles[1] and titles[2].startswith("### plain")
    waves = [_audio_of(s[1]["value"]) for s in slots[:3]]
    assert all(len(w) > 1600 for w in waves)
    evaluated, plain = slots[1][3]["value"], slots[2][3]["value"]
    assert evaluated == "evaluated: its figures are in the table below"
    assert plain.startswith("not evaluated (run `tts-adapt evaluate --adapter") and "plain" in plain
    assert all(s[0]["visible"] is False for s in slots[3:])
    # one table below the slots: the evaluated adapter's column beside the base model's, and what is missing
    assert [_plain(c) for c in _table_rows(table)[0]] == ["measure", "real recordings", "base model", "evaluated lora"]
    assert "New voice (learning)" in table and "8.12 [7.80–8.40]" in table and "9.23 [8.90–9.60]" in table
    assert "plain: not evaluated (run <code>tts-adapt evaluate --adapter" in table
    assert "MCD-DTW" in definitions and "docs/measures.md" in definitions


def test_reference_clip_voice_is_checked(client, tiny_target_clips, tmp_path):
    clip = sorted(tiny_target_clips.glob("*.wav"))[0]
    out = client.predict(TEXT, "reference", handle_file(str(clip)), [], api_name="/compare")
    assert len(_audio_of(out[2]["value"])) > 1600
    silent = tmp_path / "quiet.wav"
    sf.write(silent, np.zeros(32000), 16000)
    with pytest.raises(AppError, match="quiet.wav: audio is silent"):
        client.predict(TEXT, "reference", handle_file(str(silent)), [], api_name="/compare")
    with pytest.raises(AppError, match="upload or record a reference clip"):
        client.predict(TEXT, "reference", None, [], api_name="/compare")


def test_empty_and_overlong_text_are_refused(client, old_speaker):
    with pytest.raises(AppError, match="type a sentence"):
        client.predict("  ", "base", f"old:{old_speaker}", None, api_name="/synthesize")
    with pytest.raises(AppError, match="at most"):
        client.predict("word " * 500, "base", f"old:{old_speaker}", None, api_name="/synthesize")


def test_files_outside_the_app_cannot_be_read(served, bank, tiny_model):
    url = served[1]
    for path in ("/etc/passwd", str(tiny_model / "model.pth"), str(bank / "evaluated" / "run.json")):
        r = httpx.get(f"{url}gradio_api/file={path}")
        assert r.status_code in (403, 404), (path, r.status_code)


# --------------------------------------------------------------------------- the evaluation table
SET_NAMES = ["New voice (learning)", "Old voices (forgetting)", "Unseen voices, zero-shot (forgetting)"]
RAW_KEYS = re.compile(r"\b(mcd_db|f0_cents|gpe|vde|wer|cer|dnsmos|id_top1|id_rank|mel_loss)\b")


def _evaluated(root: Path, name: str, report: dict | str | None) -> SimpleNamespace:
    """An adapter as the table reads it (its name and folder) with ``report`` as eval/report.json (none when
    None; a string is written as it is)."""
    folder = root / name
    (folder / "eval").mkdir(parents=True)
    if report is not None:
        text = report if isinstance(report, str) else json.dumps(report)
        (folder / "eval" / "report.json").write_text(text)
    return SimpleNamespace(name=name, path=folder)


def _plain(html: str) -> str:
    """What a reader sees of some HTML: its text, without the style sheet and tags, spaces collapsed."""
    html = re.sub(r"<style>.*?</style>", "", html, flags=re.DOTALL)
    return " ".join(re.sub(r"<[^>]+>", " ", html).split())


def _table_rows(html: str) -> list[list[str]]:
    """The table's rows, each the list of its cells' inner HTML (a set's header row has one cell)."""
    rows = re.findall(r"<tr>(.*?)</tr>", html, flags=re.DOTALL)
    return [re.findall(r"<t[dh][^>]*>(.*?)</t[dh]>", r, flags=re.DOTALL) for r in rows]


def _by_set(html: str) -> dict[str, dict[str, list[str]]]:
    """{set header: {measure label cell as text: cells}} of the table."""
    groups: dict[str, dict[str, list[str]]] = {}
    for cells in _table_rows(html)[1:]:
        if len(cells) == 1:
            current = groups.setdefault(_plain(cells[0]), {})
        else:
            current[_plain(cells[0])] = cells
    return groups


def _verdict(cell: str) -> str | None:
    found = re.findall(r'<span class="(better|worse|tie)">Δ', cell)
    return found[0] if found else None


def test_comparison_table_has_a_row_per_set_and_measure_with_labels_intervals_and_verdicts(tmp_path):
    a, b = _evaluated(tmp_path, "lora", REPORT), _evaluated(tmp_path, "lora+kfac", REPORT_B)
    html = comparison_table([a, b])
    assert [_plain(c) for c in _table_rows(html)[0]] == ["measure", "real recordings", "base model", "lora lora",
                                                         "lora+kfac kfac, λ 1000"]
    groups = _by_set(html)
    assert list(groups) == SET_NAMES
    for name, key in zip(SET_NAMES, ("target", "pretrain", "unseen")):  # one row per (set, measure), in order
        metrics = [m for m in MEASURES if any(r["set"] == key and r["metric"] == m
                                              for r in REPORT["rows"] + REPORT_B["rows"])]
        arrows = ["↓" if MEASURES[m].lower_is_better else "↑" for m in metrics]
        assert list(groups[name]) == [f"{MEASURES[m].label} ({MEASURES[m].unit}) {arrow}"
                                      for m, arrow in zip(metrics, arrows)]
    assert not RAW_KEYS.search(_plain(html))  # readable labels only
    assert not re.search(r"\d[eE][-+]?\d", _plain(html))  # no 1e-05 style number

    mcd = groups["New voice (learning)"]["MCD-DTW (dB) ↓"]
    assert [_plain(c) for c in mcd[1:]] == ["", "9.23 [8.90–9.60]", "8.12 [7.80–8.40] Δ -1.11 [-1.40, -0.800] ✓ better",
                                            "8.40 [8.00–8.80] Δ -0.830 [-1.90, +0.200] = tie"]
    wer = groups["Old voices (forgetting)"]["word error rate (%) ↓"]
    assert [_plain(c) for c in wer[1:3]] == ["30 % [25–35]", "41 % [35–47]"]  # the recogniser's floor, the base
    assert _plain(wer[3]) == "52 % [46–58] Δ +11 pp [+6.0, +16] ✗ worse"
    # the marking follows the change's interval: outside the noise better / worse, inside it a tie
    assert [_verdict(c) for c in mcd[3:]] == ["better", "tie"]
    assert [_verdict(c) for c in wer[3:]] == ["worse", "tie"]
    similarity = groups["New voice (learning)"]["speaker similarity (cosine) ↑"]
    assert [_verdict(c) for c in similarity[3:]] == ["better", "better"]  # higher is better: a rise is better
    mel = groups["Old voices (forgetting)"]["mel loss (teacher-forced) ↓"]
    assert _plain(mel[3]).endswith("[-0.00934, +0.00911] = tie") and _plain(mel[4]) == "–"  # not in B's report
    assert 'white-space: nowrap' in html and "overflow-x: auto" in html  # no cell wraps; a wide table scrolls


def test_change_verdict_follows_the_interval_and_the_direction_of_the_measure():
    assert change_verdict("mcd_db", -1.1, [-1.4, -0.8]) == "better"  # lower is better
    assert change_verdict("mcd_db", 0.4, [0.1, 0.7]) == "worse"
    assert change_verdict("mcd_db", -0.8, [-1.9, 0.2]) == "tie"  # a difference inside the noise
    assert change_verdict("similarity", 0.1, [0.05, 0.15]) == "better"  # higher is better
    assert change_verdict("similarity", -0.1, [-0.15, -0.05]) == "worse"
    assert change_verdict("mcd_db", 0.5, None) is None  # an old report: no interval
    assert change_verdict("f0_rmse_hz", 1.0, [0.5, 1.5]) is None  # a measure of unknown direction


def test_old_reports_render_under_their_keys_with_a_hint_to_rerun(tmp_path):
    new, old = _evaluated(tmp_path, "lora", REPORT), _evaluated(tmp_path, "old", OLD_REPORT)
    html = comparison_table([new, old])
    groups = _by_set(html)
    assert [_plain(c) for c in groups["Unseen voices, zero-shot (forgetting)"]["f0_rmse_hz"]] == [
        "f0_rmse_hz", "–", "–", "–", "21.0"]  # the raw key, no arrow
    voicing = groups["New voice (learning)"]["voicing_error"]
    assert _plain(voicing[4]) == "0.100 Δ -0.100 ± 0.0200 s.e." and _verdict(voicing[4]) == "tie"  # neutral: no interval
    mcd = groups["Old voices (forgetting)"]["MCD-DTW (dB) ↓"]
    assert _plain(mcd[2]) == "6.90" and _plain(mcd[4]) == "7.40 Δ +0.500 ± 0.100 s.e."
    assert "better" not in _plain(mcd[4]) and "worse" not in _plain(mcd[4])
    assert f"re-run <code>tts-adapt evaluate --adapter {old.path}</code>" in html
    assert f"--adapter {new.path}" not in html  # the new report needs nothing
    assert "RMSE of F0 (Hz)" in measure_definitions([old])
    assert _table_rows(comparison_table([old]))  # alone too


def test_comparison_table_notes_what_it_cannot_show_and_base_figures_that_differ(tmp_path):
    other = json.loads(json.dumps(REPORT))  # another target voice: other base figures on the target set
    other["rows"][0].update(base=10.1, base_ci=[9.7, 10.5])
    adapters = [_evaluated(tmp_path, "lora", REPORT), _evaluated(tmp_path, "other-voice", other),
                _evaluated(tmp_path, "plain", None), _evaluated(tmp_path, "broken", "{not json")]
    html = comparison_table(adapters)
    assert [_plain(c) for c in _table_rows(html)[0]][3:] == ["lora lora", "other-voice lora"]
    mcd = _by_set(html)["New voice (learning)"]["MCD-DTW (dB) ↓"]
    assert _plain(mcd[2]) == "9.23 [8.90–9.60] *"
    assert "lora 9.23 [8.90–9.60]; other-voice 10.1 [9.70–10.5]" in html
    assert f"plain: not evaluated (run <code>tts-adapt evaluate --adapter {tmp_path / 'plain'}</code>)" in html
    assert "broken:" in html and "not a report of tts-adapt evaluate" in html
    assert "No evaluation to show" in comparison_table(adapters[2:])
    assert "Choose adapters" in comparison_table([])


def test_measure_definitions_name_every_measure_and_the_page(tmp_path):
    text = measure_definitions([_evaluated(tmp_path, "lora", REPORT)])
    assert all(f"**{m.label}**" in text and m.definition in text for m in MEASURES.values())
    assert "docs/measures.md" in text
    assert "- **interval**: 95 % percentile bootstrap" in text and "**mcd_db**" not in text  # each term once


# --------------------------------------------------------------------------- cloning
def test_read_transcripts_fills_the_table_from_txt_files(client, tiny_target_clips):
    table = client.predict(_upload(tiny_target_clips, 2), api_name="/read_transcripts")
    wavs = sorted(tiny_target_clips.glob("*.wav"))[:2]
    assert [row[0] for row in table["data"]] == [w.name for w in wavs]
    assert [row[1] for row in table["data"]] == [w.with_suffix(".txt").read_text().strip() for w in wavs]


def test_clone_saves_a_new_adapter_that_compare_then_offers(client, bank, tiny_target_clips, old_speaker):
    status = _clone(client, _upload(tiny_target_clips, 6), "cloned")
    assert status.startswith("**done**") and "'cloned' saved" in status
    card = json.loads((bank / "cloned" / "run.json").read_text())
    assert card["steps"] == 2 and card["train_clips"] + card["val_clips"] == 6
    assert _no_staging_left(bank)
    _, adapters, _, _ = client.predict(api_name="/refresh")
    assert "cloned" in [c[1] for c in adapters["choices"]]
    out = client.predict(TEXT, f"old:{old_speaker}", None, ["cloned"], api_name="/compare")
    assert out[5]["value"].startswith("### cloned")
    with pytest.raises(AppError, match="already exists"):
        _clone(client, _upload(tiny_target_clips, 6), "cloned")


def _training_step(job) -> int:
    """The step the clone run reports in its progress bar (0 while queued or preparing)."""
    units = job.status().progress_data or []
    return max([int(u.index or 0) for u in units if u.unit == "steps" and u.length], default=0)


def test_cancelled_clone_leaves_nothing_in_the_bank(client, bank, tiny_target_clips):
    job = _clone(client, _upload(tiny_target_clips, 6), "cancelled-voice", steps=5000, submit=True)
    deadline = time.time() + 300
    while _training_step(job) < 1:  # wait until training has started
        assert time.time() < deadline and not job.done(), "the clone run did not start"
        time.sleep(0.2)
    assert "Cancelling 'cancelled-voice'" in client.predict(api_name="/cancel_clone")
    status = job.result(timeout=300)
    assert status.startswith("**cancelled**") and "nothing was saved" in status
    assert not (bank / "cancelled-voice").exists() and _no_staging_left(bank)
    assert client.predict(api_name="/cancel_clone").startswith("No clone run")


def test_bad_uploads_are_refused_naming_the_clip(client, bank, tiny_target_clips, tmp_path):
    files = _upload(tiny_target_clips, 5)
    sf.write(tmp_path / "hum.wav", np.zeros(16000), 16000)
    (tmp_path / "hum.txt").write_text("Nothing to hear.")
    with pytest.raises(AppError, match=r"hum.wav: audio is silent"):
        _clone(client, files + [handle_file(str(tmp_path / "hum.wav")), handle_file(str(tmp_path / "hum.txt"))],
               "bad")
    with pytest.raises(AppError, match="3 clip\\(s\\) given; at least 5"):
        _clone(client, _upload(tiny_target_clips, 3), "few")
    with pytest.raises(AppError, match="needs a kfac or ekfac curvature file"):
        _clone(client, files, "no-curvature", strategy="kfac")
    with pytest.raises(AppError, match="cannot name an adapter"):
        _clone(client, files, "../outside")
    assert sorted(p.name for p in bank.iterdir() if not p.name.startswith(".")) <= ["cloned", "evaluated", "plain"]
    assert _no_staging_left(bank)


def test_an_upload_below_the_models_rate_or_truncated_is_refused_as_adapt_refuses_it(tmp_path):
    from tts_adapt.data.validation import low_sample_rate

    t = np.arange(16000 * 2) / 16000
    sf.write(tmp_path / "narrow.wav", 0.3 * np.sin(2 * np.pi * 220 * t[::2]), 8000)
    sf.write(tmp_path / "cut.wav", 0.3 * np.sin(2 * np.pi * 220 * t), 16000)
    data = (tmp_path / "cut.wav").read_bytes()
    (tmp_path / "cut.wav").write_bytes(data[:len(data) // 2])
    clips = [Clip("narrow.wav", tmp_path / "narrow.wav", "Narrow."), Clip("cut.wav", tmp_path / "cut.wav", "Cut.")]
    with pytest.raises(UploadError) as err:
        check_clips(clips, 16000, min_clips=1, max_clips=50)
    lines = str(err.value).splitlines()
    assert lines[1] == "narrow.wav: " + low_sample_rate(8000, 16000)
    assert lines[2].startswith("cut.wav: truncated: its header says 2.00 s (32000 frames) but the file holds 1.00 s")


def test_check_clips_lists_every_bad_clip(tmp_path):
    t = np.arange(16000) / 16000
    sf.write(tmp_path / "ok.wav", 0.3 * np.sin(2 * np.pi * 220 * t), 16000)
    sf.write(tmp_path / "short.wav", 0.3 * np.sin(2 * np.pi * 220 * t[:1600]), 16000)
    sf.write(tmp_path / "narrow.wav", 0.3 * np.sin(2 * np.pi * 220 * t[:8000]), 8000)
    clips = [Clip("ok.wav", tmp_path / "ok.wav", "Fine."), Clip("short.wav", tmp_path / "short.wav", "Short."),
             Clip("narrow.wav", tmp_path / "narrow.wav", "Narrow."), Clip("untold.wav", tmp_path / "ok.wav", ""),
             Clip("odd.wav", tmp_path / "ok.wav", "Caf\u00e9 \u2603")]
    with pytest.raises(UploadError) as err:
        check_clips(clips, 16000, min_clips=1, max_clips=50)
    message = str(err.value)
    assert message.startswith("4 clip(s) cannot be used")
    assert "short.wav: too short" in message and "narrow.wav: recorded at 8000 Hz" in message
    assert "untold.wav: no transcript" in message and "odd.wav: transcript has characters outside" in message
    assert "ok.wav:" not in message


def test_recordings_join_the_uploads_with_their_prompts(tmp_path):
    t = np.arange(16000) / 16000
    sf.write(tmp_path / "a.wav", 0.3 * np.sin(2 * np.pi * 220 * t), 16000)
    (tmp_path / "a.txt").write_text("Uploaded.")
    clips = clips_from_upload([tmp_path / "a.wav", tmp_path / "a.txt"], [["a.wav", ""]],
                              [(str(tmp_path / "a.wav"), "Read aloud.")])
    assert [(c.name, c.text) for c in clips] == [("a.wav", "Uploaded."), ("recording 1", "Read aloud.")]
    with pytest.raises(UploadError, match="unsupported file type: notes.pdf"):
        clips_from_upload([tmp_path / "notes.pdf"])


def test_demo_command_binds_to_localhost_by_default(monkeypatch, tmp_path):
    import tts_adapt.demo.app as demo_app
    from tts_adapt.cli import main

    calls = []
    monkeypatch.setattr(demo_app, "run_demo", lambda *args, **kwargs: calls.append((args, kwargs)))
    assert main(["demo", "--adapters", str(tmp_path), "--port", "7999"]) == 0
    (host, port, model, adapters, curvature), options = calls[0]
    assert (host, port, model, adapters) == ("127.0.0.1", 7999, None, tmp_path)
    assert curvature[0].name == "kfac.safetensors" and options["min_clips"] == 5


def test_metadata_csv_transcripts_and_txt_precedence(tmp_path):
    (tmp_path / "metadata.csv").write_text("file|text\na.wav|From the table.\nb|Only here.\n")
    (tmp_path / "a.txt").write_text("From the txt file.\n")
    assert transcripts_from_files([tmp_path / "metadata.csv", tmp_path / "a.txt"]) == {
        "a": "From the txt file.", "b": "Only here."}


def test_bank_publishes_only_complete_adapters_and_cleans_dead_runs(bank, tmp_path):
    own = AdapterBank(tmp_path / "own")
    staging = own.staging()
    with pytest.raises(ValueError, match="not a complete adapter"):
        own.publish(staging, "half")
    shutil.copytree(bank / "plain", staging / "adapter")
    assert own.publish(staging / "adapter", "whole").name == "whole" and own.names() == ["whole"]
    dead = own.root / ".staging-999999999-abc"
    dead.mkdir()
    assert own.remove_stale_staging() == [dead] and staging.exists()  # a live run's folder is kept


# --------------------------------------------------------------------------- in a real browser
@pytest.mark.slow
def test_page_synthesises_in_headless_chromium(served, tmp_path):
    chromium = shutil.which("chromium")
    if chromium is None:
        pytest.skip("the browser test needs the Debian package chromium (installed by scripts/setup.sh)")
    from playwright.sync_api import expect, sync_playwright

    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=chromium, headless=True, args=["--no-sandbox"])
        page = browser.new_page()
        page.goto(served[1])
        page.get_by_role("tab", name="Speak").click()
        text = page.get_by_label("Text").last
        text.fill("Hello from the browser.")
        page.get_by_role("button", name="Speak", exact=True).click()
        audio = page.locator("audio[src]").first  # gradio's player: an <audio> in a shadow root, a blob source
        expect(audio).to_be_attached(timeout=120_000)
        page.wait_for_function("a => a.duration > 0", arg=audio.element_handle(), timeout=60_000)
        duration = audio.evaluate("a => a.duration")
        page.screenshot(path=str(tmp_path / "demo.png"), full_page=True)
        browser.close()
    assert duration > 0.2
    assert (tmp_path / "demo.png").stat().st_size > 10_000
