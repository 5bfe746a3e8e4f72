"""The continual many-voice benchmark: continuing an adapter (init_adapter), views of a stage for an earlier voice,
the isolation method's merge, the learning / backward-transfer / forgetting arithmetic and ``sweep --sequence``."""

from __future__ import annotations

import json
import math
import os
import shutil
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from tts_adapt.adapt.adapt_config import AdaptConfig
from tts_adapt.adapt.adapter import TARGET_FILE, Adapter, add_target_speaker, save_adapter
from tts_adapt.adapt.continual import InitAdapterError, load_init_adapter, read_init_adapter
from tts_adapt.adapt.strategies import get_strategy
from tts_adapt.adapt.train import adapt
from tts_adapt.evaluate.continual import (
    SequenceError,
    aggregate_methods,
    check_voices,
    ensure_merged,
    make_view,
    method_measures,
    parse_sequence,
    summarise,
    to_markdown,
)
from tts_adapt.evaluate.sweep_config import SweepConfig
from tts_adapt.models.base import TTSBackend

SYNTHS = ("flite", "espeak-ng", "sox")
VOICES = ("fl00slt", "es03m7")  # the two target speakers of the corpus below (flite slt first, as the corpus names them)
QUICK = {"steps": 3, "batch_size": 4, "val_every": 3, "checkpoint_every": 3}


@pytest.fixture(scope="module")
def two_voice_corpus(tmp_path_factory) -> Path:
    """A tiny corpus with two target speakers (3 pretraining, 1 unseen), 16 utterances each (12 to adapt on)."""
    missing = [p for p in SYNTHS if shutil.which(p) is None]
    if missing:
        pytest.skip(f"building the corpus needs {', '.join(missing)} (installed by scripts/setup.sh)")
    from tts_adapt.data.corpus import CorpusConfig, build_corpus

    out = tmp_path_factory.mktemp("two-voices") / "corpus"
    build_corpus(out, CorpusConfig(speakers=6, utterances=16, parallel=2, heldout=2, unseen_speakers=1,
                                   target_speakers=2, prompts=80), workers=1, progress=False)
    return out


@pytest.fixture(scope="module")
def two_voice_model(two_voice_corpus, feature_cache, tmp_path_factory) -> Path:
    from tts_adapt.models.pretrain import pretrain
    from tts_adapt.models.pretrain_config import PretrainConfig

    out = tmp_path_factory.mktemp("two-voice-model") / "model"
    pretrain(two_voice_corpus, out, PretrainConfig(size="tiny", steps=2, batch_size=4, checkpoint_every=2,
                                                   log_every=1, warmup_steps=1, val_utterances=4),
             cache_dir=feature_cache, workers=1, progress=False)
    return out


@pytest.fixture(scope="module")
def targets(two_voice_corpus, tmp_path_factory):
    from tts_adapt.data.target_split import prepare_target

    root = tmp_path_factory.mktemp("targets")
    return {v: prepare_target(two_voice_corpus, v, root / v, clips=10, heldout=2) for v in VOICES}


@pytest.fixture(scope="module")
def first(two_voice_model, targets, feature_cache, tmp_path_factory) -> Path:
    """Plain LoRA on the first voice: the adapter later stages continue from."""
    out = tmp_path_factory.mktemp("first") / "adapter"
    adapt(targets[VOICES[0]].clips_dir, out, two_voice_model, AdaptConfig(strategy="lora", **QUICK),
          cache_dir=feature_cache, progress=False)
    return out


@pytest.fixture(scope="module")
def second(two_voice_model, targets, first, feature_cache, tmp_path_factory) -> Path:
    """LoRA on the second voice continued from the first voice's adapter."""
    out = tmp_path_factory.mktemp("second") / "adapter"
    adapt(targets[VOICES[1]].clips_dir, out, two_voice_model, AdaptConfig(strategy="lora", seed=1, **QUICK),
          cache_dir=feature_cache, progress=False, init_adapter=first)
    return out


def _lora(folder: Path) -> dict[str, torch.Tensor]:
    return {k: v for k, v in load_file(str(folder / "adapter_model.safetensors")).items() if ".lora_" in k}


def _wrapped(model: Path, init: Path, strategy: str = "lora", **cfg):
    """``init`` read as adapt reads it (against the base model), then a fresh backend with a target speaker wrapped
    by ``strategy`` (seed 5: another LoRA initialisation)."""
    backend = TTSBackend.from_pretrained(model)
    fingerprint = backend.fingerprint()
    adapter = read_init_adapter(init, backend)
    rows = add_target_speaker(backend, torch.randn(backend.speakers.embeddings.shape[1]))
    config = AdaptConfig(strategy=strategy, seed=5, **cfg)
    s = get_strategy(strategy).from_config(config)
    targets = backend.lora_targets()
    s.wrap(backend.model, targets, rows)
    return adapter, s, targets, config, fingerprint


# --------------------------------------------------------------------------- init_adapter
def test_a_zero_step_continuation_is_the_previous_adapter(two_voice_model, first, tmp_path):
    init, strategy, targets, config, fingerprint = _wrapped(two_voice_model, first)
    before = {k: p.detach().clone() for k, p in strategy.model.named_parameters() if ".lora_B" in k}
    assert all(float(p.abs().max()) == 0.0 for p in before.values())  # a fresh LoRA-B: the test can fail
    loaded = load_init_adapter(strategy.model, init, targets, config.rank, config.alpha)
    assert loaded.loaded == len(_lora(first)) and loaded.fresh == []
    save_adapter(tmp_path / "again", strategy.model, torch.zeros(3), {}, base_fingerprint=fingerprint,
                 targets=targets)
    previous, again = _lora(first), _lora(tmp_path / "again")
    assert previous.keys() == again.keys()
    for k in previous:
        assert torch.equal(previous[k], again[k]), k


def test_adapt_continues_from_the_adapter_with_the_new_voices_conditioning(two_voice_model, targets, first,
                                                                          feature_cache, tmp_path):
    # one step at a vanishing learning rate: the saved adapter is the one it started from
    run = adapt(targets[VOICES[1]].clips_dir, tmp_path / "cont", two_voice_model,
                AdaptConfig(strategy="lora", steps=1, lr=1e-12, val_every=1, batch_size=4, seed=3),
                cache_dir=feature_cache, progress=False, init_adapter=first)
    previous, continued = _lora(first), _lora(tmp_path / "cont")
    assert previous.keys() == continued.keys()
    assert max(float((previous[k] - continued[k]).abs().max()) for k in previous) < 1e-8
    assert run["init_adapter"]["path"] == str(first) and run["init_adapter"]["loaded_tensors"] == len(previous)
    # the new target's own d-vector, not the earlier voice's
    assert not torch.allclose(Adapter.load(first).d_vector, Adapter.load(tmp_path / "cont").d_vector)
    fresh = adapt(targets[VOICES[1]].clips_dir, tmp_path / "fresh", two_voice_model,
                  AdaptConfig(strategy="lora", steps=1, lr=1e-12, val_every=1, batch_size=4, seed=3),
                  cache_dir=feature_cache, progress=False)
    assert fresh["init_adapter"] is None
    assert max(float((previous[k] - _lora(tmp_path / "fresh")[k]).abs().max()) for k in previous) > 1e-3


def test_an_adapter_of_another_rank_layers_or_base_model_is_refused(two_voice_model, targets, first,
                                                                   feature_cache, tmp_path):
    clips = targets[VOICES[1]].clips_dir
    with pytest.raises(InitAdapterError, match="rank 8 .* rank 4"):
        adapt(clips, tmp_path / "r4", two_voice_model, AdaptConfig(strategy="lora", rank=4, **QUICK),
              cache_dir=feature_cache, progress=False, init_adapter=first)
    assert not (tmp_path / "r4").exists()  # a refused run leaves nothing
    some = TTSBackend.from_pretrained(two_voice_model).lora_targets()[:3]
    with pytest.raises(InitAdapterError, match="other layers"):
        adapt(clips, tmp_path / "few", two_voice_model, AdaptConfig(strategy="lora", **QUICK), targets=some,
              cache_dir=feature_cache, progress=False, init_adapter=first)
    foreign = tmp_path / "foreign"
    shutil.copytree(first, foreign)
    with safe_open(str(foreign / TARGET_FILE), "pt") as fh:
        tensors, meta = {k: fh.get_tensor(k) for k in fh.keys()}, dict(fh.metadata())  # noqa: SIM118 (a safetensors handle)
    save_file(tensors, str(foreign / TARGET_FILE), metadata={**meta, "base_model_fingerprint": "0" * 64})
    with pytest.raises(InitAdapterError, match="another base model"):
        adapt(clips, tmp_path / "other-base", two_voice_model, AdaptConfig(strategy="lora", **QUICK),
              cache_dir=feature_cache, progress=False, init_adapter=foreign)


def test_peft_s_shortened_target_list_is_read_as_peft_reads_it(two_voice_model, first, tmp_path):
    # peft saves a long list of target layers (the shipped model's 40) as their shortest distinct suffixes
    short = tmp_path / "short"
    shutil.copytree(first, short)
    config = json.loads((short / "adapter_config.json").read_text())
    full = TTSBackend.from_pretrained(two_voice_model).lora_targets()
    config["target_modules"] = sorted({name.rsplit(".", 1)[-1] for name in full})
    assert set(config["target_modules"]) - set(full)  # suffixes, not the names: the test can fail
    (short / "adapter_config.json").write_text(json.dumps(config))
    init, strategy, targets, cfg, _ = _wrapped(two_voice_model, short)
    assert load_init_adapter(strategy.model, init, targets, cfg.rank, cfg.alpha).loaded == len(_lora(first))
    # without the run's own record of its layers, the suffixes alone are checked against the run's layers
    with safe_open(str(short / TARGET_FILE), "pt") as fh:
        tensors, meta = {k: fh.get_tensor(k) for k in fh.keys()}, dict(fh.metadata())  # noqa: SIM118 (a safetensors handle)
    del meta["targets"]
    save_file(tensors, str(short / TARGET_FILE), metadata=meta)
    init, strategy, targets, cfg, _ = _wrapped(two_voice_model, short)
    assert load_init_adapter(strategy.model, init, targets, cfg.rank, cfg.alpha).loaded == len(_lora(first))
    with pytest.raises(InitAdapterError, match="only in the adapter"):
        load_init_adapter(strategy.model, init, [t for t in targets if not t.endswith("proj_g")], cfg.rank,
                          cfg.alpha)


def test_layers_the_adapter_does_not_hold_keep_their_fresh_initialisation(two_voice_model, first, tmp_path):
    partial = tmp_path / "partial"
    shutil.copytree(first, partial)
    tensors = load_file(str(partial / "adapter_model.safetensors"))
    dropped = next(k for k in tensors if "proj_g" in k).split(".lora_")[0]  # as a selective adapter drops a block
    save_file({k: v for k, v in tensors.items() if not k.startswith(dropped + ".")},
              str(partial / "adapter_model.safetensors"))
    config = json.loads((partial / "adapter_config.json").read_text())
    config["target_modules"] = [t for t in config["target_modules"] if t != "proj_g"]
    (partial / "adapter_config.json").write_text(json.dumps(config))
    init, strategy, targets, cfg, _ = _wrapped(two_voice_model, partial)
    loaded = load_init_adapter(strategy.model, init, targets, cfg.rank, cfg.alpha)
    assert loaded.fresh and all(name.startswith(dropped) for name in loaded.fresh)
    params = dict(strategy.model.named_parameters())
    assert float(params[f"{dropped}.lora_B.default.weight"].detach().abs().max()) == 0.0
    other = next(k for k in tensors if "lora_B" in k and not k.startswith(dropped))
    assert torch.equal(params[other.replace(".lora_B.", ".lora_B.default.")].detach(), tensors[other])


# --------------------------------------------------------------------------- views and isolation
def test_a_view_speaks_an_earlier_voice_with_its_own_conditioning_and_the_stages_weights(first, second, targets,
                                                                                        tmp_path):
    view = make_view(second, first, targets[VOICES[0]].clips_dir, tmp_path / "view")
    assert (view / "adapter_model.safetensors").read_bytes() == (second / "adapter_model.safetensors").read_bytes()
    seen = Adapter.load(view, require_run=True)
    assert torch.equal(seen.d_vector, Adapter.load(first).d_vector)
    assert not torch.equal(seen.d_vector, Adapter.load(second).d_vector)
    assert seen.run["target_dir"] == str(targets[VOICES[0]].clips_dir)
    stamp = (view / "run.json").stat().st_mtime_ns
    make_view(second, first, targets[VOICES[0]].clips_dir, view)
    assert (view / "run.json").stat().st_mtime_ns == stamp  # the same view is kept (its report stays valid)
    make_view(first, first, targets[VOICES[0]].clips_dir, view)  # other weights: written anew
    assert (view / "adapter_model.safetensors").read_bytes() == (first / "adapter_model.safetensors").read_bytes()


def test_the_isolation_stage_is_the_sum_of_the_voices_updates(two_voice_model, first, second, tmp_path):
    voices = []
    for name, folder in zip(VOICES, (first, second)):
        shutil.copytree(folder, tmp_path / "voices" / name)
        voices.append(tmp_path / "voices" / name)
    merged = tmp_path / "stage2" / "adapter"
    record = ensure_merged(voices, merged, two_voice_model)
    assert record["merge"]["combination"] == "cat" and [v["weight"] for v in record["merge"]["voices"]] == [1.0, 1.0]

    def delta(folder: Path, key: str) -> torch.Tensor:  # s · B A of a Linear layer from the files
        config = json.loads((folder / "adapter_config.json").read_text())
        t = load_file(str(folder / "adapter_model.safetensors"))
        return config["lora_alpha"] / config["r"] * t[f"{key}.lora_B.weight"] @ t[f"{key}.lora_A.weight"]

    key = "base_model.model.proj_g"
    want = delta(voices[0], key) + delta(voices[1], key)
    assert float(want.abs().max()) > 0
    assert torch.allclose(delta(merged, key), want, atol=1e-6 * float(want.abs().max()))
    stamp = (merged / "run.json").stat().st_mtime_ns
    ensure_merged(voices, merged, two_voice_model)
    assert (merged / "run.json").stat().st_mtime_ns == stamp  # cached
    later = (voices[1] / "run.json").stat().st_mtime + 10
    os.utime(voices[1] / "run.json", (later, later))  # a voice adapted again: the stage is merged again
    ensure_merged(voices, merged, two_voice_model)
    assert (merged / "run.json").stat().st_mtime_ns != stamp


# --------------------------------------------------------------------------- the measures
def _row(method, seed, stage, voice_stage, mcd, sim, old=None, unseen=None, ident=None, wer=None):
    return {"method": method, "lam": 0.0, "seed": seed, "stage": stage, "voice_stage": voice_stage,
            "target_mcd": mcd, "target_similarity": sim, "target_id": ident, "target_wer": wer,
            "old_dmcd": old, "unseen_dmcd": unseen,
            "old_dsimilarity": None, "old_dmcd_ci": [None, None], "unseen_dmcd_ci": [None, None],
            "adapt_seconds": 1.0}


def _table(method, seed, shift=0.0):
    """Three voices; R[i][j] MCD: voice 1: 5, 6, 7 after stages 1-3; voice 2: 4, 4.5; voice 3: 3."""
    return [_row(method, seed, 1, 1, 5 + shift, 0.8, old=0.1, unseen=0.05),
            _row(method, seed, 2, 1, 6 + shift, 0.7), _row(method, seed, 2, 2, 4 + shift, 0.9, old=0.2, unseen=0.1),
            _row(method, seed, 3, 1, 7 + shift, 0.6), _row(method, seed, 3, 2, 4.5 + shift, 0.85),
            _row(method, seed, 3, 3, 3 + shift, 0.95, old=0.4, unseen=0.3)]


def test_learning_backward_transfer_and_forgetting_on_a_hand_made_table():
    m = method_measures(_table("lora", 0), ("a", "b", "c"))
    assert m["learning_mcd"] == pytest.approx((5 + 4 + 3) / 3)
    assert m["learning_similarity"] == pytest.approx((0.8 + 0.9 + 0.95) / 3)
    assert m["bwt_mcd"] == pytest.approx(((7 - 5) + (4.5 - 4)) / 2)  # earlier voices only; positive: degraded
    assert m["bwt_similarity"] == pytest.approx(((0.6 - 0.8) + (0.85 - 0.9)) / 2)
    assert [m[f"old_dmcd_stage{i}"] for i in (1, 2, 3)] == [0.1, 0.2, 0.4] and m["old_dmcd_final"] == 0.4
    assert m["unseen_dmcd_final"] == 0.3
    assert m["learning_id"] is None and m["bwt_id"] is None  # not measured: no figure, not a zero
    rows = _table("lora", 0)
    for r, ident, wer in zip(rows, (1.0, 0.5, 0.75, 0.25, 0.5, 1.0), (0.3, 0.9, 0.4, 0.9, 0.9, 0.5)):
        r.update(target_id=ident, target_wer=wer)
    m = method_measures(rows, ("a", "b", "c"))
    assert m["learning_id"] == pytest.approx((1.0 + 0.75 + 1.0) / 3)
    assert m["learning_wer"] == pytest.approx((0.3 + 0.4 + 0.5) / 3)
    assert m["bwt_id"] == pytest.approx(((0.25 - 1.0) + (0.5 - 0.75)) / 2)
    with pytest.raises(ValueError, match="lacks voice 2 after stage 3"):
        method_measures([r for r in _table("lora", 0) if (r["stage"], r["voice_stage"]) != (3, 2)], ("a", "b", "c"))


def test_over_seeds_a_method_is_a_mean_with_standard_error_and_small_differences_are_ties():
    seq = ("a", "b", "c")
    per_seed = [method_measures(_table("lora", s, shift=0.1 * s), seq) for s in (0, 1)]
    per_seed += [method_measures(_table("kfac", s, shift=-3.0 + 0.1 * s), seq) for s in (0, 1)]
    per_seed += [method_measures(_table("l2", s, shift=0.05 + 0.1 * s), seq) for s in (0, 1)]
    lines = aggregate_methods(per_seed)
    lora = next(r for r in lines if r["method"] == "lora")
    assert lora["seeds"] == 2 and lora["learning_mcd"] == pytest.approx(4.05)
    assert lora["learning_mcd_se"] == pytest.approx(0.1 / math.sqrt(2) / math.sqrt(2))  # std 0.1/√2 over √2 seeds
    summary = summarise(lines, SweepConfig(strategies=("lora", "kfac", "l2")), seq, None, seconds=0.0)
    assert summary["reference"] == "lora"
    assert summary["comparison"]["kfac"]["learning_mcd"] == "better"  # 3 dB lower, far outside the noise
    assert summary["comparison"]["l2"]["learning_mcd"] == "tie"  # 0.05 dB: inside twice the s.e. of the difference
    assert summary["comparison"]["kfac"]["bwt_mcd"] == "tie"  # the same change over the stages
    text = to_markdown(lines, summary)
    assert "LoRA + K-FAC" in text and "± 0.05" in text and "learning MCD better" in text
    # paired by seed, a small but steady difference is called, one that changes sign is not
    steady = [method_measures(_table("kfac", s, shift=-0.05 + 0.1 * s), seq) for s in (0, 1, 2)]
    swinging = [method_measures(_table("l2", s, shift=(0.3 if s else -0.3) + 0.1 * s), seq) for s in (0, 1, 2)]
    per_seed = [method_measures(_table("lora", s, shift=0.1 * s), seq) for s in (0, 1, 2)] + steady + swinging
    lines = aggregate_methods(per_seed)
    unpaired = summarise(lines, SweepConfig(strategies=("lora", "kfac", "l2")), seq, None, seconds=0.0)
    paired = summarise(lines, SweepConfig(strategies=("lora", "kfac", "l2")), seq, None, seconds=0.0,
                       per_seed=per_seed)
    assert unpaired["comparison"]["kfac"]["learning_mcd"] == "tie"
    assert paired["comparison"]["kfac"]["learning_mcd"] == "better"
    assert paired["comparison"]["l2"]["learning_mcd"] == "tie"


# --------------------------------------------------------------------------- refusals
def test_a_sequence_needs_two_distinct_known_voices_that_the_model_does_not_already_speak():
    with pytest.raises(SequenceError, match="at least two voices"):
        parse_sequence("fl00slt")
    with pytest.raises(SequenceError, match="more than once"):
        parse_sequence("a,b,a")
    assert parse_sequence(" a , b ") == ("a", "b")
    speakers = ["old1", "new1", "new2"]
    with pytest.raises(SequenceError, match="not a speaker of the dataset.*new1, new2"):
        check_voices(("new1", "bogus"), speakers, lambda s: s == "old1")
    with pytest.raises(SequenceError, match="pretraining voice"):
        check_voices(("new1", "old1"), speakers, lambda s: s == "old1")


# --------------------------------------------------------------------------- the command, end to end
@pytest.mark.slow
def test_cli_sweep_sequence_writes_the_tables_and_reuses_or_redoes_stages(two_voice_model, two_voice_corpus,
                                                                          feature_cache, tmp_path, capsys):
    from tts_adapt.cli import main

    out, docs = tmp_path / "bench", tmp_path / "docs"
    argv = ["sweep", "--out", str(out), "--model", str(two_voice_model), "--data", str(two_voice_corpus),
            "--sequence", ",".join(VOICES), "--strategies", "lora", "--steps", "2", "--clips", "10",
            "--heldout", "2", "--old-speakers", "1", "--unseen-speakers", "1", "--per-speaker", "1",
            "--seeds", "0,1", "--cache-dir", str(feature_cache), "--publish", str(docs), "-q"]
    assert main(argv) == 0
    summary = json.loads((out / "sequence.json").read_text())
    assert [m["method"] for m in summary["methods"]] == ["lora", "isolation"]
    assert all(m["seeds"] == 2 and m["bwt_mcd"] is not None and m["learning_mcd"] is not None
               for m in summary["methods"])
    for name in ("sequence.csv", "sequence.md", "sequence.json", "sequence.png", "stages.csv"):
        assert (out / name).is_file() and (docs / name).is_file()
    # the first stage and isolation's voice adapters are the cells of a sweep over the same voices
    stage1 = out / VOICES[0] / "cells" / "lora" / "adapter"
    stage2 = out / "sequence" / "lora-seed1" / f"stage2-{VOICES[1]}" / "adapter"
    run2 = json.loads((stage2 / "run.json").read_text())
    assert run2["init_adapter"]["path"] == str(out / VOICES[0] / "cells" / "lora-seed1" / "adapter")
    assert json.loads((stage1 / "eval" / "report.json").read_text())["counts"]["pretrain"] > 0
    # the earlier voice measured after stage 2: its own conditioning, only its held-out clips
    view = stage2.parent / "views" / VOICES[0]
    assert torch.equal(Adapter.load(view).d_vector,
                       Adapter.load(out / VOICES[0] / "cells" / "lora-seed1" / "adapter").d_vector)
    report = json.loads((view / "eval" / "report.json").read_text())
    assert report["counts"]["pretrain"] == 0 and report["counts"]["target"] == 2
    assert Path(report["target_dir"]).parent.parent.name == VOICES[0]  # <voice>/target/heldout
    new = json.loads((stage2 / "eval" / "report.json").read_text())  # the new voice: the stage's adapter itself
    assert new["counts"]["pretrain"] > 0 and not (stage2.parent / "views" / VOICES[1]).exists()
    isolated = out / "sequence" / "isolation" / f"stage2-{VOICES[1]}"
    assert (out / VOICES[1] / "cells" / "lora" / "adapter" / "run.json").is_file()
    assert json.loads((isolated / "views" / VOICES[1] / "eval" / "report.json").read_text())["counts"]["pretrain"] > 0
    assert not (out / "sequence" / "isolation" / f"stage1-{VOICES[0]}").exists()
    # a sweep over the same voices in the same folder finds every cell done
    capsys.readouterr()
    stamps = {p: p.stat().st_mtime_ns for p in out.glob("*/cells/**/run.json")}
    sweep = argv[:argv.index("--sequence")] + ["--target-speaker", ",".join(VOICES)] + \
        argv[argv.index("--strategies"):argv.index("--publish")] + ["-q"]
    assert main(sweep) == 0
    assert all(p.stat().st_mtime_ns == t for p, t in stamps.items()) and len(stamps) == 4
    assert json.loads((out / "summary.json").read_text())["targets"] == list(VOICES)
    capsys.readouterr()

    # everything cached: nothing adapted or evaluated again
    stamps = {p: p.stat().st_mtime_ns for p in out.glob("**/run.json")}
    stamps.update({p: p.stat().st_mtime_ns for p in out.glob("**/report.json")})
    assert main(argv) == 0
    assert all(p.stat().st_mtime_ns == t for p, t in stamps.items())

    # stage 1 holds other weights now: stage 1 is kept, stage 2 (continued from it) is adapted again
    lora_stage2 = out / "sequence" / "lora" / f"stage2-{VOICES[1]}" / "adapter" / "run.json"
    tensors = load_file(str(stage1 / "adapter_model.safetensors"))
    save_file({k: v * 1.5 for k, v in tensors.items()}, str(stage1 / "adapter_model.safetensors"))
    assert main(argv) == 0
    assert (stage1 / "run.json").stat().st_mtime_ns == stamps[stage1 / "run.json"]
    assert lora_stage2.stat().st_mtime_ns != stamps[lora_stage2]
    assert (out / "sequence" / "isolation" / f"stage2-{VOICES[1]}" / "adapter" / "run.json").stat().st_mtime_ns == \
        stamps[out / "sequence" / "isolation" / f"stage2-{VOICES[1]}" / "adapter" / "run.json"]


def test_cli_refuses_a_one_voice_sequence_and_an_unknown_voice(two_voice_model, two_voice_corpus, tmp_path, capsys):
    from tts_adapt.cli import main

    base = ["sweep", "--out", str(tmp_path / "b"), "--model", str(two_voice_model), "--data", str(two_voice_corpus),
            "--strategies", "lora", "-q"]
    assert main(base + ["--sequence", VOICES[0]]) == 1
    assert "at least two voices" in capsys.readouterr().err
    assert main(base + ["--sequence", f"{VOICES[0]},nobody"]) == 1
    err = capsys.readouterr().err
    assert "'nobody' is not a speaker of the dataset" in err and VOICES[1] in err and "fl01awb" not in err
