"""Learning against forgetting: target preparation, adapter reports, the sweep and its headline."""

from __future__ import annotations

import csv
import json
import math
import os
from pathlib import Path

import numpy as np
import pytest

from tts_adapt.adapt.adapt_config import AdaptConfig
from tts_adapt.adapt.train import adapt
from tts_adapt.data.readers import read_dataset
from tts_adapt.data.target_split import PreparedTarget, prepare_target, split_speaker
from tts_adapt.evaluate.adapter import EvaluationInputError, evaluate_adapter
from tts_adapt.evaluate.learning import DEFINITIONS, SETS
from tts_adapt.evaluate.measures import MEASURES
from tts_adapt.evaluate.sweep import SweepConfig, aggregate, outside_noise, run_sweep, summarise, to_markdown


def _target_speaker(corpus: Path) -> str:
    with open(corpus / "manifest.csv", newline="", encoding="utf-8") as fh:
        return next(r["speaker"] for r in csv.DictReader(fh) if r["speaker_set"] == "target")


# --------------------------------------------------------------------------- prepare-target
def test_prepared_target_keeps_heldout_clips_apart(tiny_corpus, tmp_path):
    speaker = _target_speaker(tiny_corpus)
    t = prepare_target(tiny_corpus, speaker, tmp_path / "t", clips=8, heldout=4)
    clips = {p.stem for p in t.clips_dir.glob("*.wav")}
    held = {p.stem for p in t.heldout_dir.glob("*.wav")}
    assert (len(clips), len(held)) == (8, 4) and not clips & held
    assert all((t.heldout_dir / f"{s}.txt").read_text().strip() for s in held)
    assert PreparedTarget.load(tmp_path / "t") == t
    # a smaller selection later leaves no stale clips behind
    t2 = prepare_target(tiny_corpus, speaker, tmp_path / "t", clips=5, heldout=2)
    assert len(list(t2.clips_dir.glob("*.wav"))) == 5 and len(list(t2.heldout_dir.glob("*.txt"))) == 2


def test_split_of_a_dataset_without_splits_is_seeded_and_disjoint(tiny_corpus):
    utts, _ = read_dataset(tiny_corpus, validate_audio=False)
    speaker = utts[0].speaker
    plain = [u.replace(split=None) for u in utts]  # as VCTK or LibriTTS would come
    a = split_speaker(plain, speaker, 5, 3, seed=1)
    b = split_speaker(plain, speaker, 5, 3, seed=1)
    assert [u.utt_id for u in a[1]] == [u.utt_id for u in b[1]]
    assert not {u.utt_id for u in a[0]} & {u.utt_id for u in a[1]}


def test_unknown_speaker_names_the_speakers_that_exist(tiny_corpus, tmp_path):
    with pytest.raises(ValueError, match="not in the dataset; its speakers are"):
        prepare_target(tiny_corpus, "p999", tmp_path / "t")


# --------------------------------------------------------------------------- evaluate --adapter
@pytest.fixture(scope="module")
def prepared(tiny_corpus, tmp_path_factory):
    """10 adaptation clips and 2 held out: more than the tiny corpus's own train split has, so its
    utterances are split as those of a dataset without splits."""
    utts, _ = read_dataset(tiny_corpus, validate_audio=False)
    return prepare_target(tiny_corpus, _target_speaker(tiny_corpus), tmp_path_factory.mktemp("target") / "t",
                          clips=10, heldout=2, utterances=[u.replace(split=None) for u in utts])


@pytest.fixture(scope="module")
def adapter(tiny_model, prepared, feature_cache, tmp_path_factory):
    out = tmp_path_factory.mktemp("eval-adapter") / "lora"
    adapt(prepared.clips_dir, out, tiny_model, AdaptConfig(strategy="lora", steps=3, batch_size=4, val_every=3,
                                                           checkpoint_every=3), cache_dir=feature_cache,
          progress=False)
    return out


@pytest.fixture(scope="module")
def report(adapter, feature_cache):
    return evaluate_adapter(adapter, old_speakers=2, unseen_speakers=1, per_speaker=1, images=2,
                            cache_dir=feature_cache, progress=False)


def test_report_on_a_tiny_model_has_every_field(report, adapter):
    out = adapter / "eval"
    on_disk = json.loads((out / "report.json").read_text())
    assert on_disk["rows"] == report["rows"]
    assert report["counts"] == {"target": 2, "pretrain": 2, "unseen": 1}
    got = {(r["set"], r["metric"]) for r in report["rows"]}
    # (pitch error and gross errors pair only frames voiced in both: a 2-step model may voice none)
    for group in SETS:
        for metric in ("mcd_db", "vde", "wer", "cer", "dnsmos", "similarity", "id_top1", "id_rank"):
            assert (group, metric) in got, (group, metric)
    assert ("target", "mel_loss") in got and ("pretrain", "mel_loss") in got
    for r in report["rows"]:
        assert set(r) == {"set", "metric", "n", "base", "base_ci", "adapted", "adapted_ci", "change", "change_ci",
                          "real", "real_ci"}
        for key in ("base", "adapted", "change", "real"):
            low, high = r[f"{key}_ci"]
            if r[key] is None:
                assert low is None and high is None
            else:
                assert math.isfinite(r[key]) and low - 1e-9 <= r[key] <= high + 1e-9, (r["metric"], key)
        # the real recordings are scored where a measure applies to one clip: floors and ceilings (a real clip's
        # similarity is taken with the other held-out clips of its speaker: none with one clip per speaker)
        if not MEASURES[r["metric"]].real or (r["metric"] == "similarity" and r["set"] != "target"):
            assert r["real"] is None, r["metric"]
        else:
            assert r["real"] is not None, r["metric"]
        if r["metric"] in ("mcd_db", "vde", "wer", "cer", "dnsmos", "id_top1", "id_rank"):
            assert r["change"] == pytest.approx(r["adapted"] - r["base"], abs=1e-6)
    assert set(report["definitions"]) == set(DEFINITIONS)
    # each real recording is identified among the voice prints of every speaker
    assert all(r["real"] >= 0.5 for r in report["rows"] if r["metric"] == "id_top1" and r["set"] == "pretrain")
    md = (out / "report.md").read_text()
    assert "Definitions" in md and "old speakers (forgetting)" in md and "word error rate" in md
    assert "e-0" not in md  # no figure in exponent notation
    assert len(report["images"]) == 3 and all((out / name).stat().st_size > 1000 for name in report["images"])
    assert "report.png" in report["images"]
    assert (out / "utterances.csv").read_text().count(",mcd_db,") == 5
    assert len(list((out / "wavs" / "adapted").rglob("*.wav"))) == 5


def test_base_scores_are_cached_and_reused(report, adapter, feature_cache, tmp_path):
    # (other tests of the session evaluate other adapters into the same cache: look at this evaluation's files)
    before = {p: p.stat().st_mtime_ns for p in (feature_cache / "evaluations").glob("base-*.json")}
    assert before
    again = evaluate_adapter(adapter, tmp_path / "again", old_speakers=2, unseen_speakers=1, per_speaker=1,
                             images=0, cache_dir=feature_cache, save_wavs=False, progress=False)
    after = {p: p.stat().st_mtime_ns for p in (feature_cache / "evaluations").glob("base-*.json")}
    assert after == before  # nothing scored anew, nothing written
    assert [r["base"] for r in again["rows"]] == [r["base"] for r in report["rows"]]


def test_learning_is_never_measured_on_the_training_clips(adapter, prepared, feature_cache, tmp_path):
    with pytest.raises(EvaluationInputError, match="trained on"):
        evaluate_adapter(adapter, tmp_path / "e", target_dir=prepared.clips_dir, cache_dir=feature_cache,
                         progress=False)


def test_adapter_without_known_heldout_clips_asks_for_them(adapter, tmp_path, feature_cache):
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(adapter, copy)
    run = json.loads((copy / "run.json").read_text())
    run["target_dir"] = str(tmp_path / "elsewhere")
    (copy / "run.json").write_text(json.dumps(run))
    with pytest.raises(EvaluationInputError, match="--target-dir"):
        evaluate_adapter(copy, cache_dir=feature_cache, progress=False)


def test_cli_evaluates_an_adapter(adapter, feature_cache, tmp_path, capsys):
    from tts_adapt.cli import main

    os.environ.setdefault("TTS_ADAPT_CACHE", str(feature_cache))
    code = main(["evaluate", "--adapter", str(adapter), "--out", str(tmp_path / "r"), "--old-speakers", "1",
                 "--unseen-speakers", "0", "--per-speaker", "1", "--images", "0", "--cache-dir", str(feature_cache),
                 "-q"])
    assert code == 0
    assert "old speakers (forgetting)" in capsys.readouterr().out
    assert json.loads((tmp_path / "r" / "report.json").read_text())["counts"]["unseen"] == 0


# --------------------------------------------------------------------------- sweep
def _row(strategy, lam, sim, mcd, dmcd, loss=0.14):
    return {"cell": f"{strategy}{lam}", "strategy": strategy, "lam": lam, "target_similarity": sim,
            "target_mcd": mcd, "target_mel_loss": loss, "old_dmcd": dmcd, "old_dmcd_ci": [dmcd - 0.1, dmcd + 0.1]}


def test_headline_picks_each_strategys_lambda_with_least_forgetting_at_equal_learning():
    rows = [_row("lora", 0, 0.70, 8.0, 2.0),
            _row("kfac", 10, 0.70, 8.1, 1.2), _row("kfac", 100, 0.69, 8.3, 0.8),
            _row("kfac", 1000, 0.60, 9.0, 0.1),  # forgets least but learns too little
            _row("diag", 10, 0.72, 8.0, 1.8), _row("diag", 100, 0.66, 8.5, 1.0),
            _row("l2", 10, 0.71, 8.1, 0.0, loss=0.40)]  # frozen at the base model: similar, but learned nothing
    h = summarise(rows, SweepConfig(strategies=("lora", "kfac", "diag", "l2"), lams=(10, 100, 1000)), 1.0)["headline"]
    best = h["best_at_equal_learning"]
    assert best["kfac"]["lam"] == 100 and best["kfac"]["forgetting_reduction"] == pytest.approx(0.6)
    assert h["goal_met"]
    assert best["diag"]["lam"] == 10 and best["diag"]["forgetting_reduction"] == pytest.approx(0.1)
    assert best["l2"] is None
    md = to_markdown(rows, {"headline": h})
    assert "LoRA + L2: no λ of the grid" in md and "cut by 60 % (goal 50 %: met)" in md


def _seed_rows(strategy, lam, dmcds, sim=0.7, mcd=8.0):
    return [{**_row(strategy, lam, sim, mcd, d), "cell": f"{strategy}{lam}", "seed": k} for k, d in enumerate(dmcds)]


def test_lines_over_seeds_are_means_with_standard_errors_and_small_differences_are_ties():
    rows = aggregate(_seed_rows("lora", 0, [2.0, 2.2, 2.4]) + _seed_rows("kfac", 10, [1.0, 1.1, 1.2])
                     + _seed_rows("diag", 10, [1.9, 2.5, 1.6]))
    lora, kfac, diag = rows
    assert lora["seeds"] == 3 and lora["old_dmcd"] == pytest.approx(2.2)
    assert lora["old_dmcd_se"] == pytest.approx(np.std([2.0, 2.2, 2.4], ddof=1) / np.sqrt(3))
    assert outside_noise(kfac, lora, "old_dmcd") and not outside_noise(diag, lora, "old_dmcd")
    h = summarise(rows, SweepConfig(strategies=("lora", "kfac", "diag"), lams=(10,), seeds=(0, 1, 2)), 1.0)
    best = h["headline"]["best_at_equal_learning"]
    assert best["kfac"]["outside_noise"] and not best["diag"]["outside_noise"]
    assert h["headline"]["goal_met"]
    md = to_markdown(rows, h)
    assert "inside the noise: a tie" in md and "± " in md and "mean over 3 adaptation seeds" in md


def test_with_one_seed_the_noise_is_the_bootstrap_interval_over_utterances():
    a = {"old_dmcd": 2.0, "old_dmcd_ci": [1.6, 2.4]}
    assert outside_noise(a, {"old_dmcd": 1.0, "old_dmcd_ci": [0.7, 1.3]}, "old_dmcd")
    assert not outside_noise(a, {"old_dmcd": 1.5, "old_dmcd_ci": [1.1, 1.9]}, "old_dmcd")
    assert not outside_noise(a, {"old_dmcd": 1.0}, "old_dmcd")  # no interval: no call


def test_sweep_config_reads_comma_separated_lists_and_rejects_unknown_strategies():
    c = SweepConfig(strategies="lora, kfac", lams="10,100")
    assert c.strategies == ("lora", "kfac") and c.lams == (10.0, 100.0)
    assert c.cells() == [("lora", 0.0), ("kfac", 10.0), ("kfac", 100.0)]
    assert c.adaptation_seeds() == (0,) and SweepConfig(seeds="3, 4").adaptation_seeds() == (3, 4)
    with pytest.raises(ValueError, match="each seed once"):
        SweepConfig(seeds="1,1")
    with pytest.raises(ValueError, match="unknown strategy 'bogus'; valid: lora"):
        SweepConfig(strategies="lora,bogus")
    with pytest.raises(ValueError, match="could not read"):
        SweepConfig(lams="1,x")


def test_lams_default_stands_for_each_strategys_own_lambda():
    from tts_adapt.adapt.strategies import get_strategy

    c = SweepConfig(strategies="lora,kfac,lalora,l2,selective", lams="default")
    assert c.cells() == [("lora", 0.0), ("selective", 0.0), ("kfac", get_strategy("kfac").default_lam),
                         ("lalora", get_strategy("lalora").default_lam), ("l2", get_strategy("l2").default_lam)]
    # next to numbers: both, each λ once (a number equal to the default is one cell, not two)
    both = SweepConfig(strategies="kfac", lams=f"default, 10, {get_strategy('kfac').default_lam:g}")
    assert both.cells() == [("kfac", 10.0), ("kfac", get_strategy("kfac").default_lam)]
    with pytest.raises(ValueError, match="each λ once"):
        SweepConfig(lams="default,DEFAULT")
    with pytest.raises(ValueError, match="could not read"):
        SweepConfig(lams="defaults")


def test_a_cells_folder_names_its_seed_whichever_seeds_a_run_asks_for(tmp_path):
    from tts_adapt.evaluate.continual import method_folder
    from tts_adapt.evaluate.sweep import cell_folder

    everything, rest = SweepConfig(seeds=(0, 1, 2)), SweepConfig(seeds=(2,))
    assert cell_folder(tmp_path, "lora", 0, everything) == tmp_path / "cells" / "lora" / "adapter"
    assert cell_folder(tmp_path, "lora", 2, rest) == cell_folder(tmp_path, "lora", 2, everything) \
        == tmp_path / "cells" / "lora-seed2" / "adapter"
    assert method_folder(tmp_path, "kfac", 2, rest) == tmp_path / "sequence" / "kfac-seed2"
    assert method_folder(tmp_path, "kfac", 0, everything) == tmp_path / "sequence" / "kfac"


def _target_runs(strategy, lam, by_target: dict) -> list[dict]:
    return [{**_row(strategy, lam, 0.7, 8.0, d), "cell": f"{strategy}{lam}", "target": t, "seed": k}
            for t, dmcds in by_target.items() for k, d in enumerate(dmcds)]


def test_lines_pooled_over_targets_judge_a_strategy_on_the_difference_paired_by_target_and_seed():
    # the targets differ far more than the strategies do: unpaired, K-FAC's 0.3 dB less would be inside the noise
    lora = {"a": [1.0, 1.1, 1.2], "b": [3.0, 3.1, 3.2], "c": [5.0, 5.2, 5.1]}
    kfac = {t: [d - 0.3 + 0.02 * k for k, d in enumerate(v)] for t, v in lora.items()}
    diag = {t: [d + (0.3 if k == 0 else -0.3) for k, d in enumerate(v)] for t, v in lora.items()}  # no change
    runs = _target_runs("lora", 0, lora) + _target_runs("kfac", 10, kfac) + _target_runs("diag", 10, diag)
    rows = aggregate(runs)
    assert [(r["seeds"], r["targets"], r["runs"]) for r in rows] == [(3, 3, 9)] * 3
    assert not outside_noise(rows[1], rows[0], "old_dmcd")  # unpaired: the spread over targets hides it
    config = SweepConfig(strategies=("lora", "kfac", "diag"), lams=(10,), seeds=(0, 1, 2))
    best = summarise(rows, config, 1.0, runs=runs)["headline"]["best_at_equal_learning"]
    assert best["kfac"]["old_dmcd_difference"]["pairs"] == 9
    assert best["kfac"]["old_dmcd_difference"]["mean"] == pytest.approx(-0.28)
    assert best["kfac"]["outside_noise"] and not best["diag"]["outside_noise"]
    md = to_markdown(rows, summarise(rows, config, 1.0, runs=runs))
    assert "| targets |" in md and "9 runs (3 target voices × 3 adaptation seeds)" in md
    assert "paired difference -0.28 ± " in md and "inside the noise: a tie" in md


def test_a_sweep_over_several_targets_sweeps_each_in_its_folder_and_pools_them(tmp_path, monkeypatch):
    from tts_adapt.evaluate import sweep as sweep_module

    corpus = tmp_path / "corpus"
    corpus.mkdir()
    (corpus / "manifest.csv").write_text("id,speaker,speaker_set\nu1,es01f1,target\nu2,fl00slt,target\n"
                                         "u3,p1,pretrain\n")
    calls = []

    def fake_cells(out, config, *, target_speaker, curvature_dir=None, **kwargs):
        calls.append((out, target_speaker, curvature_dir))
        shift = {"fl00slt": 0.0, "es01f1": 2.0}[target_speaker]
        return [{**_row("lora", 0, 0.7, 8.0, 2.0 + shift + 0.1 * seed), "cell": "lora", "seed": seed}
                for seed in (0, 1)] + \
               [{**_row("kfac", 10, 0.7, 8.0, 1.0 + shift + 0.1 * seed), "cell": "kfac_lam10", "seed": seed}
                for seed in (0, 1)]

    monkeypatch.setattr(sweep_module, "sweep_cells", fake_cells)
    out, publish = tmp_path / "sweep", tmp_path / "docs"
    config = SweepConfig(strategies=("lora", "kfac"), lams=(10,), seeds=(0, 1))
    summary = run_sweep(out, config, data=corpus, target_speaker="all", publish=publish, echo=lambda *a: None)
    # the corpus's slt voice first, as choose_target has it; one curvature folder for every target
    assert [(c[0], c[1], c[2]) for c in calls] == [(out / "fl00slt", "fl00slt", out / "curvature"),
                                                   (out / "es01f1", "es01f1", out / "curvature")]
    assert summary["targets"] == ["fl00slt", "es01f1"]
    assert [(r["cell"], r["runs"], r["targets"]) for r in summary["cells"]] == [("lora", 4, 2), ("kfac_lam10", 4, 2)]
    best = summary["headline"]["best_at_equal_learning"]["kfac"]
    assert best["old_dmcd_difference"]["mean"] == pytest.approx(-1.0) and best["outside_noise"]
    with open(out / "runs.csv", newline="") as fh:
        assert {r["target"] for r in csv.DictReader(fh)} == {"fl00slt", "es01f1"}
    for folder in (out, out / "fl00slt", out / "es01f1", publish):
        assert (folder / "table.md").is_file() and (folder / "pareto.png").is_file()
    assert "2 target voices" in (publish / "table.md").read_text()
    assert "target voices" not in (out / "es01f1" / "table.md").read_text()  # one target's own table
    with pytest.raises(ValueError, match="each speaker once"):
        run_sweep(out, config, data=corpus, target_speaker="fl00slt,fl00slt")


@pytest.mark.slow
def test_sweep_writes_table_plot_and_reuses_finished_cells(tiny_model, tiny_corpus, prepared, feature_cache,
                                                          tmp_path):
    config = SweepConfig(strategies=("lora", "kfac"), lams=(10.0,), steps=2, curvature_utterances=8,
                         old_speakers=1, unseen_speakers=1, per_speaker=1, seeds=(0, 1))
    out = tmp_path / "sweep"
    publish = tmp_path / "docs"
    kwargs = dict(model=tiny_model, data=tiny_corpus, target_dir=prepared.clips_dir,
                  heldout_dir=prepared.heldout_dir, cache_dir=feature_cache, progress=False, echo=lambda *a: None)
    summary = run_sweep(out, config, publish=publish, **kwargs)
    assert [c["cell"] for c in summary["cells"]] == ["lora", "kfac_lam10"]
    assert all(c["seeds"] == 2 for c in summary["cells"])
    assert (out / "cells" / "kfac_lam10-seed1" / "adapter" / "eval" / "report.json").is_file()
    for name in ("table.csv", "table.md", "summary.json", "pareto.png", "runs.csv"):
        assert (out / name).is_file() and (publish / name).is_file()
    assert (out / "runs.csv").read_text().count("\n") == 1 + 4
    assert "kfac_lam10" in (out / "table.md").read_text()
    lora = summary["cells"][0]
    # a headline needs plain LoRA to have forgotten something (a reduction of nothing is undefined)
    assert ("headline" in summary) == (lora["old_dmcd"] is not None and lora["old_dmcd"] > 0)
    run_json = out / "cells" / "kfac_lam10" / "adapter" / "run.json"
    stamp = run_json.stat().st_mtime_ns
    again = run_sweep(out, config, **kwargs)
    assert run_json.stat().st_mtime_ns == stamp  # the finished cell was reused, not trained again
    assert again["cells"] == summary["cells"]


# --------------------------------------------------------------------------- a base model's voices and card
def test_voice_report_scores_two_ceilings_and_the_card_says_where_the_model_stands(tiny_model, tiny_corpus, tmp_path):
    import shutil

    from tts_adapt.evaluate.report import evaluate_base_model
    from tts_adapt.evaluate.corpus_voices import REFERENCES
    from tts_adapt.evaluate.model_card import DEFAULT_COMMANDS, NOTES_FILE, PILOT_FILE, training_steps, write_model_card

    report = evaluate_base_model(tiny_model, tiny_corpus, tmp_path / "eval", per_speaker=1, progress=False)
    summary = report["summary"]
    real, vocoded = ("pretrain" + REFERENCES[m] for m in REFERENCES)
    assert set(summary) == {group + suffix for group in ("pretrain", "unseen") for suffix in ("", *REFERENCES.values())}
    assert summary["pretrain"]["speakers"] == summary[real]["speakers"] == summary[vocoded]["speakers"] == 4
    assert summary[real]["mcd_db"] is None and summary["pretrain"]["mcd_db"] > 0
    # copy synthesis is far closer to the recording than a 2-step model's guess
    assert 0 < summary[vocoded]["mcd_db"] < summary["pretrain"]["mcd_db"]
    assert summary["unseen"]["mode"] == "zero-shot"
    # real recordings of the same speaker are closer than any other speaker's, on the corpus's distinct voices
    assert summary[real]["recognisable"] >= 3
    with open(tmp_path / "eval" / "speakers.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == 15 and {r["mode"] for r in rows} == {"trained", "zero-shot", *REFERENCES}
    assert "| pretrain (real recordings) | real recordings | 4 | – |" in report["markdown"]

    model = tmp_path / "model"
    shutil.copytree(tiny_model, model)
    (model / NOTES_FILE).write_text("Why this model: because.\n")
    (model / PILOT_FILE).write_text("| candidate | steps |\n|---|---|\n| fastpitch-tiny | 2 |\n")
    card = write_model_card(model, tmp_path / "eval").read_text()
    share = summary["pretrain"]["recognisable_share"]
    verdict = "meets its target" if share >= 0.9 else "does not yet meet its target"
    assert card.index("Why this model: because.") < card.index(verdict) < card.index("## Choice of architecture")
    assert "| fastpitch-tiny | 2 |" in card and "Real recordings of other sentences reach" in card
    assert "through the same vocoder (copy synthesis) reach" in card
    assert DEFAULT_COMMANDS[1] in card and (model / "training_curve.png").is_file()
    assert json.loads((model / "eval_report.json").read_text())["summary"] == summary

    # a second vocoder's report joins the first on the card, each under its own heading
    world = evaluate_base_model(model, tiny_corpus, tmp_path / "eval_world", per_speaker=1, progress=False,
                                speaker_sets=("pretrain",), vocoder="world")
    assert world["vocoder"] == "WorldVocoder" and set(world["summary"]) == {"pretrain", real, vocoded}
    card = write_model_card(model, tmp_path / "eval_world").read_text()
    assert json.loads((model / "eval_report_world.json").read_text())["summary"] == world["summary"]
    assert card.index("### Vocoder: Griffin-Lim") < card.index("### Vocoder: WORLD")
    assert "vocoded with Griffin-Lim" in card and "vocoded with WORLD" in card

    # a model started from another run's weights names that run, its pitch targets and the total time
    meta = json.loads((model / "tts_adapt.json").read_text())
    assert meta["audio"]["f0_method"] == "rapt" and "pitch targets by RAPT" in card
    wall = float(meta["info"]["wall_seconds"])
    meta["info"]["init_from"] = {"path": "runs/first", "steps": 7500, "wall_seconds": 7200.0,
                                 "pretrain": {"lr": 0.001, "n_mels": 128}}  # a run from before f0_method
    (model / "tts_adapt.json").write_text(json.dumps(meta))
    card = write_model_card(model).read_text()
    assert ("- started from the weights of `runs/first`: 7500 steps (peak lr 0.001, 128 mels, pitch targets by "
            "SWIPE'), 2.00 h") in card
    assert f"- wall time of all runs together: {(wall + 7200) / 3600:.2f} h" in card
    assert (f"At step {meta['info']['steps']} of a run started from a model trained for 7500 steps, vocoded "
            "with") in card
    assert training_steps(meta["info"]) == f"{meta['info']['steps'] + 7500} (in 2 runs)"
    assert training_steps({"steps": 40}) == "40" and training_steps({}) == "?"
    # a third run: the verdict counts every earlier run, the lineage lists each, newest first
    third = {"path": "runs/second", "steps": 5000, "wall_seconds": 3600.0, "pretrain": {"lr": 0.0006},
             "init_from": meta["info"]["init_from"]}
    meta["info"]["init_from"] = third
    (model / "tts_adapt.json").write_text(json.dumps(meta))
    card = write_model_card(model).read_text()
    assert "of a run started from a model trained for 12500 steps in 2 runs, vocoded with" in card
    assert card.index("weights of `runs/second`: 5000 steps") < card.index("weights of `runs/first`: 7500 steps")
    assert training_steps(meta["info"]) == f"{meta['info']['steps'] + 12500} (in 3 runs)"
    meta["info"]["init_from"]["init_from"] = {"path": "runs/zeroth"}  # a parent that recorded no steps
    assert training_steps(meta["info"]) == "?"


def test_the_card_shows_each_intelligibility_run_with_its_command(tmp_path):
    from tts_adapt.evaluate.intelligibility import error_rates
    from tts_adapt.evaluate.model_card import intelligibility_lines

    assert intelligibility_lines(tmp_path) == []
    refs = ["the cat sat on the mat", "a dog ran home"]
    sources = {"recordings": error_rates(refs, ["the cat sat on the mat", "a dog ran home"], seed=0),
               "copy synthesis": error_rates(refs, ["the cat sat on a mat", "a dog ran home"], seed=0),
               "model": error_rates(refs, ["the cat sat on a hat", "a frog ran home"], seed=0)}
    ratios = {f"{k}_over_{f}": [float("inf"), 0.0, 0.0] for k in ("wer", "cer") for f in ("recordings", "copy synthesis")}
    run = {"model": str(tmp_path), "vocoder": "world", "seconds": 1.0,
           "args": {"corpus": "work/corpus", "everyday": "work/corpus_diverse", "speakers": 8, "unseen": 6,
                    "sentences": 13, "seed": 0},
           "results": [{"text_set": "everyday", "voices": "pretrain", "engine": "flite", "speakers": ["fl01"],
                        "sources": sources, "ratios": ratios}]}
    (tmp_path / "intelligibility_world.json").write_text(json.dumps(run))
    # a second run with the same vocoder, on other voices, keeps its own file name and says which voices
    unseen = {**run, "vocoder": "griffin-lim", "args": {**run["args"], "speakers": 0, "sentences": 25}}
    (tmp_path / "intelligibility_griffinlim_unseen.json").write_text(json.dumps(unseen))
    text = "\n".join(intelligibility_lines(tmp_path))
    assert "### Vocoder: world; 8 pretraining voices and 6 unseen voices, 13 sentences each" in text
    assert "--sentences 13 --vocoder world --out " + str(tmp_path / "intelligibility_world.json") in text
    assert "### Vocoder: griffin-lim; 6 unseen voices, 25 sentences each" in text
    assert "--out " + str(tmp_path / "intelligibility_griffinlim_unseen.json") in text
    wer = sources["model"]["wer"]
    assert wer == 0.3 and f"| everyday | pretrain, flite (1) | 2 | 0.00 [0.00, 0.00] |" in text
    assert f"**{wer:.2f} [" in text


def test_heldout_recordings_are_the_manifests_heldout_split_of_one_speaker_set(tiny_corpus, tmp_path):
    from tts_adapt.evaluate.corpus_voices import heldout_recordings

    with open(tiny_corpus / "manifest.csv", newline="", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    for speaker_set in ("pretrain", "unseen"):
        got = heldout_recordings(tiny_corpus, speaker_set)
        want = {r["speaker"] for r in rows if r["speaker_set"] == speaker_set}
        assert set(got) == want and all(paths for paths in got.values())
        for speaker, paths in got.items():
            assert paths == [tiny_corpus / r["audio"] for r in rows
                             if r["speaker"] == speaker and r["split"] == "heldout"]
            assert all(p.is_file() for p in paths)
    with pytest.raises(FileNotFoundError, match="no manifest.csv"):
        heldout_recordings(tmp_path)


def test_voice_prints_come_from_clips_that_are_not_evaluated_and_name_the_target_once():
    from tts_adapt.data.samples import Utterance
    from tts_adapt.evaluate.adapter import voice_print_clips
    from tts_adapt.evaluate.scoring import EvalUtterance

    utts = [Utterance(f"/d/{s}/{k}.wav", "text", s, split=split, utt_id=f"{s}{k}")
            for s in ("old1", "slt") for k, split in enumerate(("heldout", "train", "train"))]
    items = [EvalUtterance("pretrain", "old1", "old10", "text", "/d/old1/0.wav")]
    clips = voice_print_clips(utts, items, ["/t/a.wav", "/t/b.wav"], target_speaker="slt")
    assert clips == {"target": ["/t/a.wav", "/t/b.wav"], "old1": ["/d/old1/1.wav", "/d/old1/2.wav"]}


def test_a_cell_another_process_holds_is_left_for_later(tmp_path):
    import subprocess
    import sys
    import textwrap

    from tts_adapt.evaluate.sweep import cell_lock

    folder = tmp_path / "cells" / "kfac_lam10" / "adapter"
    holder = subprocess.Popen([sys.executable, "-c", textwrap.dedent(f"""
        import sys, time
        from pathlib import Path
        from tts_adapt.evaluate.sweep import cell_lock
        with cell_lock(Path({str(folder)!r})) as mine:
            print(mine, flush=True)
            sys.stdin.readline()
        """)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "True"
        with cell_lock(folder, blocking=False) as mine:
            assert mine is False  # held by the other process: not trained twice
        assert not folder.exists() and (folder.parent / ".lock").is_file()
    finally:
        holder.communicate("done\n", timeout=60)
    with cell_lock(folder, blocking=False) as mine:
        assert mine is True  # released with the other process's block
