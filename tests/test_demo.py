"""The Gradio demo, through gradio's own Python client against an app launched in this process on a tiny
model: synthesis, side-by-side comparison (with and without an evaluation report), cloning (finished and
cancelled), upload checks, and that nothing outside the app's folders can be read. One end-to-end test
drives the page in a real headless Chromium.
"""

from __future__ import annotations

import json
import shutil
import socket
import time
from pathlib import Path

import httpx
import numpy as np
import pytest
import soundfile as sf
from gradio_client import Client, handle_file
from gradio_client.exceptions import AppError

from tts_adapt.adapt.adapt_config import AdaptConfig
from tts_adapt.adapt.train import adapt
from tts_adapt.demo.app import MAX_SLOTS, DemoService, build_app, launch
from tts_adapt.demo.bank import AdapterBank
from tts_adapt.demo.uploads import Clip, UploadError, check_clips, clips_from_upload, transcripts_from_files

TEXT = "A short test sentence."
EMPTY_TABLE = {"headers": ["clip", "transcript"], "data": []}
REPORT = {"rows": [{"set": "target", "metric": "speaker similarity", "base": 0.70, "adapted": 0.75, "change": 0.05},
                   {"set": "pretrain", "metric": "MCD (dB)", "base": 6.9, "adapted": 7.4, "change": 0.5,
                    "change_se": 0.1, "n": 8},
                   {"set": "unseen", "metric": "F0 RMSE", "base": None, "adapted": 21.0, "change": None}],
          "definitions": {"MCD (dB)": "mel-cepstral distortion against the real recording"}}


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
    assert status.startswith("3 model(s)")
    titles = [s[0]["value"] for s in slots[:3]]
    assert titles[0].startswith("### base model") and titles[1].startswith("### evaluated")
    assert "lora" in titles[1] and titles[2].startswith("### plain")
    waves = [_audio_of(s[1]["value"]) for s in slots[:3]]
    assert all(len(w) > 1600 for w in waves)
    evaluated, plain = slots[1][3]["value"], slots[2][3]["value"]
    assert "| target | speaker similarity | 0.7 | 0.75 | +0.05 |" in evaluated
    assert "| pretrain | MCD (dB) | 6.9 | 7.4 | +0.5 ± 0.1 |" in evaluated
    assert "| unseen | F0 RMSE | – | 21 | – |" in evaluated  # nothing to compare with: null in the report
    assert "mel-cepstral distortion" in evaluated
    assert plain.startswith("not evaluated (run `tts-adapt evaluate --adapter") and "plain" in plain
    assert all(s[0]["visible"] is False for s in slots[3:])


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
