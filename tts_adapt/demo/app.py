"""The Gradio demo: hear the base model and its adapters side by side, and clone a voice from clips.

Tabs: *Compare* (one sentence, one voice, every model of the bank side by side with mel spectrograms,
and one table of the adapters' evaluations beside the base model's), *Speak* (one model, one voice) and
*Clone* (upload or record clips, adapt in the background, the new adapter joins the bank). Endpoints have
explicit API names: ``synthesize``, ``compare``, ``refresh``, ``read_transcripts``, ``curvature_status``,
``clone`` and ``cancel_clone``.
"""

from __future__ import annotations

import functools
import logging
import math
import shutil
import time
from html import escape
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
from tts_adapt.evaluate.measures import MEASURES, Measure
from tts_adapt.evaluate.measures import verdict as change_verdict
from tts_adapt.evaluate.model_card import training_steps

log = logging.getLogger(__name__)
DEFAULT_ADAPTERS = Path("work") / "adapters"
DEFAULT_CURVATURE = Path("work") / "kfac.safetensors"
DEFAULT_REPLAY_DATA = Path("work") / "corpus"  # the embedded corpus quickstart builds: what ilora replays
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


# ------------------------------------------------------------------------------- the evaluation table
#: The sets of an evaluation, in the table's order, with what each one tells.
SETS = {"target": "New voice (learning)", "pretrain": "Old voices (forgetting)",
        "unseen": "Unseen voices, zero-shot (forgetting)"}
MEASURES_PAGE = "docs/measures.md"
_COLUMNS = {"real": "real recordings", "base": "base model"}
_VERDICTS = {"better": "✓ better", "worse": "✗ worse", "tie": "= tie"}
#: The table's style: no cell wraps (a wide table scrolls sideways); green better, red worse, grey a tie.
_STYLE = """<style>
div.tts-eval {overflow-x: auto; max-width: 100%}
div.tts-eval table.grid {border-collapse: collapse; width: auto; margin: 0}
div.tts-eval table.grid th, div.tts-eval table.grid td {white-space: nowrap; word-break: keep-all;
  overflow-wrap: normal; padding: 4px 10px; border: none; border-bottom: 1px solid var(--border-color-primary, #ddd);
  vertical-align: top; text-align: right; font-variant-numeric: tabular-nums}
div.tts-eval table.grid th:first-child, div.tts-eval table.grid td:first-child {text-align: left}
div.tts-eval table.grid th.set {text-align: left; background: var(--background-fill-secondary, #f3f4f6)}
div.tts-eval .small, div.tts-notes p {font-size: 0.85em; color: #6e7781; font-weight: normal}
div.tts-notes p {margin: 4px 0}
div.tts-notes span, div.tts-notes code {white-space: nowrap}
.tts-eval .better, .tts-notes .better {color: #1a7f37}
.tts-eval .worse, .tts-notes .worse {color: #cf222e}
.tts-eval .tie, .tts-notes .tie {color: #6e7781}
</style>"""


def _rerun(adapter) -> str:
    return f"tts-adapt evaluate --adapter {adapter.path}"


def _unknown(key: str) -> Measure:
    """A measure the table of measures does not know (an older report's): shown under its own key."""
    return Measure(key, key, "", True, "", digits=3)


def _is_old(report: dict) -> bool:
    """Written before the figures had intervals, or with measures that have since been renamed."""
    return any(r["change_ci"] is None or r["metric"] not in MEASURES for r in report["rows"])


def _bare(text: str) -> str:
    return text.removesuffix(" %")


def _figure(measure: Measure, value: float | None, interval=None, *, signed: bool = False) -> str:
    """``8.12 [7.8–8.4]``: the value by :meth:`Measure.format` and its interval's bounds (without the unit);
    a change of a percentage in percentage points (``+4 pp [-1, +9]``)."""
    if value is None:
        return "–"
    text = measure.format(value, signed=signed)
    if signed and measure.percent:
        text = _bare(text) + " pp"
    if interval is not None and None not in interval:
        low, high = (_bare(measure.format(v, signed=signed)) for v in interval)
        text += f" [{low}, {high}]" if signed or min(interval) < 0 else f" [{low}–{high}]"
    return text


def _read_reports(adapters) -> tuple[list, list[str]]:
    """``[(adapter, report)]`` of the evaluated adapters, and a line for each one that is not (or whose
    report is old or unreadable)."""
    evaluated, notes = [], []
    for adapter in adapters:
        try:
            report = read_evaluation(adapter)
        except EvaluationReportError as err:
            notes.append(f"{escape(adapter.name)}: {escape(str(err))}; re-run <code>{escape(_rerun(adapter))}</code>")
            continue
        if report is None:
            notes.append(f"{escape(adapter.name)}: not evaluated (run <code>{escape(_rerun(adapter))}</code>)")
            continue
        if _is_old(report):
            notes.append(f"{escape(adapter.name)}: evaluated by an earlier version (no intervals, or measures since "
                         f"renamed); re-run <code>{escape(_rerun(adapter))}</code>")
        evaluated.append((adapter, report))
    return evaluated, notes


def evaluation_status(adapter) -> str:
    """One line for a model's slot: is the adapter evaluated (its figures are in the table below)?"""
    try:
        report = read_evaluation(adapter)
    except EvaluationReportError as err:
        return f"evaluation unreadable: {err}"
    if report is None:
        return f"not evaluated (run `{_rerun(adapter)}`)"
    if _is_old(report):
        return f"evaluated by an earlier version: re-run `{_rerun(adapter)}`"
    return "evaluated: its figures are in the table below"


def _shared(rows: list[tuple[str, dict]], key: str) -> list[tuple[str, dict]]:
    """``(adapter name, row)`` of the first report with a figure ``key`` (the base model's or the real
    recordings', the same in every report of a bank), then those whose figure differs from it."""
    have = [(name, r) for name, r in rows if r.get(key) is not None]
    return have[:1] + [(n, r) for n, r in have[1:]
                       if not math.isclose(r[key], have[0][1][key], rel_tol=1e-6, abs_tol=1e-9)]


def comparison_table(adapters) -> str:
    """The evaluations (``eval/report.json``) of ``adapters`` as one HTML table beside the base model:
    a header row per set, a row per measure (its label, unit and direction), the real recordings' figure
    where the measure has one, the base model's, and per adapter its figure and its change from the base
    model coloured by its interval; notes below name adapters that are not evaluated, old reports and
    base figures on which the reports disagree."""
    adapters = list(adapters)
    if not adapters:
        return "<p>Choose adapters to see their evaluation beside the base model's.</p>"
    evaluated, notes = _read_reports(adapters)
    if not evaluated:
        return _STYLE + _notes_html(["No evaluation to show."] + notes)
    rows: dict[tuple[str, str], list[tuple[str, dict]]] = {}
    for adapter, report in evaluated:
        for r in report["rows"]:
            rows.setdefault((r["set"], r["metric"]), []).append((adapter.name, r))
    sets = list(dict.fromkeys(list(SETS) + [s for s, _ in rows]))
    columns = 3 + len(evaluated)
    head = "".join(f"<th>{escape(adapter.name)}{_settings(report)}</th>" for adapter, report in evaluated)
    lines = [_STYLE, '<div class="tts-eval"><table class="grid">',
             f"<thead><tr><th>measure</th><th>{_COLUMNS['real']}</th><th>{_COLUMNS['base']}</th>{head}</tr></thead>",
             "<tbody>"]
    differ = []
    for group in sets:
        present = [m for s, m in rows if s == group]
        if not present:
            continue
        metrics = [m for m in MEASURES if m in present] + [m for m in present if m not in MEASURES]
        lines.append(f'<tr><th class="set" colspan="{columns}">{escape(SETS.get(group, group))}</th></tr>')
        for metric in metrics:
            found = rows[(group, metric)]
            known = MEASURES.get(metric)
            measure = known or _unknown(metric)
            cells = [_measure_label(measure, known is not None)]
            for key, applies in (("real", known is None or known.real), ("base", True)):
                shown = _shared(found, key) if applies else []
                text = _figure(measure, shown[0][1][key], shown[0][1][f"{key}_ci"]) if shown else \
                    ("–" if applies else "")
                if len(shown) > 1:
                    text += " *"
                    differ.append(f"{escape(SETS.get(group, group))}, {escape(measure.label)}, {_COLUMNS[key]}: "
                                  + "; ".join(f"{escape(n)} {escape(_figure(measure, r[key], r[f'{key}_ci']))}"
                                              for n, r in shown))
                cells.append(escape(text))
            by_name = dict(found)
            cells += [_adapter_cell(measure, by_name.get(adapter.name)) for adapter, _ in evaluated]
            lines.append("<tr>" + "".join(f"<td>{c}</td>" for c in cells) + "</tr>")
    lines.append("</tbody></table></div>")
    legend = ("Each figure: the measure over the evaluated utterances [its 95 % interval]. Under an adapter's figure, "
              "Δ is its change from the base model on the same utterances: "
              f'<span class="better">{_VERDICTS["better"]}</span> or <span class="worse">{_VERDICTS["worse"]}</span> '
              "when the change's interval lies wholly on one side of zero, "
              f'<span class="tie">{_VERDICTS["tie"]}</span> when it includes zero (a difference inside the noise '
              "is a tie). ↓ lower is better, ↑ higher is better; changes of percentages are in percentage "
              "points (pp).")
    if differ:
        notes.append("* The reports disagree on these figures (evaluated on other utterances or another target "
                     "voice); the column shows the first, and each adapter's Δ is against its own report's base "
                     "model: " + " · ".join(differ))
    return "\n".join(lines) + _notes_html([legend] + notes)


def _notes_html(notes: list[str]) -> str:
    return '<div class="tts-notes">' + "".join(f"<p>{n}</p>" for n in notes) + "</div>"


def _settings(report: dict) -> str:
    """The strategy and λ the report names, in small type under the adapter's name."""
    strategy, lam = report.get("strategy"), report.get("lam")
    if not strategy:
        return ""
    text = f"{strategy}, λ {lam:g}" if isinstance(lam, (int, float)) and lam else str(strategy)
    return f'<br><span class="small">{escape(text)}</span>'


def _measure_label(measure: Measure, known: bool) -> str:
    if not known:
        return escape(measure.label)  # an unknown measure: its key, no direction
    arrow, direction = ("↓", "lower is better") if measure.lower_is_better else ("↑", "higher is better")
    return f'{escape(measure.label)} <span class="small">({escape(measure.unit)})</span> ' \
           f'<span title="{direction}">{arrow}</span>'


def _adapter_cell(measure: Measure, row: dict | None) -> str:
    """The adapter's figure with its interval, and under it its change from the base model, coloured."""
    if row is None:
        return "–"
    text = escape(_figure(measure, row["adapted"], row["adapted_ci"]))
    change = row["change"]
    if change is None:
        return text
    if row["change_ci"] is None and row["change_se"] is not None:  # an older report: a standard error
        delta = f"{_figure(measure, change, signed=True)} ± {_bare(measure.format(row['change_se']))} s.e."
    else:
        delta = _figure(measure, change, row["change_ci"], signed=True)
    verdict = change_verdict(measure.key, change, row["change_ci"])
    word = f" {_VERDICTS[verdict]}" if verdict else ""
    return f'{text}<br><span class="{verdict or "tie"}">Δ {escape(delta)}{word}</span>'


def measure_definitions(adapters=()) -> str:
    """What each measure means (Markdown): the table of measures', then any other term the reports of
    ``adapters`` define (the interval; the measures of older reports)."""
    lines = [("Every figure is a mean over the evaluated utterances (the error rates: all errors over all "
              "reference words or characters) with its 95 % bootstrap interval over the utterances; a change is "
              "measured on the same utterances for both models, and one whose interval includes zero is a tie. "
              "The full account of the measures, how they are computed and how to read them: the page "
              f"`{MEASURES_PAGE}` of the tts_adapt repository."), ""]
    for m in MEASURES.values():
        direction = "lower is better" if m.lower_is_better else "higher is better"
        lines.append(f"- **{m.label}** ({m.unit}; {direction}): {m.definition}")
    extra = {}
    for _, report in _read_reports(adapters)[0]:
        extra.update({k: v for k, v in report["definitions"].items() if k not in MEASURES and k not in extra})
    if extra:
        lines += ["", "Also defined by the reports:", ""] + [f"- **{k}**: {v}" for k, v in extra.items()]
    return "\n".join(lines)


class DemoService:
    """What the page does, without the page: voices, synthesis, comparison and cloning."""

    def __init__(self, model: str | Path | None = None, adapters: str | Path = DEFAULT_ADAPTERS,
                 curvature: list[str | Path] | None = None, *, min_clips: int = MIN_CLIPS,
                 max_clips: int = MAX_CLIPS, max_steps: int = 1000, preload: bool = True,
                 vocoder: str | Path | None = None, device: str | None = "auto",
                 replay_data: str | Path | None = DEFAULT_REPLAY_DATA):
        self.bank = AdapterBank(adapters)
        for stale in self.bank.remove_stale_staging():
            log.warning("removed %s, left by an interrupted clone run", stale)
        self.models = VoiceModels(self.bank, model, vocoder=vocoder, device=device)
        if preload:
            self.models.preload()
        self.curvature = [Path(p) for p in (curvature if curvature is not None else [DEFAULT_CURVATURE])]
        self.replay_data = Path(replay_data) if replay_data else None
        self.min_clips, self.max_clips, self.max_steps = min_clips, max_clips, max_steps
        self.jobs = CloneQueue(self.bank, self.models.model_dir, device=device)
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
        """One slot per model (base first): ``(name, title, audio, mel image, evaluation status)``; the
        evaluations themselves are in :meth:`evaluation`."""
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
                title, evaluation = f"### {name}\n{adapter.settings}", evaluation_status(adapter)
            slots.append((name, title, _audio(wav, self.sample_rate), mel_image(mel), evaluation))
        return slots

    def evaluation(self, adapters: list[str]) -> tuple[str, str]:
        """The evaluations of the named adapters as one table (HTML) and what its measures mean (Markdown)."""
        chosen = [self.bank.get(name) for name in adapters]
        return comparison_table(chosen), measure_definitions(chosen)

    # ------------------------------------------------------------------ cloning
    def curvature_status(self, strategy: str) -> str:
        if get_strategy(strategy).needs_replay_data:
            return self.replay_status()[1]
        return curvature_for(strategy, self.curvature)[1]

    def replay_status(self) -> tuple[Path | None, str]:
        """The pretraining corpus a replaying strategy (ilora) can replay, and a sentence for the user;
        ``(None, why)`` when the demo has none."""
        data = self.replay_data
        if data is not None and (data / "manifest.csv").is_file():
            return data, f"replays pretraining utterances of {data}."
        where = data if data is not None else "(no --replay-data given)"
        return None, (f"strategy ilora replays the base model's pretraining utterances and found no corpus in "
                      f"{where}: run 'tts-adapt quickstart' (it builds work/corpus), or start the demo with "
                      "--replay-data CORPUS.")

    def start_clone(self, files, rows, recordings, name, strategy, lam, rank, steps, owner: str = ""):
        """Check the clips and settings, write the clips into a fresh staging folder and queue the run."""
        name = self.bank.check_new_name(name)
        if name in self.jobs.pending_names():
            raise ValueError(f"a run named {name!r} is already queued; choose another name")
        steps = int(steps)
        if not 1 <= steps <= self.max_steps:
            raise ValueError(f"steps must be between 1 and {self.max_steps}, got {steps}")
        # an empty λ field is the strategy's documented default, never a silent 0 (plain LoRA under another name)
        lam = None if lam in (None, "") else float(lam)
        config = AdaptConfig(strategy=strategy, lam=lam if get_strategy(strategy).uses_lam else 0.0,
                             rank=int(rank), steps=steps)
        curvature, why = curvature_for(strategy, self.curvature)
        if get_strategy(strategy).needs_curvature and curvature is None:
            raise ValueError(why)
        replay_data, why = self.replay_status()
        if get_strategy(strategy).needs_replay_data and replay_data is None:
            raise ValueError(why)
        clips = check_clips(clips_from_upload(files or [], rows, recordings), self.sample_rate,
                            min_clips=self.min_clips, max_clips=self.max_clips)
        staging = self.bank.staging()
        try:
            clips_dir = write_target_folder(clips, staging / "clips", self.sample_rate)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
        return self.jobs.submit(CloneRequest(name, clips_dir, staging, config, curvature, self.min_clips, owner,
                                             replay_data if get_strategy(strategy).needs_replay_data else None))

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
            c_table = gr.HTML()
            with gr.Accordion("What the measures mean", open=False):
                c_definitions = gr.Markdown(measure_definitions())
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
            return out + list(service.evaluation([name for name, *_ in filled[1:]]))

        c_button.click(compare, [c_text, c_voice, c_ref, c_models],
                       [c_status] + [c for s in slots for c in s] + [c_table, c_definitions], api_name="compare")
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
            lam = gr.Number(label="λ (penalty strength, in pretraining utterances)",
                            value=get_strategy(default_strategy).default_lam or get_strategy("kfac").default_lam,
                            minimum=0, info="empty: the strategy's default (docs/results.md says how it was chosen)")
            rank = gr.Slider(1, 32, value=8, step=1, label="LoRA rank")
            steps = gr.Slider(1, service.max_steps, value=min(200, service.max_steps), step=1, label="Steps")
        curvature = gr.Markdown(service.curvature_status(default_strategy))
        strategy.change(service.curvature_status, strategy, curvature, api_name="curvature_status")
        # each strategy's own default λ (l2 counts squared weights, the Laplace penalties pretraining utterances)
        strategy.change(lambda s: get_strategy(s).default_lam or None, strategy, lam, api_name=False)
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
