"""The Gradio demo: hear the base model and its adapters side by side, and clone a voice from clips.

Tabs: *Compare* (one sentence, one voice, every model of the bank side by side with mel spectrograms and
evaluation numbers), *Speak* (one model, one voice) and *Clone* (upload or record clips, adapt in the
background, the new adapter joins the bank). Endpoints have explicit API names: ``synthesize``,
``compare``, ``refresh``, ``read_transcripts``, ``curvature_status``, ``clone`` and ``cancel_clone``.
"""

from __future__ import annotations

import functools
import logging
import shutil
import time
from pathlib import Path

import gradio as gr
import numpy as np

from tts_adapt.adapt.adapt_config import AdaptConfig
from tts_adapt.adapt.strategies import STRATEGIES, get_strategy
from tts_adapt.demo.bank import AdapterBank, EvaluationReportError, read_evaluation
from tts_adapt.demo.jobs import CloneQueue, CloneRequest, curvature_for
from tts_adapt.demo.uploads import (AUDIO_SUFFIXES, MAX_FILE_MB, TEXT_SUFFIXES, check_clips, check_reference,
                                    clips_from_upload, transcript_rows, write_target_folder)
from tts_adapt.demo.voices import BASE, REFERENCE, VoiceModels, mel_image
from tts_adapt.evaluate.model_card import training_steps

log = logging.getLogger(__name__)
DEFAULT_ADAPTERS = Path("work") / "adapters"
DEFAULT_CURVATURE = Path("work") / "kfac.safetensors"
MAX_SLOTS = 8  # models side by side: the base model and up to seven adapters
MIN_CLIPS, MAX_CLIPS = 5, 50
PROMPTS = 50
POLL_SECONDS = 0.5


def user_errors(fn):
    """Turn the toolkit's input errors into a message in the page (never a traceback)."""
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except gr.Error:
            raise
        except (ValueError, KeyError, FileNotFoundError, EvaluationReportError) as err:
            raise gr.Error(str(err.args[0]) if isinstance(err, KeyError) else str(err)) from None

    return wrapper


def _audio(wav: np.ndarray, sample_rate: int) -> tuple[int, np.ndarray]:
    return sample_rate, (np.clip(wav, -1.0, 1.0) * 32767).astype(np.int16)


def evaluation_markdown(adapter) -> str:
    """An adapter's evaluation (``eval/report.json``) as a Markdown table, or how to make one."""
    report = read_evaluation(adapter)
    if report is None:
        return f"not evaluated (run `tts-adapt evaluate --adapter {adapter.path}`)"
    def number(value, sign: str = "") -> str:
        return "–" if value is None or value != value else f"{value:{sign}.3g}"  # None or NaN: not scored

    lines = ["| set | metric | base | adapted | change |", "|---|---|---:|---:|---:|"]
    for r in report["rows"]:
        se = f" ± {number(r['change_se'])}" if r["change"] is not None and r.get("change_se") is not None else ""
        lines.append(f"| {r['set']} | {r['metric']} | {number(r['base'])} | {number(r['adapted'])} | "
                     f"{number(r['change'], '+')}{se} |")
    lines += [f"\n*{metric}*: {text}" for metric, text in report["definitions"].items()]
    return "\n".join(lines)


class DemoService:
    """What the page does, without the page: voices, synthesis, comparison and cloning."""

    def __init__(self, model: str | Path | None = None, adapters: str | Path = DEFAULT_ADAPTERS,
                 curvature: list[str | Path] | None = None, *, min_clips: int = MIN_CLIPS,
                 max_clips: int = MAX_CLIPS, max_steps: int = 1000, preload: bool = True,
                 vocoder: str | Path | None = None):
        self.bank = AdapterBank(adapters)
        for stale in self.bank.remove_stale_staging():
            log.warning("removed %s, left by an interrupted clone run", stale)
        self.models = VoiceModels(self.bank, model, vocoder=vocoder)
        if preload:
            self.models.preload()
        self.curvature = [Path(p) for p in (curvature if curvature is not None else [DEFAULT_CURVATURE])]
        self.min_clips, self.max_clips, self.max_steps = min_clips, max_clips, max_steps
        self.jobs = CloneQueue(self.bank, self.models.model_dir)
        self._prompts: list[str] | None = None

    @property
    def sample_rate(self) -> int:
        return self.models.base.sample_rate

    def prompts(self) -> list[str]:
        """Sentences to read aloud when recording (phonetically varied, from the corpus's prompt grammar)."""
        if self._prompts is None:
            from tts_adapt.data.corpus.prompts import generate_prompts

            self._prompts = generate_prompts(PROMPTS, seed=7)
        return self._prompts

    # ------------------------------------------------------------------ listening
    def voice_choices(self) -> list[tuple[str, str]]:
        return [(v.label, v.key) for v in self.models.voices()]

    def model_choices(self) -> list[str]:
        return [BASE] + self.bank.names()

    def _voice(self, key: str, reference: str | None):
        if key == REFERENCE:
            reference = str(check_reference(reference, self.sample_rate))
        return self.models.voice(key, reference)

    def synthesize(self, text: str, model: str, voice: str, reference: str | None = None):
        """``((rate, int16 samples), mel image)`` of ``text`` by one model in one voice."""
        wav, mel = self.models.speak(model or BASE, text, self._voice(voice, reference))
        return _audio(wav, self.sample_rate), mel_image(mel)

    def compare(self, text: str, voice: str, reference: str | None, adapters: list[str], progress=None):
        """One slot per model (base first): ``(name, title, audio, mel image, evaluation markdown)``."""
        names = [BASE] + [a for a in self.bank.names() if a in set(adapters or [])]
        if len(names) > MAX_SLOTS:
            raise ValueError(f"{len(names) - 1} adapters chosen; compare at most {MAX_SLOTS - 1} at a time")
        v = self._voice(voice, reference)
        slots = []
        for i, name in enumerate(names):
            if progress is not None:
                progress((i, len(names)), desc=f"synthesising with {name}")
            wav, mel = self.models.speak(name, text, v)
            if name == BASE:
                backend = self.models.base.backend
                title = f"### base model\n{backend.name}, {training_steps(backend.info)} pretraining steps"
                evaluation = "the model every adapter starts from"
            else:
                adapter = self.bank.get(name)
                title, evaluation = f"### {name}\n{adapter.settings}", evaluation_markdown(adapter)
            slots.append((name, title, _audio(wav, self.sample_rate), mel_image(mel), evaluation))
        return slots

    # ------------------------------------------------------------------ cloning
    def curvature_status(self, strategy: str) -> str:
        return curvature_for(strategy, self.curvature)[1]

    def start_clone(self, files, rows, recordings, name, strategy, lam, rank, steps, owner: str = ""):
        """Check the clips and settings, write the clips into a fresh staging folder and queue the run."""
        name = self.bank.check_new_name(name)
        if name in self.jobs.pending_names():
            raise ValueError(f"a run named {name!r} is already queued; choose another name")
        steps = int(steps)
        if not 1 <= steps <= self.max_steps:
            raise ValueError(f"steps must be between 1 and {self.max_steps}, got {steps}")
        config = AdaptConfig(strategy=strategy, lam=float(lam or 0.0) if get_strategy(strategy).uses_lam else 0.0,
                             rank=int(rank), steps=steps)
        curvature, why = curvature_for(strategy, self.curvature)
        if get_strategy(strategy).needs_curvature and curvature is None:
            raise ValueError(why)
        clips = check_clips(clips_from_upload(files or [], rows, recordings), self.sample_rate,
                            min_clips=self.min_clips, max_clips=self.max_clips)
        staging = self.bank.staging()
        try:
            clips_dir = write_target_folder(clips, staging / "clips", self.sample_rate)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
        return self.jobs.submit(CloneRequest(name, clips_dir, staging, config, curvature, self.min_clips, owner))

    def cancel(self, owner: str = "") -> str:
        jobs = self.jobs.cancel(owner)
        if not jobs:
            return "No clone run of yours is queued or running."
        return f"Cancelling {', '.join(repr(j.request.name) for j in jobs)}: nothing will be saved."

    def close(self) -> None:
        self.jobs.close(timeout=60)


# ---------------------------------------------------------------------------------------- the page
def build_app(service: DemoService) -> gr.Blocks:
    """The page over ``service``; launch it with :func:`launch`."""
    voices = service.voice_choices()  # never empty: the reference clip is always a voice
    with gr.Blocks(title="tts_adapt: voice cloning without forgetting", analytics_enabled=False,
                   delete_cache=(3600, 3600)) as app:
        gr.Markdown("# tts_adapt demo\nA multi-speaker TTS model and its LoRA adapters: hear what each adapter "
                    "did to the new voice and to the old ones, or clone your own voice. "
                    f"Adapters: `{service.bank.root}`.")
        with gr.Tab("Compare"):
            c_text = gr.Textbox(label="Text", value="The quick brown fox jumps over the lazy dog.", lines=2)
            with gr.Row():
                c_voice = gr.Dropdown(label="Voice", choices=voices, value=voices[0][1], scale=2)
                c_models = gr.CheckboxGroup(label="Adapters (beside the base model)", choices=service.bank.names(),
                                            value=service.bank.names()[:MAX_SLOTS - 1], scale=3)
            c_ref = gr.Audio(label="Reference clip (for the voice 'reference clip')", sources=["upload", "microphone"],
                             type="filepath")
            with gr.Row():
                c_button = gr.Button("Synthesise and compare", variant="primary")
                refresh_button = gr.Button("Refresh lists")
            c_status = gr.Markdown()
            slots = []
            with gr.Row():
                for i in range(MAX_SLOTS):
                    with gr.Column(min_width=240):
                        slots.append((gr.Markdown(visible=i == 0), gr.Audio(label="audio", visible=i == 0),
                                      gr.Image(label="mel spectrogram", type="numpy", format="png", visible=i == 0),
                                      gr.Markdown(visible=i == 0)))
        with gr.Tab("Speak"):
            s_text = gr.Textbox(label="Text", value="Hello, this is a test of my new voice.", lines=2)
            with gr.Row():
                s_model = gr.Dropdown(label="Model", choices=service.model_choices(), value=BASE)
                s_voice = gr.Dropdown(label="Voice", choices=voices, value=voices[0][1])
            s_ref = gr.Audio(label="Reference clip (for the voice 'reference clip')", sources=["upload", "microphone"],
                             type="filepath")
            s_button = gr.Button("Speak", variant="primary")
            s_audio = gr.Audio(label="audio")
            s_mel = gr.Image(label="mel spectrogram", type="numpy", format="png")
        clone_event = _clone_tab(service)

        # ------------------------------------------------------------ events
        def refresh():
            voices, adapters = service.voice_choices(), service.bank.names()
            first = voices[0][1] if voices else None
            return (gr.Dropdown(choices=voices, value=first), gr.CheckboxGroup(choices=adapters,
                    value=adapters[:MAX_SLOTS - 1]), gr.Dropdown(choices=service.model_choices(), value=BASE),
                    gr.Dropdown(choices=voices, value=first))

        refresh_outputs = [c_voice, c_models, s_model, s_voice]
        app.load(refresh, outputs=refresh_outputs, api_name="refresh")
        refresh_button.click(refresh, outputs=refresh_outputs, api_name=False)
        clone_event.success(refresh, outputs=refresh_outputs, api_name=False)

        @user_errors
        def speak(text, model, voice, reference):
            return service.synthesize(text, model, voice, reference)

        s_button.click(speak, [s_text, s_model, s_voice, s_ref], [s_audio, s_mel], api_name="synthesize")

        @user_errors
        def compare(text, voice, reference, adapters, progress=gr.Progress()):
            t0 = time.time()
            filled = service.compare(text, voice, reference, adapters, progress)
            out = [f"{len(filled)} model(s) in {time.time() - t0:.1f} s"]
            for i in range(MAX_SLOTS):
                if i < len(filled):
                    _, title, audio, image, evaluation = filled[i]
                    out += [gr.Markdown(title, visible=True), gr.Audio(audio, visible=True),
                            gr.Image(image, visible=True), gr.Markdown(evaluation, visible=True)]
                else:
                    out += [gr.Markdown(visible=False), gr.Audio(None, visible=False), gr.Image(None, visible=False),
                            gr.Markdown(visible=False)]
            return out

        c_button.click(compare, [c_text, c_voice, c_ref, c_models], [c_status] + [c for s in slots for c in s],
                       api_name="compare")
    app.service = service
    return app


def _clone_tab(service: DemoService):
    # LoRA + K-FAC when its curvature is at hand (after quickstart), else plain LoRA
    default_strategy = "kfac" if curvature_for("kfac", service.curvature)[0] else "lora"
    with gr.Tab("Clone"):
        gr.Markdown(f"Clone a voice from **{service.min_clips}–{service.max_clips} clips** with transcripts: "
                    f"upload audio ({', '.join(AUDIO_SUFFIXES)}, up to {MAX_FILE_MB} MB and 20 s each) with a "
                    "`.txt` per clip (same name) or a `metadata.csv` (`file|text`), or type the transcripts in "
                    "the table; or record yourself reading the prompts. Runs are queued and run one at a time.")
        files = gr.File(label="Clips and transcripts", file_count="multiple",
                        file_types=list(AUDIO_SUFFIXES + TEXT_SUFFIXES))
        table = gr.Dataframe(label="Transcripts (editable)", headers=["clip", "transcript"], datatype=["str", "str"],
                             type="array", interactive=True, column_count=2, value=[])
        files.change(user_errors(lambda f: transcript_rows(f or [])), files, table, api_name="read_transcripts")
        recordings = gr.State([])
        with gr.Accordion("Record with the microphone", open=False):
            prompt_index = gr.State(0)
            prompt = gr.Markdown(f"**Read aloud:** {service.prompts()[0]}")
            mic = gr.Audio(label="Recording", sources=["microphone"], type="filepath")
            with gr.Row():
                keep = gr.Button("Keep recording, next prompt")
                skip = gr.Button("Skip this prompt")
                clear = gr.Button("Discard all recordings")
            kept = gr.Markdown("No recordings kept.")

        def keep_recording(path, recs, index):
            if not path:
                raise gr.Error("record the prompt first (press the microphone button)")
            recs = recs + [(path, service.prompts()[index % PROMPTS])]
            return recs, index + 1, f"**Read aloud:** {service.prompts()[(index + 1) % PROMPTS]}", None, \
                f"{len(recs)} recording(s) kept."

        keep.click(keep_recording, [mic, recordings, prompt_index], [recordings, prompt_index, prompt, mic, kept],
                   api_name=False)
        skip.click(lambda i: (i + 1, f"**Read aloud:** {service.prompts()[(i + 1) % PROMPTS]}"), prompt_index,
                   [prompt_index, prompt], api_name=False)
        clear.click(lambda: ([], "No recordings kept."), None, [recordings, kept], api_name=False)

        with gr.Row():
            name = gr.Textbox(label="Name of the new adapter", value="my-voice")
            strategy = gr.Radio(list(STRATEGIES), value=default_strategy, label="Strategy",
                                info="lora: no penalty; l2: ‖ΔW‖²; diag / kfac / ekfac: Laplace penalty from "
                                     "the pretraining data's curvature (needs a curvature file)")
        with gr.Row():
            lam = gr.Number(label="λ (penalty strength, in pretraining utterances)", value=1000, minimum=0)
            rank = gr.Slider(1, 32, value=8, step=1, label="LoRA rank")
            steps = gr.Slider(1, service.max_steps, value=min(200, service.max_steps), step=1, label="Steps")
        curvature = gr.Markdown(service.curvature_status(default_strategy))
        strategy.change(service.curvature_status, strategy, curvature, api_name="curvature_status")
        with gr.Row():
            start = gr.Button("Clone voice", variant="primary")
            cancel = gr.Button("Cancel", variant="stop")
        status = gr.Markdown()

        @user_errors
        def clone(files, rows, recs, name, strategy, lam, rank, steps, request: gr.Request, progress=gr.Progress()):
            job = service.start_clone(files, rows, recs, name, strategy, lam, rank, steps,
                                      owner=request.session_hash or "")
            while not job.wait(POLL_SECONDS):
                if job.state == "queued":
                    progress(0.0, desc=f"waiting: {service.jobs.ahead_of(job)} run(s) ahead in the queue")
                else:
                    progress((job.step, job.total), desc=job.message, unit="steps")
            if job.state == "failed":
                raise gr.Error(job.message)
            return f"**{job.state}**: {job.message}"

        event = start.click(clone, [files, table, recordings, name, strategy, lam, rank, steps], status,
                            api_name="clone", concurrency_limit=8)

        def cancel_clone(request: gr.Request):
            return service.cancel(request.session_hash or "")

        cancel.click(cancel_clone, None, status, api_name="cancel_clone", concurrency_limit=None)
    return event


def launch(app: gr.Blocks, host: str = "127.0.0.1", port: int | None = None, *, block: bool = True,
           quiet: bool = False):
    """Serve the page (localhost unless ``host`` says otherwise); returns ``(app, local URL)``.
    Only gradio's own cache is served: no ``allowed_paths``."""
    app.queue(default_concurrency_limit=1, max_size=64)
    _, url, _ = app.launch(server_name=host, server_port=port, prevent_thread_lock=not block, quiet=quiet,
                           max_file_size=f"{MAX_FILE_MB}mb", show_error=False, ssr_mode=False, mcp_server=False)
    return app, url


def run_demo(host: str = "127.0.0.1", port: int | None = None, model: str | Path | None = None,
             adapters: str | Path = DEFAULT_ADAPTERS, curvature: list[str | Path] | None = None, *,
             block: bool = True, **service_options):
    """Load the models, build the page and serve it; returns ``(app, local URL)`` (after the server
    stops when ``block``)."""
    service = DemoService(model, adapters, curvature, **service_options)
    try:
        return launch(build_app(service), host, port, block=block)
    finally:
        if block:
            service.close()
