"""Adaptation end to end on a tiny pretrained FastPitch: the penalty's effect, save / load, exact resume,
refused inputs and the synthesize command with an adapter.

One tiny model (2 pretraining steps), one K-FAC file (16 utterances) and a few 4-step adaptation runs are
shared by the module; every test only reads them (or copies them first).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import soundfile as sf
import torch
from safetensors import safe_open
from safetensors.torch import load_file

from tts_adapt.adapt.adapt_config import AdaptConfig
from tts_adapt.adapt.lora import lora_factors, wrap_with_lora
from tts_adapt.adapt.strategies import get_strategy
from tts_adapt.adapt.clips import TargetDataError
from tts_adapt.adapt.adapter import TARGET_FILE, adapted_model, add_target_speaker, load_adapter
from tts_adapt.adapt.train import STATE_FILE, adapt
from tts_adapt.curvature import Curvature
from tts_adapt.curvature.run import fit_curvature_file
from tts_adapt.curvature.storage import CurvatureMismatchError
from tts_adapt.models import TTSBackend

#: 12 clips: 10 train (2 batches of 4 per epoch), 2 held out; validation at steps 2 and 4.
CONFIG = AdaptConfig(strategy="lora", rank=2, steps=4, batch_size=4, val_every=2, checkpoint_every=2, seed=0)
#: one step, for the input-handling tests
QUICK = AdaptConfig(strategy="lora", rank=2, steps=1, batch_size=4, val_every=1, checkpoint_every=1, seed=0)
ADAPTER_FILES = ("adapter_config.json", "adapter_model.safetensors", TARGET_FILE, "run.json")
TEXT = "A short test sentence."


def _config(**changes) -> AdaptConfig:
    return AdaptConfig(**{**CONFIG.to_dict(), **changes})


def _tensors(out: Path) -> dict[str, torch.Tensor]:
    return load_file(str(out / "adapter_model.safetensors"))


def _card(out: Path) -> dict:
    return json.loads((out / "run.json").read_text())


def _d_vector(out: Path) -> torch.Tensor:
    with safe_open(str(out / TARGET_FILE), "pt") as fh:
        return fh.get_tensor("d_vector")


def _same_mel(a: torch.Tensor, b: torch.Tensor) -> bool:
    return a.shape == b.shape and torch.equal(a, b)


def _close_mel(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Equal up to float rounding (peft's wrappers, even at ΔW = 0, round differently from the
    bare model by ~1e-5)."""
    return a.shape == b.shape and torch.allclose(a, b, rtol=0.0, atol=1e-4)


# --------------------------------------------------------------------------- shared fixtures
@pytest.fixture(scope="module")
def base_model(tiny_model) -> Path:
    """A tiny FastPitch, pretrained for 2 steps on the tiny corpus (conftest's)."""
    return tiny_model


@pytest.fixture(scope="module")
def target_dir(tiny_target_clips) -> Path:
    """The target speaker's 12 clips (shared: tests must not modify it)."""
    return tiny_target_clips


@pytest.fixture
def own_target_dir(tiny_target_clips, tmp_path) -> Path:
    """A private copy of the 12 clips, for tests that alter the folder."""
    return Path(shutil.copytree(tiny_target_clips, tmp_path / "clips"))


@pytest.fixture(scope="module")
def curvature_file(base_model, tiny_corpus, feature_cache, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("adapt-curvature") / "kfac.safetensors"
    fit_curvature_file(base_model, tiny_corpus, out, num_utterances=16, workers=1, cache_dir=feature_cache,
                       progress=False)
    return out


@pytest.fixture(scope="module")
def runs(base_model, target_dir, curvature_file, feature_cache, tmp_path_factory):
    """Finished adaptation runs by name, each trained once on first use (tests only read them)."""
    root = tmp_path_factory.mktemp("adapt-runs")
    settings = {
        "lora": _config(strategy="lora"),
        "kfac0": _config(strategy="kfac", lam=0.0),
        "kfac_huge": _config(strategy="kfac", lam=1e6),
    }
    done: dict[str, Path] = {}

    def get(name: str) -> Path:
        if name not in done:
            out = root / name
            card = adapt(target_dir, out, base_model, settings[name], curvature=curvature_file,
                         cache_dir=feature_cache, progress=False)
            assert card["steps"] == 4 and card["stopped"] == "steps", card
            done[name] = out
        return done[name]

    return get


# --------------------------------------------------------------------------- LoRA on attention
def test_lora_attention_applies_each_update_once_and_leaves_the_base_weights_alone():
    """peft 0.21's own MultiheadAttention forward adds out_proj's update twice and lets the base weights
    drift with every call (huggingface/peft#3774); wrap_with_lora installs an exact forward."""
    from torch import nn

    class Attention(nn.Module):
        def __init__(self):
            super().__init__()
            self.att = nn.MultiheadAttention(8, 2, batch_first=True)

        def forward(self, x):
            return self.att(x, x, x, need_weights=False)[0]

    torch.manual_seed(0)
    model, x = Attention(), torch.randn(2, 5, 8)
    base = {k: v.detach().clone() for k, v in model.att.state_dict().items()}
    peft_model = wrap_with_lora(model, ["att"], rank=2, alpha=4.0)
    with torch.no_grad():
        for n, p in peft_model.named_parameters():
            if "lora_B" in n:  # (zero at initialisation)
                p.normal_()
    deltas = {f.name: f.delta().detach() for f in lora_factors(peft_model)}
    assert set(deltas) == {"att.in_proj", "att.out_proj"}
    y = peft_model(x)
    reference = Attention()
    reference.att.load_state_dict({**base, "in_proj_weight": base["in_proj_weight"] + deltas["att.in_proj"],
                                   "out_proj.weight": base["out_proj.weight"] + deltas["att.out_proj"]})
    assert torch.allclose(y, reference(x), rtol=0.0, atol=1e-6), (y - reference(x)).abs().max()
    y.sum().backward()
    assert all(p.grad is not None for n, p in peft_model.named_parameters() if "lora_" in n)
    for _ in range(5):
        peft_model(x)
    layer = peft_model.base_model.model.att.base_layer
    assert torch.equal(layer.in_proj_weight, base["in_proj_weight"])
    assert torch.equal(layer.out_proj.base_layer.weight, base["out_proj.weight"])
    assert isinstance(layer.in_proj_weight, nn.Parameter) and not layer.in_proj_weight.requires_grad


# --------------------------------------------------------------------------- 1. λ = 0 is plain LoRA
@pytest.mark.slow
def test_kfac_at_lambda_zero_is_plain_lora(runs):
    lora, kfac = runs("lora"), runs("kfac0")
    for out in (lora, kfac):
        for name in ADAPTER_FILES:
            assert (out / name).is_file(), f"{out}: {name}"
        assert not (out / "checkpoint").exists(), "the checkpoint is removed at the end of a run"
    a, b = _tensors(lora), _tensors(kfac)
    assert a.keys() == b.keys() and a
    different = [k for k in a if not torch.equal(a[k], b[k])]
    assert not different, f"kfac with lam=0 differs from lora in {different[:5]}"
    # and training did move the adapter: LoRA-B starts at zero
    assert any(k.endswith("lora_B.weight") and a[k].abs().sum() > 0 for k in a)
    card = _card(kfac)
    assert [r["step"] for r in card["curve"]] == [1, 2, 3, 4]
    assert all(r["penalty"] == 0.0 for r in card["curve"])
    assert [r["step"] for r in card["curve"] if "val_loss" in r] == [2, 4]
    assert card["train_clips"] == 10 and card["val_clips"] == 2


# --------------------------------------------------------------------------- 2. save -> load
def _rebuilt_in_memory(base_model: Path, out: Path):
    """The adapted model rebuilt by hand: wrap_with_lora with the run's settings, then the saved LoRA
    tensors copied in by name (no peft loading code involved)."""
    backend = TTSBackend.from_pretrained(base_model)
    add_target_speaker(backend, _d_vector(out))
    card = _card(out)
    peft_model = wrap_with_lora(backend.model, card["targets"], card["config"]["rank"], card["config"]["alpha"],
                                seed=12345)  # another LoRA-A init: every value must come from the file
    named = {n: p for n, p in peft_model.named_parameters() if "lora_" in n}
    by_saved_name = {n.replace(".default.", "."): n for n in named}
    saved = _tensors(out)
    assert set(saved) == set(by_saved_name), "the file holds exactly the LoRA weights of the run's targets"
    with torch.no_grad():
        for k, v in saved.items():
            named[by_saved_name[k]].copy_(v)
    backend.model.eval()
    return backend, peft_model


@pytest.mark.slow
def test_saved_adapter_loads_back_to_the_same_voice(runs, base_model):
    from peft import PeftModel

    from tts_adapt.models.synthesis import Synthesizer

    out = runs("lora")
    synth = Synthesizer(adapted_model(out, base_model))
    names = synth.backend.speakers.names
    assert names[-1] == "target"
    old = names[0]
    loaded_target = synth.backend.synthesize_mel(TEXT, speaker="target")
    loaded_old = synth.backend.synthesize_mel(TEXT, speaker=old)

    rebuilt, peft_model = _rebuilt_in_memory(base_model, out)
    assert _same_mel(rebuilt.synthesize_mel(TEXT, speaker="target"), loaded_target)
    assert _same_mel(rebuilt.synthesize_mel(TEXT, speaker=old), loaded_old)

    # the adapter changes the target's voice: the base model with the same d-vector but no LoRA differs
    base = TTSBackend.from_pretrained(base_model)
    base_old = base.synthesize_mel(TEXT, speaker=old)
    add_target_speaker(base, _d_vector(out))
    assert not _close_mel(base.synthesize_mel(TEXT, speaker="target"), loaded_target)
    # an old speaker's conditioning is untouched; its output changes (λ = 0), and only through LoRA
    table = synth.backend.speakers
    assert torch.equal(table.embeddings[:-1], TTSBackend.from_pretrained(base_model).speakers.embeddings)
    assert not _close_mel(loaded_old, base_old)
    with peft_model.disable_adapter():
        assert _close_mel(rebuilt.synthesize_mel(TEXT, speaker=old), base_old)

    # plain peft reads the folder, and every LoRA weight comes from the file
    plain = PeftModel.from_pretrained(TTSBackend.from_pretrained(base_model).model, str(out))
    saved = _tensors(out)
    lora = {n.replace(".default.", "."): p for n, p in plain.named_parameters() if "lora_" in n}
    assert lora.keys() == saved.keys()
    assert all(torch.equal(lora[k], saved[k]) for k in saved)
    config = json.loads((out / "adapter_config.json").read_text())
    assert config["peft_type"] == "LORA" and config["r"] == CONFIG.rank


# --------------------------------------------------------------------------- 3. resume
@pytest.fixture(scope="module")
def interrupted_checkpoint(base_model, target_dir, curvature_file, feature_cache, tmp_path_factory):
    """An adapt run stopped after 2 of 4 steps; returns (out, a pristine copy of its checkpoint)."""
    root = tmp_path_factory.mktemp("adapt-resume")
    out = root / "b"
    result = adapt(target_dir, out, base_model, _config(strategy="kfac", lam=1e6), curvature=curvature_file,
                   cache_dir=feature_cache, progress=False, stop_after=2)
    assert result == {"status": "interrupted", "step": 2}
    assert (out / "checkpoint" / STATE_FILE).is_file()
    assert not (out / "adapter_config.json").exists()
    copy = root / "checkpoint-copy"
    shutil.copytree(out / "checkpoint", copy)
    return out, copy


@pytest.mark.slow
def test_resume_equals_uninterrupted(runs, interrupted_checkpoint, base_model, target_dir, curvature_file,
                                     feature_cache):
    a = runs("kfac_huge")
    out, _ = interrupted_checkpoint
    state = torch.load(out / "checkpoint" / STATE_FILE, weights_only=True)
    assert state["step"] == 2
    # a kill -9 while writing the next checkpoint leaves a stray temporary file next to the last good one
    (out / "checkpoint" / f".{STATE_FILE}.k9x2b7.tmp").write_bytes(b"\x80\x02 half a pickle")
    card = adapt(target_dir, out, base_model, _config(strategy="kfac", lam=1e6), curvature=curvature_file,
                 resume=True, cache_dir=feature_cache, progress=False)
    assert card["steps"] == 4 and card["stopped"] == "steps"
    assert not (out / "checkpoint" / STATE_FILE).exists()

    # the saved adapter is the best validation's (restored from the checkpoint if that was step 2) ...
    ta, tb = _tensors(a), _tensors(out)
    assert ta.keys() == tb.keys()
    different = [k for k in ta if not torch.equal(ta[k], tb[k])]
    assert not different, f"the resumed adapter differs from the uninterrupted one in {different[:5]}"
    # ... and the curves pin the steps after the interruption bit for bit: the losses and penalties of
    # steps 3 and 4 and the validation loss of the final weights
    card_a, card_b = _card(a), _card(out)
    assert [r["step"] for r in card_b["curve"]] == [1, 2, 3, 4] and "val_loss" in card_b["curve"][-1]
    assert card_b["curve"] == card_a["curve"]
    assert card_b["best_val_loss"] == card_a["best_val_loss"]
    assert torch.equal(_d_vector(a), _d_vector(out))


# --------------------------------------------------------------------------- 4. the penalty's effect
def _kfac_penalty(base_model: Path, out: Path, curvature: Curvature) -> float:
    """Σ_layers vec(ΔW)ᵀ (A ⊗ G) vec(ΔW) of a saved adapter."""
    backend = load_adapter(TTSBackend.from_pretrained(base_model), out)
    factors = lora_factors(backend.model)
    assert sorted(f.name for f in factors) == sorted(curvature.layer_names)
    with torch.no_grad():
        return float(get_strategy("kfac")(curvature)(factors))


@pytest.mark.slow
def test_a_huge_lambda_keeps_the_update_small_in_the_kfac_metric(runs, base_model, curvature_file):
    curvature = Curvature.load(curvature_file)
    free = _kfac_penalty(base_model, runs("kfac0"), curvature)
    held = _kfac_penalty(base_model, runs("kfac_huge"), curvature)
    assert free > 0
    assert held < free, (held, free)
    # the run card logs the penalty that was paid
    curve = _card(runs("kfac_huge"))["curve"]
    assert curve[0]["penalty"] == 0.0  # ΔW = 0 before the first step (LoRA-B starts at zero)
    assert all(r["penalty"] > 0 for r in curve[1:])


# --------------------------------------------------------------------------- 5. bad input
def _first_clips(clips: Path, folder: Path, n: int) -> Path:
    """The first ``n`` clips (wav + txt) of ``clips`` copied into a new ``folder``."""
    folder.mkdir()
    for wav in sorted(clips.glob("*.wav"))[:n]:
        shutil.copy(wav, folder)
        shutil.copy(wav.with_suffix(".txt"), folder)
    return folder


def test_too_few_clips_is_an_error(tiny_target_clips, base_model, feature_cache, tmp_path):
    folder = _first_clips(tiny_target_clips, tmp_path / "five", 5)
    with pytest.raises(TargetDataError, match="at least 10"):
        adapt(folder, tmp_path / "out", base_model, QUICK, cache_dir=feature_cache, progress=False)
    assert not (tmp_path / "out").exists()


def test_min_clips_is_configurable_and_on_step_can_cancel(tiny_target_clips, base_model, feature_cache, tmp_path):
    folder = _first_clips(tiny_target_clips, tmp_path / "five", 5)
    calls = []

    def on_step(step, total, row):
        calls.append((step, total, row["step"]))
        return step < 2  # stop after the second of four steps

    card = adapt(folder, tmp_path / "out", base_model, _config(steps=4), min_clips=5, cache_dir=feature_cache,
                 progress=False, on_step=on_step)
    assert calls == [(1, 4, 1), (2, 4, 2)]
    assert card["stopped"] == "cancelled" and card["steps"] == 2 and card["train_clips"] == 3
    assert _card(tmp_path / "out")["stopped"] == "cancelled"


@pytest.mark.slow
def test_clip_without_transcript_is_left_out_and_reported(own_target_dir, base_model, feature_cache, tmp_path):
    victim = sorted(own_target_dir.glob("*.txt"))[3]
    victim.unlink()
    card = adapt(own_target_dir, tmp_path / "out", base_model, QUICK, cache_dir=feature_cache, progress=False)
    assert card["train_clips"] + card["val_clips"] == 11
    assert victim.with_suffix(".wav").name in card["input_report"]
    assert _card(tmp_path / "out")["input_report"] == card["input_report"]


@pytest.mark.slow
def test_clip_at_another_sample_rate_is_resampled_with_a_note(own_target_dir, base_model, feature_cache, tmp_path):
    from tts_adapt.data.audio import load_audio, save_audio

    assert TTSBackend.from_pretrained(base_model).audio.sample_rate != 22050
    clip = sorted(own_target_dir.glob("*.wav"))[5]
    wav, _ = load_audio(clip, 22050)
    save_audio(clip, wav, 22050)
    assert sf.info(str(clip)).samplerate == 22050
    card = adapt(own_target_dir, tmp_path / "out", base_model, QUICK, cache_dir=feature_cache, progress=False)
    assert card["train_clips"] + card["val_clips"] == 12
    report = _card(tmp_path / "out")["input_report"]
    assert "resampled" in report and clip.name in report, report


def test_clips_below_the_models_rate_or_truncated_are_refused_by_the_cli(own_target_dir, base_model, feature_cache,
                                                                        tmp_path, capsys):
    from tts_adapt.cli import main
    from tts_adapt.data.audio import load_audio, save_audio

    wavs = sorted(own_target_dir.glob("*.wav"))
    for clip in wavs[:2]:  # the demo refuses such uploads with the same words
        save_audio(clip, load_audio(clip, 8000)[0], 8000)
    cut = wavs[2].read_bytes()
    wavs[2].write_bytes(cut[:len(cut) // 2])  # header unchanged: it still says the full length
    out = tmp_path / "out"
    assert main(["adapt", "--target-dir", str(own_target_dir), "--out", str(out), "--model", str(base_model),
                 "--cache-dir", str(feature_cache), "--strategy", "lora", "--steps", "1", "-q"]) == 1
    err = capsys.readouterr().err
    assert "9 usable clip(s), at least 10 are needed" in err
    for clip in wavs[:2]:
        assert f"{clip}: recorded at 8000 Hz, far below the model's 16000 Hz" in err
    assert f"{wavs[2]}: truncated: its header says" in err
    assert not out.exists()


def test_curvature_strategy_without_curvature_file_is_an_error(target_dir, base_model, feature_cache, tmp_path):
    with pytest.raises(ValueError, match="--curvature"):
        adapt(target_dir, tmp_path / "out", base_model, _config(strategy="kfac", lam=1.0), cache_dir=feature_cache,
              progress=False)
    assert not (tmp_path / "out").exists()


@pytest.mark.slow
def test_curvature_of_another_model_is_refused(target_dir, base_model, curvature_file, feature_cache, tmp_path):
    other = TTSBackend.from_pretrained(base_model)
    target = Curvature.load(curvature_file).targets[0]
    with torch.no_grad():
        next(dict(other.model.named_modules())[target].parameters()).add_(1e-3)
    other.save_pretrained(tmp_path / "other-model")
    with pytest.raises(CurvatureMismatchError, match="different weights"):
        adapt(target_dir, tmp_path / "out", tmp_path / "other-model", _config(strategy="kfac", lam=1.0),
              curvature=curvature_file, cache_dir=feature_cache, progress=False)
    assert not (tmp_path / "out").exists()


@pytest.mark.slow
def test_existing_adapter_is_not_overwritten_without_resume(runs, base_model, target_dir, feature_cache):
    out = runs("lora")
    before = {p.name: p.stat().st_mtime_ns for p in out.iterdir()}
    with pytest.raises(FileExistsError, match="already holds an adapter"):
        adapt(target_dir, out, base_model, CONFIG, cache_dir=feature_cache, progress=False)
    assert {p.name: p.stat().st_mtime_ns for p in out.iterdir()} == before


@pytest.mark.slow
def test_resume_with_other_settings_is_refused(interrupted_checkpoint, base_model, target_dir, curvature_file,
                                               feature_cache, tmp_path):
    _, checkpoint = interrupted_checkpoint
    out = tmp_path / "out"
    shutil.copytree(checkpoint, out / "checkpoint")
    before = (out / "checkpoint" / STATE_FILE).read_bytes()
    with pytest.raises(ValueError, match="other settings"):
        adapt(target_dir, out, base_model, _config(strategy="kfac", lam=1e6, lr=1e-3), curvature=curvature_file,
              resume=True, cache_dir=feature_cache, progress=False)
    assert (out / "checkpoint" / STATE_FILE).read_bytes() == before
    with pytest.raises(FileNotFoundError, match="nothing to resume"):
        adapt(target_dir, tmp_path / "empty", base_model, CONFIG, resume=True, cache_dir=feature_cache,
              progress=False)


@pytest.mark.slow
def test_resume_on_other_clips_is_refused_naming_them(interrupted_checkpoint, base_model, own_target_dir,
                                                      curvature_file, feature_cache, tmp_path):
    _, checkpoint = interrupted_checkpoint
    out = tmp_path / "out"
    shutil.copytree(checkpoint, out / "checkpoint")
    before = (out / "checkpoint" / STATE_FILE).read_bytes()
    first = sorted(own_target_dir.glob("*.wav"))[0]
    (first.with_suffix(".txt")).write_text("Quite another sentence.\n", encoding="utf-8")
    with pytest.raises(ValueError, match="another target clips"):
        adapt(own_target_dir, out, base_model, _config(strategy="kfac", lam=1e6), curvature=curvature_file,
              resume=True, cache_dir=feature_cache, progress=False)
    assert (out / "checkpoint" / STATE_FILE).read_bytes() == before


@pytest.mark.slow
def test_curvature_of_another_method_is_refused_before_any_work(target_dir, base_model, tiny_corpus, feature_cache,
                                                                tmp_path):
    diag = tmp_path / "diag.safetensors"
    fit_curvature_file(base_model, tiny_corpus, diag, method="diag", num_utterances=4, workers=1,
                       cache_dir=feature_cache, progress=False)
    with pytest.raises(ValueError, match=r"diag\.safetensors: a diag curvature file; strategy 'kfac' needs a kfac"):
        adapt(target_dir, tmp_path / "out", base_model, _config(strategy="kfac", lam=1.0), curvature=diag,
              progress=False)
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("changes, message", [
    ({"lr": float("nan")}, "lr must be a finite number"), ({"lam": float("inf")}, "lam must be a finite number"),
    ({"lr": 1e9}, "lr must be <= 1"), ({"alpha": 0.0}, "alpha must be > 0"), ({"damping": -1.0}, "damping must be"),
    ({"lam": -1.0}, "lam must be >= 0"), ({"rank": 0}, "rank must be >= 1")])
def test_numeric_settings_are_checked_when_made(changes, message):
    with pytest.raises(ValueError, match=message):
        _config(**changes)


def test_an_unset_lambda_is_the_strategys_documented_default():
    assert AdaptConfig(strategy="kfac").lam == get_strategy("kfac").default_lam == 30000.0
    from tts_adapt.quickstart import QUICKSTART_LAM

    assert QUICKSTART_LAM == get_strategy("kfac").default_lam  # the quickstart runs the documented default
    assert AdaptConfig(strategy="l2").lam == 10.0 and AdaptConfig(strategy="lora").lam == 0.0


@pytest.fixture
def diverging_strategy():
    """A strategy whose loss becomes NaN from step ``start`` on: a run that diverges there."""
    from tts_adapt.adapt.strategies import STRATEGIES, Strategy, register_strategy
    from tts_adapt.models.trainer import LossTerm

    class Diverging(Strategy):
        name = "diverging_test"
        start = 0

        def loss_terms(self, trainer, batch):
            bad = float("nan") if trainer.step >= self.start else 0.0
            return [LossTerm("nan", torch.tensor(bad), 1.0)]

    register_strategy(Diverging)
    yield Diverging
    STRATEGIES.pop(Diverging.name)


@pytest.mark.slow
def test_a_run_that_diverges_before_any_validation_saves_nothing(diverging_strategy, target_dir, base_model,
                                                                 feature_cache, tmp_path):
    from tts_adapt.adapt.train import DivergedError

    out = tmp_path / "out"
    with pytest.raises(DivergedError, match="non-finite loss at step 0.*so nothing was saved; lower --lr"):
        adapt(target_dir, out, base_model, _config(strategy="diverging_test"), cache_dir=feature_cache,
              progress=False)
    assert not out.exists()


@pytest.mark.slow
def test_a_run_that_diverges_after_a_validation_keeps_the_best_adapter(diverging_strategy, target_dir, base_model,
                                                                       feature_cache, tmp_path, caplog):
    diverging_strategy.start = 3  # validations at step 2 (finite), then NaN from step 3 on
    out = tmp_path / "out"
    run = adapt(target_dir, out, base_model, _config(strategy="diverging_test", steps=8), cache_dir=feature_cache,
                progress=False)
    assert run["stopped"] == "non-finite loss" and run["steps"] == 3 and run["best_step"] == 2
    assert "the adapter saved is the best validation's (step 2" in caplog.text
    json.loads((out / "run.json").read_text(), parse_constant=lambda c: pytest.fail(f"{c} in run.json"))
    assert not (out / "checkpoint").exists()


@pytest.mark.slow
def test_an_adapter_is_refused_on_another_base_model_and_unreadable_files_are_named(runs, base_model, tmp_path):
    from tts_adapt.adapt.adapter import AdapterFolderError, AdapterMismatchError

    out = runs("lora")
    other = TTSBackend.from_pretrained(base_model)
    with torch.no_grad():
        next(other.model.parameters()).add_(1e-3)
    with pytest.raises(AdapterMismatchError, match="trained on another base model"):
        load_adapter(other, out)
    broken = Path(shutil.copytree(out, tmp_path / "broken"))
    data = (broken / "adapter_model.safetensors").read_bytes()
    (broken / "adapter_model.safetensors").write_bytes(data[:len(data) // 2])
    with pytest.raises(AdapterFolderError, match="broken: an adapter file is unreadable"):
        adapted_model(broken, base_model)


# --------------------------------------------------------------------------- 6. the command line
@pytest.mark.slow
def test_synthesize_command_with_an_adapter(runs, base_model, tmp_path, capsys):
    from tts_adapt.cli import main

    out = runs("lora")
    old = TTSBackend.from_pretrained(base_model).speakers.names[0]
    common = ["synthesize", "--model", str(base_model), "--adapter", str(out), "--text", TEXT]
    assert main(common + ["--out", str(tmp_path / "default.wav")]) == 0
    assert main(common + ["--speaker", "target", "--out", str(tmp_path / "target.wav")]) == 0
    assert main(common + ["--speaker", old, "--out", str(tmp_path / "old.wav")]) == 0
    assert main(common + ["--vocoder", "world", "--out", str(tmp_path / "world.wav")]) == 0
    waves = {}
    for name in ("default", "target", "old", "world"):
        wav, sr = sf.read(str(tmp_path / f"{name}.wav"))
        assert sr == TTSBackend.from_pretrained(base_model).audio.sample_rate and len(wav) > 0, name
        waves[name] = wav
    assert len(waves["default"]) == len(waves["target"])  # the adapter's voice is the default
    assert abs(len(waves["world"]) - len(waves["default"])) <= 512  # the same mel, another vocoder
    assert main(["synthesize", "--model", str(base_model), "--adapter", str(out), "--list-speakers"]) == 0
    listed = capsys.readouterr().out
    assert "target" in listed and old in listed


@pytest.mark.slow
def test_a_full_disk_at_save_names_the_folder_and_leaves_nothing(target_dir, base_model, feature_cache, tmp_path,
                                                                 monkeypatch):
    import errno

    from peft import PeftModel

    def no_space(self, path, **kwargs):
        Path(path).mkdir(parents=True, exist_ok=True)
        (Path(path) / "adapter_model.safetensors").write_bytes(b"half")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(PeftModel, "save_pretrained", no_space)
    out = tmp_path / "out"
    with pytest.raises(OSError, match=r"out: could not write the adapter \(No space left on device\)"):
        adapt(target_dir, out, base_model, QUICK, cache_dir=feature_cache, progress=False)
    assert not out.exists()


def test_a_run_is_the_same_run_whatever_other_strategies_options_say():
    kfac = AdaptConfig(strategy="kfac", lam=1000.0, seed=1)
    recorded = {**kfac.to_dict(), "replay_batch": 7, "gate_l1": 0.5}  # options of ilora and selective
    assert kfac.same_run(recorded) and kfac.same_run(kfac.to_dict())
    assert not kfac.same_run({**kfac.to_dict(), "lam": 2000.0}) and not kfac.same_run(None)
    ilora = AdaptConfig(strategy="ilora", seed=1)
    assert not ilora.same_run({**ilora.to_dict(), "replay_batch": ilora.replay_batch + 1})  # its own option
    assert "replay_batch" in ilora.run_settings() and "replay_batch" not in kfac.run_settings()
    # a record written before a setting existed counts it at its default
    older = {k: v for k, v in kfac.to_dict().items() if k != "damping"}
    assert kfac.same_run(older) and not AdaptConfig(strategy="kfac", lam=1000.0, seed=1, damping=0.1).same_run(older)
