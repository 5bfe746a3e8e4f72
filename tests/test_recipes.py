"""The recipes (recipes/<name>/run.sh over recipes/adapt_driver.sh), end to end on tiny fixtures.

Each fixture dataset is written in the real dataset's layout (VCTK 0.92's flac files, LibriTTS's subset /
speaker / chapter folders, LJSpeech's metadata.csv + wavs/, a custom folder) from the tiny corpus's
recordings, and each recipe runs on a tiny randomly initialised model of its zoo architecture, saved in
coqui's checkpoint format and loaded through the real loader. Also here: the pieces the recipes need
(zoo speaker names in the evaluation, adapt's clip limit, --config sections of prepare-target and
fit-curvature).
"""

from __future__ import annotations

import csv
import json
import logging
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from tts_adapt.data.samples import Utterance
from zoo_models import ZOO_CASES, write_zoo_folder

ROOT = Path(__file__).resolve().parents[1]
#: Settings that make every stage take seconds (flags appended after the recipe's YAML, so they win).
TINY = ["--target-args", "--clips 10 --heldout 2",
        "--curvature-args", "--num-utterances 4 --batch-size 2 --workers 1 -q",
        "--adapt-args", "--steps 2 --batch-size 4 --val-every 1 --checkpoint-every 1 -q",
        "--eval-args", "--old-speakers 2 --unseen-speakers 1 --per-speaker 1 --images 0 -q",
        "--sweep-args", "--strategies kfac --lams 100 --steps 2 --curvature-utterances 4 --old-speakers 2 "
                        "--unseen-speakers 1 --per-speaker 1 -q"]
VCTK_NAMES = ["p225", "p226", "p227", "p228"]  # the tiny corpus's four pretraining speakers, as VCTK speakers
LIBRITTS_NAMES = ["19", "26", "32", "39"]


# --------------------------------------------------------------------------- fixtures in the real layouts
def corpus_rows(corpus: Path) -> dict[str, list[dict]]:
    """The tiny corpus's utterances by speaker set: {"pretrain": [...], "unseen": [...], "target": [...]}."""
    with open(corpus / "manifest.csv", newline="", encoding="utf-8") as fh:
        rows = sorted(csv.DictReader(fh), key=lambda r: r["utt_id"])
    out: dict[str, list[dict]] = {}
    for r in rows:
        out.setdefault(r["speaker_set"], []).append(r)
    return out


def renamed(corpus: Path, names: list[str], unseen: str, target: str) -> dict[str, list[dict]]:
    """Speaker name -> its rows: the corpus's pretraining speakers as ``names``, its unseen and target speakers."""
    rows = corpus_rows(corpus)
    pretrain = sorted({r["speaker"] for r in rows["pretrain"]})
    out = {new: [r for r in rows["pretrain"] if r["speaker"] == old] for new, old in zip(names, pretrain)}
    out[unseen] = rows["unseen"]
    out[target] = rows["target"]
    return out


def write_vctk(corpus: Path, root: Path) -> Path:
    """VCTK 0.92: wav48_silence_trimmed/pXXX/pXXX_NNN_mic1.flac + txt/pXXX/pXXX_NNN.txt."""
    import soundfile as sf

    for spk, rows in renamed(corpus, VCTK_NAMES, "p250", "p248").items():
        (root / "wav48_silence_trimmed" / spk).mkdir(parents=True)
        (root / "txt" / spk).mkdir(parents=True)
        for k, r in enumerate(rows, 1):
            audio, sr = sf.read(corpus / r["audio"])
            sf.write(root / "wav48_silence_trimmed" / spk / f"{spk}_{k:03d}_mic1.flac", audio, sr, format="FLAC")
            (root / "txt" / spk / f"{spk}_{k:03d}.txt").write_text(r["text"] + "\n", encoding="utf-8")
    return root


def write_libritts(corpus: Path, root: Path) -> Path:
    """LibriTTS: <subset>/<spk>/<chapter>/<spk>_<chapter>_<nnnnnn>_<nnnnnn>.wav + .normalized.txt."""
    for spk, rows in renamed(corpus, LIBRITTS_NAMES, "121", "1089").items():
        subset = "train-clean-100" if spk in LIBRITTS_NAMES else "test-clean"
        chapter = f"{int(spk) * 7 + 100}"
        folder = root / subset / spk / chapter
        folder.mkdir(parents=True)
        for k, r in enumerate(rows, 1):
            stem = f"{spk}_{chapter}_{k:06d}_000000"
            shutil.copy(corpus / r["audio"], folder / f"{stem}.wav")
            (folder / f"{stem}.normalized.txt").write_text(r["text"], encoding="utf-8")
            (folder / f"{stem}.original.txt").write_text(r["text"].upper(), encoding="utf-8")
    return root


def write_ljspeech(corpus: Path, root: Path) -> Path:
    """LJSpeech 1.1: metadata.csv (id|raw|normalized) + wavs/<id>.wav, the corpus's target speaker's clips."""
    (root / "wavs").mkdir(parents=True)
    lines = []
    for k, r in enumerate(corpus_rows(corpus)["target"], 1):
        utt = f"LJ001-{k:04d}"
        shutil.copy(corpus / r["audio"], root / "wavs" / f"{utt}.wav")
        lines.append(f"{utt}|{r['text']}|{r['text']}")
    (root / "metadata.csv").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return root


def write_custom(corpus: Path, root: Path) -> tuple[Path, Path, Path]:
    """The user's clips (wav + txt), held-out clips, and a dataset of the model's speakers (metadata.csv
    with file|speaker|text)."""
    rows = corpus_rows(corpus)
    clips, heldout, data = root / "my_clips", root / "my_heldout", root / "old_speakers"
    for folder, chosen in ((clips, rows["target"][:10]), (heldout, rows["target"][10:])):
        folder.mkdir(parents=True)
        for r in chosen:
            shutil.copy(corpus / r["audio"], folder / f"{r['utt_id']}.wav")
            (folder / f"{r['utt_id']}.txt").write_text(r["text"] + "\n", encoding="utf-8")
    (data / "audio").mkdir(parents=True)
    lines = ["file|speaker|text"]
    for r in rows["pretrain"] + rows["unseen"]:
        shutil.copy(corpus / r["audio"], data / "audio" / f"{r['utt_id']}.wav")
        lines.append(f"audio/{r['utt_id']}.wav|{r['speaker']}|{r['text']}")
    (data / "metadata.csv").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return clips, heldout, data


@pytest.fixture(autouse=True)
def recipe_cache(feature_cache, monkeypatch):
    """The recipes' commands share the session's feature cache (and never write to the user's)."""
    monkeypatch.setenv("TTS_ADAPT_CACHE", str(feature_cache))


@pytest.fixture(scope="module")
def datasets(tiny_corpus, tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("datasets")
    return {"vctk": write_vctk(tiny_corpus, root / "VCTK-Corpus-0.92"),
            "libritts": write_libritts(tiny_corpus, root / "LibriTTS"),
            "ljspeech": write_ljspeech(tiny_corpus, root / "LJSpeech-1.1")}


def run_recipe(name: str, workdir: Path, *args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1",
           "TTS_ADAPT": f"{sys.executable} -m tts_adapt.cli", **(env or {})}
    return subprocess.run(["bash", str(ROOT / "recipes" / name / "run.sh"), "--workdir", str(workdir), *args],
                          cwd=workdir.parent, env=env, capture_output=True, text=True, timeout=900)


def check_run(proc: subprocess.CompletedProcess) -> str:
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-6000:]
    return out


def check_outputs(workdir: Path, sweep: bool = True) -> None:
    """Every stage's files: curvature, both adapters with their reports, the sweep's table and plot."""
    from tts_adapt.curvature import Curvature

    assert Curvature.load(workdir / "curvature.safetensors").num_utterances == 4
    for name, strategy in (("lora", "lora"), ("lora_kfac", "kfac")):
        adapter = workdir / "adapters" / name
        assert (adapter / "adapter_model.safetensors").is_file()
        assert json.loads((adapter / "run.json").read_text())["config"]["strategy"] == strategy
        report = json.loads((adapter / "eval" / "report.json").read_text())
        assert report["counts"]["target"] == 2 and report["counts"]["pretrain"] >= 1, report["counts"]
    if sweep:
        assert (workdir / "sweep" / "table.md").is_file() and (workdir / "sweep" / "pareto.png").is_file()
        assert (workdir / "sweep" / "cells" / "kfac_lam100" / "adapter" / "eval" / "report.json").is_file()
    markers = {p.name for p in workdir.glob(".*.done")}
    assert {".data.done", ".curvature.done", ".adapt_lora.done", ".adapt_lora_kfac.done", ".eval_lora.done",
            ".eval_lora_kfac.done"} <= markers


def check_rerun_skips(name: str, workdir: Path, *args: str) -> None:
    """A second run does nothing: every stage is marked done and no file changes."""
    watched = [workdir / "curvature.safetensors", workdir / "adapters" / "lora_kfac" / "adapter_model.safetensors",
               workdir / "adapters" / "lora" / "eval" / "report.json"]
    before = [p.stat().st_mtime_ns for p in watched]
    lines = len((workdir / "run.log").read_text().splitlines())
    t0 = time.time()
    check_run(run_recipe(name, workdir, *args))
    new = (workdir / "run.log").read_text().splitlines()[lines:]
    assert not [line for line in new if "stage " in line and "skipped" not in line], new
    assert [p.stat().st_mtime_ns for p in watched] == before
    assert time.time() - t0 < 30


def zoo(case: str, folder: Path, speakers: list[str]) -> Path:
    return write_zoo_folder(ZOO_CASES[case], folder, speakers)


# --------------------------------------------------------------------------- the recipes, end to end
@pytest.mark.slow
def test_vctk_recipe(datasets, tmp_path):
    """The seed paper's setting: VCTK VITS (speakers named VCTK_pXXX, as coqui's are), p248 the target."""
    model = zoo("vctk-vits", tmp_path / "tts_models--en--vctk--vits", [f"VCTK_{s}" for s in VCTK_NAMES])
    workdir = tmp_path / "work"
    args = ["--data", str(datasets["vctk"]), "--model", str(model), *TINY, "--device", "cpu"]
    out = check_run(run_recipe("vctk", workdir, *args))
    check_outputs(workdir)
    # --device reaches every command that runs a model, the sweep included
    commands = [line.split("$ tts-adapt ", 1)[1] for line in out.splitlines() if "$ tts-adapt " in line]
    for name in ("fit-curvature", "adapt", "evaluate --model", "sweep"):
        assert any(" --device cpu " in f"{c} " for c in commands if c.startswith(name)), (name, commands)
    target = json.loads((workdir / "target" / "target.json").read_text())
    assert target["speaker"] == "p248" and target["clips"] == 10 and target["heldout"] == 2
    report = json.loads((workdir / "adapters" / "lora_kfac" / "eval" / "report.json").read_text())
    assert set(report["speakers"]["pretrain"]) <= set(VCTK_NAMES) and "p248" not in report["speakers"]["pretrain"]
    assert "stages 2-3: skipped" in out
    check_rerun_skips("vctk", workdir, *args)


@pytest.mark.slow
def test_libritts_recipe(datasets, tmp_path):
    """YourTTS; the target from test-clean, the curvature from train-clean-100, unseen voices zero-shot."""
    model = zoo("your_tts", tmp_path / "your_tts", LIBRITTS_NAMES)
    workdir = tmp_path / "work"
    args = ["--data", str(datasets["libritts"]), "--model", str(model), *TINY]
    check_run(run_recipe("libritts", workdir, *args))
    check_outputs(workdir)
    assert json.loads((workdir / "target" / "target.json").read_text())["speaker"] == "1089"
    report = json.loads((workdir / "adapters" / "lora" / "eval" / "report.json").read_text())
    assert report["speakers"]["unseen"] == ["121"] and set(report["speakers"]["pretrain"]) <= set(LIBRITTS_NAMES)
    check_rerun_skips("libritts", workdir, *args)


@pytest.mark.slow
def test_ljspeech_recipe(datasets, tmp_path):
    """LJSpeech's voice into VCTK VITS; curvature and forgetting on VCTK."""
    model = zoo("vctk-vits", tmp_path / "vits", [f"VCTK_{s}" for s in VCTK_NAMES])
    workdir = tmp_path / "work"
    args = ["--data", str(datasets["ljspeech"]), "--eval-data", str(datasets["vctk"]), "--model", str(model), *TINY]
    check_run(run_recipe("ljspeech", workdir, *args))
    check_outputs(workdir)
    assert json.loads((workdir / "target" / "target.json").read_text())["speaker"] == "ljspeech"
    check_rerun_skips("ljspeech", workdir, *args)


@pytest.mark.slow
def test_custom_recipe(tiny_corpus, tmp_path):
    """Your own clips into VCTK FastPitch (ID table) with a metadata.csv dataset of its speakers."""
    clips, heldout, data = write_custom(tiny_corpus, tmp_path / "mine")
    speakers = sorted({r["speaker"] for r in corpus_rows(tiny_corpus)["pretrain"]})
    model = zoo("vctk-fast_pitch", tmp_path / "fast_pitch", speakers)
    workdir = tmp_path / "work"
    args = ["--target-dir", str(clips), "--heldout-dir", str(heldout), "--data", str(data), "--layout", "custom",
            "--corpus-config", "", "--model", str(model), *TINY]
    check_run(run_recipe("custom", workdir, *args))
    check_outputs(workdir)
    assert not (workdir / "target").exists()  # the user's clips are used as they are
    check_rerun_skips("custom", workdir, *args)
    proc = run_recipe("custom", tmp_path / "other", "--model", str(model))
    assert proc.returncode == 2 and "--target-dir" in proc.stderr


@pytest.mark.slow
def test_demo_recipe(tiny_corpus, tmp_path):
    """Stages 1-6 on the tiny corpus with a 2-step pretraining; stage 7 runs the headline sweep command."""
    from conftest import TINY_PRETRAIN

    # two pretraining configs: the second starts from the first one's weights, with other pitch targets
    first, second = tmp_path / "pretrain.yaml", tmp_path / "finetune.yaml"
    first.write_text(yaml.safe_dump({"pretrain": {**TINY_PRETRAIN.to_dict(), "f0_method": "swipe"}}))
    second.write_text(yaml.safe_dump({"pretrain": {**TINY_PRETRAIN.to_dict(), "steps": 1, "warmup_steps": 1}}))
    workdir = tmp_path / "work"
    shutil.copytree(tiny_corpus, workdir / "corpus")
    # the tiny corpus's target speaker has 8 clips outside its own held-out split
    args = ["--corpus-config", "", "--extra-corpus", "", "--pretrain-data", "",
            "--pretrain-config", f"{first},{second}", "--model", str(workdir / "base_model"),
            *TINY, "--target-args", "--clips 8 --heldout 2",
            "--adapt-args", "--steps 2 --batch-size 4 --val-every 1 --checkpoint-every 1 --min-clips 8 -q"]
    check_run(run_recipe("demo", workdir, "--stop-stage", "6", *args))
    assert (workdir / "base_model" / "MODEL_CARD.md").is_file() and (workdir / "base_eval" / "report.json").is_file()
    # stage 3 scores with both vocoders, as the shipped card does, and both reports reach the card
    assert {"eval_report.json", "eval_report_world.json"} <= {p.name for p in (workdir / "base_model").iterdir()}
    assert json.loads((workdir / "base_eval_world" / "report.json").read_text())["per_speaker"] == 8
    info = json.loads((workdir / "base_model" / "tts_adapt.json").read_text())["info"]
    assert info["steps"] == 1 and info["init_from"]["path"] == str(workdir / "base_model.1")
    assert info["init_from"]["steps"] == TINY_PRETRAIN.steps and info["init_from"]["pretrain"]["f0_method"] == "swipe"
    target = json.loads((workdir / "target" / "target.json").read_text())["speaker"]
    assert target == corpus_rows(tiny_corpus)["target"][0]["speaker"]
    check_outputs(workdir, sweep=False)
    # stage 7 is the headline command; record it instead of running it (hours of CPU)
    record = tmp_path / "called.txt"
    stub = tmp_path / "stub.sh"
    stub.write_text(f'#!/usr/bin/env bash\nprintf "%s\\n" "$@" > {record}\n')
    stub.chmod(0o755)
    check_run(run_recipe("demo", workdir, "--stage", "7", "--model", str(workdir / "base_model"),
                         env={"TTS_ADAPT": str(stub)}))
    assert record.read_text().split("\n")[:-1] == ["sweep", "--out", str(workdir / "sweep"), "--workdir", str(workdir),
                                                   "--model", str(workdir / "base_model"),
                                                   "--publish", str(ROOT / "docs" / "sweep")]


# --------------------------------------------------------------------------- bad input
def test_a_dataset_in_the_wrong_layout_says_what_was_expected_and_found(datasets, tmp_path):
    proc = run_recipe("vctk", tmp_path / "work", "--data", str(datasets["ljspeech"]), "--model", "unused")
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0
    assert "does not have the vctk layout" in out and "wav48_silence_trimmed" in out and "metadata.csv" in out, out
    assert "Traceback" not in out and not (tmp_path / "work" / ".data.done").exists()


def test_a_model_folder_missing_a_file_says_which(datasets, tmp_path):
    model = zoo("vctk-vits", tmp_path / "vits", [f"VCTK_{s}" for s in VCTK_NAMES])
    for missing in ("model_file.pth", "config.json"):
        broken = tmp_path / f"no-{missing}"
        shutil.copytree(model, broken)
        (broken / missing).unlink()
        proc = run_recipe("vctk", tmp_path / f"work-{missing}", "--data", str(datasets["vctk"]), "--model",
                          str(broken), "--stage", "4", "--stop-stage", "4", *TINY)
        out = proc.stdout + proc.stderr
        assert proc.returncode != 0 and missing in out and "Traceback" not in out, out


def test_unknown_recipe_option(tmp_path):
    proc = run_recipe("vctk", tmp_path / "work", "--no-such-option", "1")
    assert proc.returncode == 2 and "unknown option --no-such-option" in proc.stderr


# --------------------------------------------------------------------------- what the recipes rely on
def _utts(speakers: dict[str, int]) -> list[Utterance]:
    return [Utterance(f"/data/{s}/{s}_{k:03d}.flac", f"sentence {k}", s, utt_id=f"{s}_{k:03d}")
            for s, n in speakers.items() for k in range(n)]


def test_evaluation_finds_old_speakers_under_zoo_names():
    """Regression: coqui's VCTK models say VCTK_p225 where the VCTK reader says p225; the target is neither
    an old nor an unseen speaker."""
    from tts_adapt.evaluate.learning import select_utterances

    known = ["VCTK_p225", "VCTK_p226", "VCTK_p248", "target"]
    items = select_utterances(known, _utts({"p225": 4, "p226": 4, "p248": 4, "p300": 4}), [],
                              target_speaker="p248", per_speaker=1, zero_shot=True, references=2)
    assert {i.speaker for i in items if i.set == "pretrain"} == {"p225", "p226"}
    assert {i.speaker for i in items if i.set == "unseen"} == {"p300"}


def test_evaluation_says_when_the_dataset_has_no_speaker_of_the_model(caplog):
    from tts_adapt.evaluate.learning import select_utterances

    with caplog.at_level(logging.WARNING, logger="tts_adapt"):
        items = select_utterances(["VCTK_p225", "target"], _utts({"ljspeech": 6}), [], per_speaker=1,
                                  zero_shot=False)
    assert items == []
    assert "none of the dataset's 1 speakers (ljspeech) is a speaker of the model (VCTK_p225)" in caplog.text


def test_libritts_subsets_are_not_the_corpus_split():
    """LibriTTS names its subset in ``split``; the held-out clips still come from the seeded shuffle."""
    from tts_adapt.data.target_split import split_speaker

    utts = [u.replace(split="test-clean") for u in _utts({"1089": 12})]
    train, held = split_speaker(utts, "1089", 10, 2)
    assert len(train) == 10 and len(held) == 2 and not {u.utt_id for u in train} & {u.utt_id for u in held}


def test_adapt_uses_at_most_max_clips(tiny_model, tiny_target_clips, feature_cache, tmp_path):
    from tts_adapt.adapt.adapt_config import AdaptConfig
    from tts_adapt.adapt.train import adapt
    from tts_adapt.cli import build_parser, main

    config = AdaptConfig(strategy="lora", steps=1, batch_size=4, val_every=1, checkpoint_every=1)
    card = adapt(tiny_target_clips, tmp_path / "eleven", tiny_model, config, cache_dir=feature_cache,
                 progress=False, max_clips=11)
    assert card["train_clips"] + card["val_clips"] == 11
    with pytest.raises(ValueError, match="max_clips"):
        adapt(tiny_target_clips, tmp_path / "x", tiny_model, config, max_clips=5)
    assert build_parser().parse_args(["adapt", "--target-dir", "d", "--out", "o"]).max_clips == 50
    assert main(["adapt", "--target-dir", str(tiny_target_clips), "--out", str(tmp_path / "cli"), "--model",
                 str(tiny_model), "--strategy", "lora", "--steps", "1", "--batch-size", "4", "--val-every", "1",
                 "--max-clips", "10", "--cache-dir", str(feature_cache), "-q"]) == 0
    run = json.loads((tmp_path / "cli" / "run.json").read_text())
    assert run["train_clips"] + run["val_clips"] == 10


def test_recipe_configs_are_read_by_each_command():
    """Every section of every recipe YAML is valid for the command that reads it."""
    from tts_adapt.adapt.adapt_config import AdaptConfig
    from tts_adapt.curvature.curvature_config import CurvatureConfig
    from tts_adapt.data.target_split import TargetConfig
    from tts_adapt.cli import config_from_args
    from tts_adapt.evaluate.sweep import SweepConfig

    sections = {"target": TargetConfig, "curvature": CurvatureConfig, "adapt": AdaptConfig, "sweep": SweepConfig}
    for recipe in ("vctk", "libritts", "ljspeech", "custom", "demo"):
        path = ROOT / "configs" / f"{recipe}.yaml"
        data = yaml.safe_load(path.read_text())
        assert set(data) <= set(sections), (path, set(data))
        for section in data:
            args = type("Args", (), {"config": path})()
            config_from_args(args, sections[section], section)
        assert (ROOT / "recipes" / recipe / "run.sh").is_file()
    assert TargetConfig(speaker=1089).speaker == "1089"  # an unquoted LibriTTS speaker in YAML
    vctk = yaml.safe_load((ROOT / "configs" / "vctk.yaml").read_text())
    assert vctk["target"]["speaker"] == "p248" and 50 <= vctk["target"]["clips"] <= 100


def test_prepare_target_and_fit_curvature_read_their_config_sections(datasets, tmp_path):
    from tts_adapt.cli import build_parser, main

    yaml_file = tmp_path / "r.yaml"
    yaml_file.write_text("target:\n  speaker: p248\n  clips: 10\n  heldout: 2\n"
                         "curvature:\n  method: ekfac\n  num_utterances: 7\n")
    assert main(["prepare-target", "--data", str(datasets["vctk"]), "--out", str(tmp_path / "t"), "--config",
                 str(yaml_file), "--heldout", "1"]) == 0
    info = json.loads((tmp_path / "t" / "target.json").read_text())
    assert (info["speaker"], info["clips"], info["heldout"]) == ("p248", 10, 1)
    args = build_parser().parse_args(["fit-curvature", "--data", "d", "--out", "o", "--config", str(yaml_file),
                                      "--num-utterances", "9"])
    from tts_adapt.curvature.curvature_config import CurvatureConfig
    from tts_adapt.cli import config_from_args

    c = config_from_args(args, CurvatureConfig, "curvature")
    assert (c.method, c.num_utterances, c.fisher) == ("ekfac", 9, "empirical")
    assert main(["prepare-target", "--data", str(datasets["vctk"]), "--out", str(tmp_path / "u")]) == 1


def test_demo_recipe_pretrains_the_shipped_model():
    """recipes/demo's pretraining chain (stage 2) has the settings of the runs that made the shipped model:
    its last config those of the model's own run, each earlier one those of the run whose weights the next
    one started from."""
    import re

    from tts_adapt.settings import load_section
    from tts_adapt.models.pretrain_config import EARLIER_DEFAULTS, PretrainConfig
    from tts_adapt.models.synthesis import DEFAULT_MODEL

    chain = re.search(r'--pretrain-config "([^"]+)"', (ROOT / "recipes" / "demo" / "run.sh").read_text()).group(1)
    configs = [PretrainConfig(**load_section(Path(p.replace("$root", str(ROOT))), "pretrain", PretrainConfig))
               for p in chain.split(",")]
    run = {**json.loads((DEFAULT_MODEL / "tts_adapt.json").read_text())["info"],
           "pretrain": json.loads((DEFAULT_MODEL / "pretrain.json").read_text())}
    for config in reversed(configs):
        assert run, f"the recipe has {len(configs)} stages, more than the runs that made the shipped model"
        made = {**PretrainConfig().to_dict(), **EARLIER_DEFAULTS, **run["pretrain"], "init_from": ""}
        if run["steps"] < made["steps"]:  # stopped early: the same as a shorter run only without a cool-down
            assert not made["cooldown_steps"], f"a run stopped inside its cool-down: {made}"
            made["steps"] = run["steps"]
        assert {**config.to_dict(), "init_from": ""} == made
        run = run.get("init_from")
    assert not run, "the shipped model started from a run the recipe does not have"
