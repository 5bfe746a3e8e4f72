"""Model cards: what a model folder holds, how it was trained, and how well it speaks.

``write_model_card(model_dir, report_dir)`` composes ``MODEL_CARD.md`` and
``training_curve.png`` in the model folder from files that commands wrote:
``tts_adapt.json`` and ``train_log.csv`` (``tts-adapt pretrain``) and
``report.json`` (``tts-adapt evaluate``, copied into the folder as ``eval_report.json``, or
``eval_report_world.json`` and so on for a vocoder other than Griffin-Lim: the card shows every
vocoder's report the folder holds), ``intelligibility_<vocoder>.json``
(``benchmarks/intelligibility.py --out``) and ``pilot.md``
(``benchmarks/pilot_backends.py``) when the model folder holds them. Nothing in the
card is typed by hand except the free-text notes: ``notes``, or else the model
folder's ``card_notes.md``.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

from tts_adapt.data.audio import AudioConfig
from tts_adapt.evaluate.corpus_voices import REFERENCES
from tts_adapt.evaluate.report import to_markdown
from tts_adapt.io import write_json_atomic, write_text_atomic
from tts_adapt.models.pretrain_config import EARLIER_DEFAULTS

NOTES_FILE = "card_notes.md"
PILOT_FILE = "pilot.md"
REPORT_FILE = "eval_report.json"
F0_LABELS = {"rapt": "RAPT", "swipe": "SWIPE'"}
#: Report files of the vocoders other than Griffin-Lim: ``eval_report_world.json``.
VOCODER_REPORT_PATTERN = "eval_report_*.json"
#: Speech-recognition runs of benchmarks/intelligibility.py, one per vocoder.
INTELLIGIBILITY_PATTERN = "intelligibility_*.json"
#: The card's target: the synthesised voice is closer to its own speaker's real audio than to any
#: other speaker's for at least this share of the pretraining speakers.
RECOGNISABLE_TARGET = 0.9
#: How the figures of a card on the embedded corpus are reproduced.
DEFAULT_COMMANDS = [
    "# the corpus (configs/demo_corpus.yaml = the defaults)",
    "tts-adapt corpus build --out work/corpus",
    "# pretraining: the shipped model's four runs, each from the previous one's weights (recipes/demo/run.sh",
    "# --stop-stage 2 runs them); configs/demo_pretrain.yaml trains a new model from scratch",
    "tts-adapt pretrain --data work/corpus --out work/base_model.1 --config configs/demo_pretrain_stage1.yaml",
    "tts-adapt pretrain --data work/corpus --out work/base_model.2 --config configs/demo_pretrain_stage2.yaml "
    "--init-from work/base_model.1",
    "tts-adapt pretrain --data work/corpus --out work/base_model.3 --config configs/demo_pretrain_stage3.yaml "
    "--init-from work/base_model.2",
    "# the fourth on the same speakers reading diverse English (configs/demo_corpus_diverse.yaml)",
    "tts-adapt corpus build --out work/corpus_diverse --config configs/demo_corpus_diverse.yaml",
    "tts-adapt pretrain --data work/corpus_diverse --out work/base_model --config configs/demo_pretrain_stage4.yaml "
    "--init-from work/base_model.3",
    "# the voice figures (all 8 held-out utterances per speaker) and this card; without --model: the shipped model",
    "tts-adapt evaluate --model work/base_model --data work/corpus --out work/base_eval --per-speaker 8 --write-card",
    "# the same with the WORLD vocoder (voicing from the model's predicted pitch)",
    "tts-adapt evaluate --model work/base_model --data work/corpus --out work/base_eval_world --per-speaker 8 "
    "--vocoder world --write-card",
    "# intelligibility (speech recognition), 13 sentences per voice and text set, each vocoder",
    "python benchmarks/intelligibility.py --model work/base_model --corpus work/corpus --everyday work/corpus_diverse "
    "--speakers 8 --unseen 6 --sentences 13 --vocoder griffin-lim --out work/base_model/intelligibility_griffinlim.json",
    "python benchmarks/intelligibility.py --model work/base_model --corpus work/corpus --everyday work/corpus_diverse "
    "--speakers 8 --unseen 6 --sentences 13 --vocoder world --out work/base_model/intelligibility_world.json",
    "# the unseen voices alone, 25 sentences per voice (50 everyday sentences of the flite voices)",
    "python benchmarks/intelligibility.py --model work/base_model --corpus work/corpus --everyday work/corpus_diverse "
    "--speakers 0 --unseen 6 --sentences 25 --vocoder griffin-lim "
    "--out work/base_model/intelligibility_griffinlim_unseen.json",
    "# the pilot of candidate architectures",
    "python benchmarks/pilot_backends.py --corpus work/corpus --minutes 20",
]


def _train_log(model_dir: Path) -> list[dict]:
    path = model_dir / "train_log.csv"
    if not path.is_file():
        return []
    with open(path, newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


def plot_training_curve(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = [int(r["step"]) for r in rows]
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.5))
    second = "loss_spec" if rows[0].get("loss_spec") not in (None, "") else "loss_dur"
    for key, ax in (("loss", axes[0]), (second, axes[1])):
        ax.plot(steps, [float(r[key]) for r in rows if r.get(key) not in (None, "")], lw=0.8, label="train")
        ax.set_title(key)
        ax.set_xlabel("step")
    val = [(int(r["step"]), float(r["val_loss"])) for r in rows if r.get("val_loss")]
    if val:
        axes[0].plot(*zip(*val), "o-", ms=3, label="validation")
    axes[0].legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def report_file(report: dict) -> str:
    """Where a model folder keeps a report: by vocoder (``GriffinLimVocoder`` → ``eval_report.json``,
    ``WorldVocoder`` → ``eval_report_world.json``)."""
    name = str(report.get("vocoder", "GriffinLimVocoder")).removesuffix("Vocoder").lower()
    return REPORT_FILE if name in ("griffinlim", "") else REPORT_FILE.replace(".json", f"_{name}.json")


def folder_reports(model_dir: Path) -> list[dict]:
    """The reports a model folder holds, Griffin-Lim's first."""
    paths = [model_dir / REPORT_FILE] + sorted(model_dir.glob(VOCODER_REPORT_PATTERN))
    return [json.loads(p.read_text()) for p in paths if p.is_file()]


def vocoder_label(report: dict) -> str:
    return {"GriffinLimVocoder": "Griffin-Lim", "WorldVocoder": "WORLD", "HifiganVocoder": "HiFi-GAN"}.get(
        report.get("vocoder", ""), str(report.get("vocoder", "?")))


def write_model_card(model_dir: str | Path, report_dir: str | Path | None = None, notes: str = "",
                     commands: list[str] | None = None) -> Path:
    model_dir = Path(model_dir)
    meta = json.loads((model_dir / "tts_adapt.json").read_text())
    info = meta.get("info", {})
    pre = info.get("pretrain", {})
    rows = _train_log(model_dir)
    if rows:
        plot_training_curve(rows, model_dir / "training_curve.png")
    lines = [f"# Model card: {model_dir.name}", ""]
    if not notes and (model_dir / NOTES_FILE).is_file():
        notes = (model_dir / NOTES_FILE).read_text(encoding="utf-8")
    if notes:
        lines += [notes.strip(), ""]
    if report_dir is not None:  # the card's figures travel with the model
        report = json.loads((Path(report_dir) / "report.json").read_text())
        write_json_atomic(model_dir / report_file(report), report)
    reports = [r for r in folder_reports(model_dir) if r.get("model_info", {}).get("steps") == info.get("steps")]
    for report in reports:
        lines += [status(report, run_position(info)), ""]
    if (model_dir / PILOT_FILE).is_file():
        lines += ["## Choice of architecture: pilot", "", (model_dir / PILOT_FILE).read_text(encoding="utf-8").strip(),
                  ""]
    lines += ["## Model", "",
              f"- architecture: coqui-tts `{meta['backend']}`, size preset `{info.get('size', '?')}`",
              f"- speaker conditioning: {pre.get('conditioning', '?')}",
              f"- audio: {meta['audio']['sample_rate']} Hz, {meta['audio']['n_mels']} mels, "
              f"hop {meta['audio']['hop_length']}, FFT {meta['audio']['n_fft']}, pitch targets by "
              f"{F0_LABELS[AudioConfig.from_dict(meta['audio']).f0_method]}; vocoder: Griffin-Lim (torchaudio) "
              "by default, WORLD (pyworld, voicing from the predicted pitch) with `--vocoder world`",
              "", "## Training", "",
              f"- data: `{info.get('data', '?')}`: {info.get('speakers', '?')} speakers, "
              f"{info.get('train_utterances', '?')} training utterances ({info.get('train_hours', '?')} h), "
              f"{info.get('val_utterances', '?')} validation utterances",
              f"- steps: {info.get('steps', '?')} (batch {pre.get('batch_size', '?')}, AdamW, peak lr "
              f"{pre.get('lr', '?')}, warm-up {pre.get('warmup_steps', '?')} steps"
              + (f", linear cool-down to zero over the last {pre['cooldown_steps']} steps" if pre.get("cooldown_steps") else "")
              + "), "
              f"{info.get('processes', 1)} process(es)",
              f"- wall time: {float(info.get('wall_seconds', 0)) / 3600:.2f} h of training on CPU"]
    lines += lineage(info)
    if rows:
        last = rows[-1]
        val = [r for r in rows if r.get("val_loss")]
        lines.append(f"- last logged step {last['step']}: training loss {float(last['loss']):.3f} "
                     + (f" (spectral {float(last['loss_spec']):.3f})" if last.get("loss_spec") else "")
                     + (f", validation loss {float(val[-1]['val_loss']):.3f}" if val else ""))
        lines += ["", "![training curve](training_curve.png)"]
    if reports:
        lines += ["", "## Voices (held-out sentences of the embedded corpus)"]
        for report in reports:
            lines += ["", f"### Vocoder: {vocoder_label(report)}", "", to_markdown(report).strip()]
    lines += intelligibility_lines(model_dir)
    lines += ["", "## Reproduce", "", "```bash", *(commands or DEFAULT_COMMANDS), "```"]
    path = model_dir / "MODEL_CARD.md"
    write_text_atomic(path, "\n".join(lines) + "\n")
    return path


def intelligibility_lines(model_dir: Path) -> list[str]:
    """The card's section on intelligibility: one table per run of benchmarks/intelligibility.py that the
    folder holds (``intelligibility_<vocoder>.json``), with the command that made it."""
    runs = [(p.name, json.loads(p.read_text(encoding="utf-8"))) for p in sorted(model_dir.glob(INTELLIGIBILITY_PATTERN))]
    if not runs:
        return []
    lines = ["", "## Intelligibility (speech recognition)", "",
             "PocketSphinx (the `pocketsphinx` wheel's English model, 16 kHz) transcribes the model's speech, the "
             "voice's own recordings of the same sentences (the recogniser's floor on that voice) and their copy "
             "synthesis through the model's mel features and the vocoder (the floor of any model with that "
             "vocoder). Word and character error rates with 95 % bootstrap intervals over sentences; the ratios "
             "compare the model with the recordings on the same sentences. The recogniser hears flite's voices; "
             "espeak-ng's are at its ceiling even recorded (word error rate about 1), so their rows say little."]
    for name, run in runs:
        a = run["args"]
        command = (f"python benchmarks/intelligibility.py --model {model_dir} --corpus {a['corpus']} --everyday "
                   f"{a['everyday']} --speakers {a['speakers']} --unseen {a['unseen']} --sentences "
                   f"{a['sentences']} --vocoder {run['vocoder']} --out {model_dir}/{name}")
        voices = " and ".join(f"{n} {what} voices" for n, what in ((a["speakers"], "pretraining"),
                                                                    (a["unseen"], "unseen")) if n)
        lines += ["", f"### Vocoder: {run['vocoder']}; {voices}, {a['sentences']} sentences each", "",
                  f"`{command}`", "",
                  "| text set | voices | sentences | WER recordings | WER copy synthesis | WER model | "
                  "CER recordings | CER model | model ÷ recordings, WER / CER |",
                  "|---|---|---|---|---|---|---|---|---|"]
        for res in run["results"]:
            src = res["sources"]

            def rate(source: str, key: str) -> str:
                r = src[source]
                return f"{r[key]:.2f} [{r[key + '_interval'][0]:.2f}, {r[key + '_interval'][1]:.2f}]"

            ratios = " / ".join(f"{res['ratios'][f'{k}_over_recordings'][0]:.2f}" for k in ("wer", "cer"))
            lines.append(f"| {res['text_set']} | {res['voices']}, {res['engine']} ({len(res['speakers'])}) | "
                         f"{src['model']['utterances_count']} | {rate('recordings', 'wer')} | "
                         f"{rate('copy synthesis', 'wer')} | **{rate('model', 'wer')}** | {rate('recordings', 'cer')} | "
                         f"{rate('model', 'cer')} | {ratios} |")
    return lines


def lineage(info: dict) -> list[str]:
    """Card lines on the runs whose weights started this one (``pretrain --init-from``), oldest last."""
    lines, total = [], float(info.get("wall_seconds", 0))
    parent = info.get("init_from")
    while parent:
        pre = {**EARLIER_DEFAULTS, **parent.get("pretrain", {})}  # a run saved before a setting used its old value
        f0 = F0_LABELS[pre["f0_method"]]
        lines.append(f"- started from the weights of `{parent['path']}`: {parent.get('steps', '?')} steps "
                     f"(peak lr {pre.get('lr', '?')}, {pre['n_mels']} mels, pitch targets by {f0}), "
                     f"{float(parent.get('wall_seconds', 0)) / 3600:.2f} h")
        total += float(parent.get("wall_seconds", 0))
        parent = parent.get("init_from")
    if lines:
        lines.append(f"- wall time of all runs together: {total / 3600:.2f} h")
    return lines


def _chain_steps(info: dict) -> tuple[int, int] | None:
    """Optimizer steps and runs of a model and of the runs its weights started from; None if any is unknown."""
    steps, runs, run = 0, 0, info
    while run:
        if "steps" not in run:
            return None
        steps, runs, run = steps + int(run["steps"]), runs + 1, run.get("init_from")
    return (steps, runs) if runs else None


def training_steps(info: dict) -> str:
    """A model's optimizer steps, those of the runs its weights started from included: "7750 (in 2 runs)"."""
    chain = _chain_steps(info)
    if chain is None:
        return "?"
    steps, runs = chain
    return str(steps) if runs == 1 else f"{steps} (in {runs} runs)"


def run_position(info: dict) -> str:
    """Where a model stands, for the card's verdict: "5000 of a run started from a model trained for 2750 steps"."""
    parent = info.get("init_from")
    if not parent:
        return str(info.get("steps"))
    chain = _chain_steps(parent)
    earlier = "? steps" if chain is None else f"{chain[0]} steps" + (f" in {chain[1]} runs" if chain[1] > 1 else "")
    return f"{info.get('steps')} of a run started from a model trained for {earlier}"


def status(report: dict, steps) -> str:
    """One sentence: does the model reach the card's target, and how far is the ceiling of the measure."""
    summary = report["summary"]
    if "pretrain" not in summary:
        return f"At step {steps}: no pretraining speakers were scored."
    got = summary["pretrain"]
    share = got["recognisable_share"]
    verdict = "meets" if share >= RECOGNISABLE_TARGET else "does not yet meet"
    text = (f"At step {steps}, vocoded with {vocoder_label(report)}, the model {verdict} its target: "
            f"its synthesised voice is closest to its own "
            f"speaker's real audio for {got['recognisable']} of {got['speakers']} pretraining speakers "
            f"({100 * share:.0f} %; target {100 * RECOGNISABLE_TARGET:.0f} %).")
    for mode, what in (("real recordings", "Real recordings of other sentences"),
                       ("vocoded recordings", "The held-out recordings through the same vocoder (copy synthesis)")):
        ceiling = summary.get("pretrain" + REFERENCES[mode])
        if ceiling:
            text += f" {what} reach {ceiling['recognisable']} of {ceiling['speakers']} on the same measure."
    return text
