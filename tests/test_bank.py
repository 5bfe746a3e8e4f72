"""The adapter bank: add / list / remove, atomic adds, isolation (a new voice leaves the others bit-identical),
and merging voices by task arithmetic: ``cat`` is exactly base + Σ w_i ΔW_i in Linear, attention and Conv1d
(kernel 3 and 1) layers, the other combinations are refused with the reason (or run, warned, when allowed),
the SVD ones are refused on Conv1d layers, and a merged adapter synthesizes like any adapter.

The voices are LoRA adapters of a tiny random FastPitch with random factors (a trained adapter's files, without
the training), in both speaker setups (d-vector and speaker-ID table).
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import soundfile as sf
import torch
from safetensors import safe_open
from safetensors.torch import load_file
from torch import nn

from tts_adapt.adapt.adapter import TARGET_FILE, Adapter, add_target_speaker, save_adapter
from tts_adapt.adapt.bank import (
    EXACT_TOLERANCE_EPS,
    SEPARATE_FACTOR_COMBINATIONS,
    AdapterBank,
    BankError,
    parse_weights,
)
from tts_adapt.adapt.lora import wrap_with_lora
from tts_adapt.cli import main
from tts_adapt.data.audio import AudioConfig
from tts_adapt.models.backends import get_backend
from tts_adapt.models.base import TTSBackend
from tts_adapt.models.features import FeatureStats
from tts_adapt.models.pretrain_config import PretrainConfig
from tts_adapt.models.speakers import SpeakerTable

TEXT = "A short test sentence."
CONDITIONINGS = ("d_vector", "id_table")
#: for tests where the speaker setup makes no difference
D_VECTOR_ONLY = pytest.mark.parametrize("conditioning", ["d_vector"], indirect=True)
#: float32 rounding, relative to the largest entry of an update (the exactness that ``cat`` promises)
TOLERANCE = EXACT_TOLERANCE_EPS * torch.finfo(torch.float32).eps


# --------------------------------------------------------------------------- tiny models and voices
def make_base(folder: Path, conditioning: str, seed: int = 0) -> Path:
    """A tiny random FastPitch saved in ``folder`` (speakers alice, bob, carol)."""
    torch.manual_seed(seed)
    names = ["alice", "bob", "carol"]
    table = (SpeakerTable("d_vector", names, nn.functional.normalize(torch.randn(3, 256), dim=1))
             if conditioning == "d_vector" else SpeakerTable("id_table", names))
    n_mels = PretrainConfig.n_mels
    stats = FeatureStats(torch.full((n_mels,), -4.0), torch.full((n_mels,), 2.0), 150.0, 30.0)
    backend = get_backend("fastpitch").create(AudioConfig(n_mels=n_mels), stats, table, size="tiny")
    with torch.no_grad():
        for p in backend.model.parameters():
            p.add_(0.02 * torch.randn_like(p))
    backend.save_pretrained(folder)
    return folder


def make_voice(base: Path, out: Path, seed: int, rank: int = 2, alpha: float = 4.0,
               targets: list[str] | None = None) -> Path:
    """An adapter of ``base`` as ``tts-adapt adapt`` saves it, with seeded random LoRA factors, d-vector or
    speaker row (so every voice has its own update and conditioning)."""
    backend = TTSBackend.from_pretrained(base)
    fingerprint = backend.fingerprint()
    g = torch.Generator().manual_seed(seed)
    d_vector = (nn.functional.normalize(torch.randn(backend.speakers.dim, generator=g), dim=0)
                if backend.speakers.kind == "d_vector" else None)
    rows = add_target_speaker(backend, d_vector)
    targets = targets or backend.lora_targets()
    peft_model = wrap_with_lora(backend.model, targets, rank=rank, alpha=alpha, seed=seed, trainable_tokens=rows)
    with torch.no_grad():
        for name, p in peft_model.named_parameters():
            if "lora_" in name or "trainable_tokens_delta" in name:
                p.copy_(0.1 * torch.randn(p.shape, generator=g))
    card = {"base_model": str(base), "config": {"strategy": "lora", "lam": 0.0, "rank": rank}, "steps": 0}
    save_adapter(out, peft_model, d_vector, card, base_fingerprint=fingerprint, targets=targets)
    return out


@pytest.fixture(scope="module", params=CONDITIONINGS)
def conditioning(request) -> str:
    return request.param


@pytest.fixture(scope="module")
def base(conditioning, tmp_path_factory) -> Path:
    return make_base(tmp_path_factory.mktemp(f"base-{conditioning}") / "model", conditioning)


@pytest.fixture(scope="module")
def voices(base, tmp_path_factory) -> list[Path]:
    """Three adapters of ``base`` (read only; the third has another rank)."""
    root = tmp_path_factory.mktemp("voices")
    return [make_voice(base, root / f"v{i}", seed=i + 1, rank=2 if i < 2 else 3) for i in range(3)]


@pytest.fixture(scope="module")
def foreign_voice(conditioning, tmp_path_factory) -> Path:
    """An adapter of another base model (same architecture, other weights)."""
    root = tmp_path_factory.mktemp("foreign")
    return make_voice(make_base(root / "model", conditioning, seed=7), root / "voice", seed=9)


def file_digests(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def speak(base: Path, adapter_dir: Path) -> torch.Tensor:
    """The mel of TEXT in the adapter's voice, on a freshly loaded base model."""
    backend = Adapter.load(adapter_dir).apply(TTSBackend.from_pretrained(base))
    return backend.synthesize_mel(TEXT, speaker="target")


def hidden(root: Path) -> list[str]:
    return [p.name for p in root.iterdir() if p.name.startswith(".")] if root.is_dir() else []


def updates(adapter_dir: Path) -> dict[str, torch.Tensor]:
    """Each adapted linear map's ΔW = s · B A ``(out, in · kernel)`` in float64, from the adapter's own files
    (not through peft), by the name of its LoRA-A weight's module."""
    config = json.loads((adapter_dir / "adapter_config.json").read_text())
    assert not config.get("rank_pattern") and not config.get("alpha_pattern") and not config.get("use_rslora")
    scale = config["lora_alpha"] / config["r"]
    tensors = load_file(str(adapter_dir / "adapter_model.safetensors"))
    out = {}
    for key, a in tensors.items():
        if key.endswith(".lora_A.weight"):
            name = key.removesuffix(".lora_A.weight")
            b = tensors[f"{name}.lora_B.weight"]
            out[name] = scale * b.double().reshape(b.shape[0], -1) @ a.double().reshape(a.shape[0], -1)
    return out


def layer_kind(model: nn.Module, name: str) -> str:
    """Linear, Conv1d(k=3), Conv1d(k=1) or MultiheadAttention (its in_proj) for a LoRA module name."""
    path = name.removeprefix("base_model.model.").replace(".base_layer.", ".")
    module = dict(model.named_modules())[path]
    if isinstance(module, nn.Conv1d):
        return f"Conv1d(k={module.kernel_size[0]})"
    return "Linear" if isinstance(module, nn.Linear) else type(module).__name__


def relative_deviation(got: torch.Tensor, want: torch.Tensor) -> float:
    return float((got - want).abs().max() / want.abs().max())


# --------------------------------------------------------------------------- add / list / remove
def test_add_list_remove_round_trip(base, voices, tmp_path, conditioning):
    bank = AdapterBank(tmp_path / "bank")
    alice = bank.add("alice", voices[0])
    bank.add("bob", voices[1])
    assert bank.names() == ["alice", "bob"] and alice.path == bank.root / "alice"
    assert file_digests(bank.root / "alice") == file_digests(voices[0])  # a byte-for-byte copy
    entries = {e.name: e for e in bank.entries()}
    assert entries["alice"].strategy == "lora" and entries["alice"].lam == 0.0 and entries["alice"].rank == 2
    assert entries["alice"].base_model == str(base) and entries["alice"].conditioning == conditioning
    assert entries["alice"].base_fingerprint == TTSBackend.from_pretrained(base).fingerprint()
    assert entries["alice"].size_bytes == sum(p.stat().st_size for p in voices[0].rglob("*") if p.is_file())
    assert bank.remove("alice") == bank.root / "alice"
    assert bank.names() == ["bob"] and not (bank.root / "alice").exists() and not hidden(bank.root)
    assert file_digests(bank.root / "bob") == file_digests(voices[1])


@D_VECTOR_ONLY
def test_cli_bank_add_list_json_remove(base, voices, tmp_path, capsys, conditioning):
    bank = str(tmp_path / "bank")
    assert main(["bank", "add", "alice", str(voices[0]), "--bank", bank, "--model", str(base)]) == 0
    assert main(["bank", "add", "bob", str(voices[1]), "--bank", bank]) == 0
    capsys.readouterr()
    assert main(["bank", "list", "--bank", bank]) == 0
    table = capsys.readouterr().out.splitlines()
    assert table[0].split()[:4] == ["name", "strategy", "λ", "rank"]
    assert [line.split()[0] for line in table[1:]] == ["alice", "bob"] and str(base) in table[1]
    assert main(["bank", "list", "--bank", bank, "--json"]) == 0
    listed = json.loads(capsys.readouterr().out)
    assert [e["name"] for e in listed] == ["alice", "bob"] and listed[0]["size_bytes"] > 0
    assert main(["bank", "remove", "alice", "--bank", bank]) == 0
    assert "removed alice" in capsys.readouterr().out and AdapterBank(bank).names() == ["bob"]
    assert main(["bank", "remove", "alice", "--bank", bank]) == 1
    err = capsys.readouterr().err
    assert "'alice' is not an adapter" in err and "bob" in err and "Traceback" not in err


def test_bank_help_does_not_import_torch():
    code = ("import sys\nfrom tts_adapt.cli import main\n"
            "for argv in (['--help'], ['bank', '--help'], ['bank', 'merge', '--help'], ['bank', 'list', '--help']):\n"
            "    try:\n        main(argv)\n    except SystemExit:\n        pass\n"
            "print('torch imported' if 'torch' in sys.modules else 'torch not imported', file=sys.stderr)")
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert "merge" in run.stdout and run.stderr.strip().endswith("torch not imported")


# --------------------------------------------------------------------------- atomicity and refusals
def test_a_failed_add_leaves_nothing(voices, tmp_path, monkeypatch, conditioning):
    bank = AdapterBank(tmp_path / "bank")
    bank.add("alice", voices[0])
    before = file_digests(bank.root)
    copied, copy2 = [], shutil.copy2

    def copy_then_fail(src, dst, *args, **kwargs):  # the disk fills after the first file
        if copied:
            raise OSError(28, "No space left on device")
        copied.append(dst)
        return copy2(src, dst, *args, **kwargs)

    monkeypatch.setattr(shutil, "copy2", copy_then_fail)
    with pytest.raises(OSError, match="No space left"):
        bank.add("bob", voices[1])
    monkeypatch.undo()
    assert copied  # the copy had begun
    assert bank.names() == ["alice"] and not (bank.root / "bob").exists() and not hidden(bank.root)
    assert file_digests(bank.root) == before


def test_bad_adds_are_refused_naming_the_file_and_leave_nothing(voices, foreign_voice, tmp_path, conditioning):
    bank = AdapterBank(tmp_path / "bank")
    bank.add("alice", voices[0])
    before = file_digests(bank.root)
    with pytest.raises(BankError, match="'alice' already exists"):
        bank.add("alice", voices[1])
    with pytest.raises(BankError, match="cannot name an adapter"):
        bank.add("../escape", voices[1])
    with pytest.raises(BankError, match="no such adapter folder"):
        bank.add("ghost", tmp_path / "nowhere")
    partial = Path(shutil.copytree(voices[1], tmp_path / "partial"))
    (partial / TARGET_FILE).unlink()
    with pytest.raises(BankError, match=f"{partial}: missing {TARGET_FILE}"):
        bank.add("partial", partial)
    broken = Path(shutil.copytree(voices[1], tmp_path / "broken"))
    (broken / "adapter_config.json").write_text("{ not json")
    with pytest.raises(BankError, match=f"{broken / 'adapter_config.json'}: unreadable"):
        bank.add("broken", broken)
    with pytest.raises(BankError, match=f"{foreign_voice / TARGET_FILE}: the adapter was trained on another base"):
        bank.add("foreign", foreign_voice)
    assert file_digests(bank.root) == before and not hidden(bank.root)


@D_VECTOR_ONLY
def test_an_adapter_of_another_model_is_refused_by_an_empty_bank_given_the_model(base, foreign_voice, tmp_path,
                                                                                conditioning):
    bank = str(tmp_path / "bank")
    assert main(["bank", "add", "foreign", str(foreign_voice), "--bank", bank, "--model", str(base)]) == 1
    assert not AdapterBank(bank).names()
    with pytest.raises(BankError, match=f"another base model .* than {base}"):
        AdapterBank(bank).add("foreign", foreign_voice, model=base)


def test_an_adapter_without_its_base_model_is_refused(voices, tmp_path, conditioning):
    old = Path(shutil.copytree(voices[0], tmp_path / "old"))
    with safe_open(str(old / TARGET_FILE), "pt") as fh:
        tensors, meta = {k: fh.get_tensor(k) for k in fh.keys()}, fh.metadata()
    from safetensors.torch import save_file

    save_file(tensors, str(old / TARGET_FILE), metadata={k: v for k, v in meta.items()
                                                         if k != "base_model_fingerprint"})
    with pytest.raises(BankError, match="does not record its base model"):
        AdapterBank(tmp_path / "bank").add("old", old)


# --------------------------------------------------------------------------- isolation
def test_adding_a_voice_leaves_the_other_voices_bit_identical(base, voices, tmp_path, conditioning):
    bank = AdapterBank(tmp_path / "bank")
    for name, voice in zip(("v1", "v2"), voices[:2]):
        bank.add(name, voice)
    files = {name: file_digests(bank.root / name) for name in ("v1", "v2")}
    speech = {name: speak(base, bank.root / name) for name in ("v1", "v2")}
    bank.add("v3", voices[2])
    assert bank.names() == ["v1", "v2", "v3"]
    for name in ("v1", "v2"):
        assert file_digests(bank.root / name) == files[name]
        again = speak(base, bank.root / name)
        assert again.shape == speech[name].shape and torch.equal(again, speech[name]), name
    new = speak(base, bank.root / "v3")  # the comparison can tell voices apart
    assert new.shape != speech["v1"].shape or not torch.equal(new, speech["v1"])
    bank.remove("v3")
    assert {name: file_digests(bank.root / name) for name in ("v1", "v2")} == files


# --------------------------------------------------------------------------- merging
@pytest.fixture(scope="module")
def merge_bank(voices, tmp_path_factory) -> AdapterBank:
    bank = AdapterBank(tmp_path_factory.mktemp("merge-bank") / "bank")
    for name, voice in zip(("alice", "bob", "carol"), voices):
        bank.add(name, voice)
    return bank


WEIGHTS = {"alice": 0.7, "bob": 0.5, "carol": -0.3}


@pytest.fixture(scope="module")
def merged(merge_bank, base, tmp_path_factory) -> Path:
    """alice, bob and carol (ranks 2, 2 and 3) merged with ``cat``."""
    out = tmp_path_factory.mktemp("merged") / "mix"
    record = merge_bank.merge(",".join(f"{n}={w}" for n, w in WEIGHTS.items()), out)
    assert record["merge"]["exact"] and record["merge"]["max_relative_deviation"] <= TOLERANCE
    assert record["config"]["rank"] == 7 and record["base_model"] == str(base)
    return out


def summed_updates(bank: AdapterBank) -> dict[str, torch.Tensor]:
    """Σ w_i ΔW_i over the voices of WEIGHTS, by layer, from their files."""
    want: dict[str, torch.Tensor] = {}
    for name, w in WEIGHTS.items():
        for layer, delta in updates(bank.get(name).path).items():
            want[layer] = want[layer] + w * delta if layer in want else w * delta
    return want


def test_cat_merge_is_the_weighted_sum_of_the_updates_in_every_layer_kind(merge_bank, merged, base):
    want = summed_updates(merge_bank)
    got = updates(merged)
    assert set(got) == set(want)
    model = TTSBackend.from_pretrained(base).model
    worst: dict[str, float] = {}
    for layer, delta in want.items():
        kind = layer_kind(model, layer)
        worst[kind] = max(worst.get(kind, 0.0), relative_deviation(got[layer], delta))
    assert set(worst) >= {"Linear", "Conv1d(k=3)", "Conv1d(k=1)", "MultiheadAttention"}, worst
    assert max(worst.values()) <= TOLERANCE, worst


def test_merged_model_weights_are_base_plus_the_weighted_sum(merge_bank, merged, base, conditioning):
    """The merged adapter folded into the model by peft's merge_and_unload: every Linear and Conv1d weight is
    the base weight + Σ w_i ΔW_i. Attention layers are left to the synthesis test below: peft 0.21 folds a
    MultiheadAttention's out_proj update in twice (huggingface/peft#3774)."""
    want = summed_updates(merge_bank)
    base_model = TTSBackend.from_pretrained(base).model
    base_weights = {n: m.weight.detach().double() for n, m in base_model.named_modules()
                    if isinstance(m, (nn.Linear, nn.Conv1d))}
    from peft import PeftModel

    backend = TTSBackend.from_pretrained(base)
    add_target_speaker(backend, Adapter.load(merged).d_vector)
    folded = PeftModel.from_pretrained(backend.model, str(merged)).merge_and_unload()
    attention = tuple(f"{n}." for n, m in base_model.named_modules() if isinstance(m, nn.MultiheadAttention))
    checked = {}
    for layer, delta in want.items():
        path = layer.removeprefix("base_model.model.").replace(".base_layer.", ".")
        module = dict(folded.named_modules())[path]
        if not isinstance(module, (nn.Linear, nn.Conv1d)) or path.startswith(attention):
            continue
        weight = module.weight.detach().double()
        expected = base_weights[path] + delta.reshape(weight.shape)
        checked[layer_kind(base_model, layer)] = max(checked.get(layer_kind(base_model, layer), 0.0),
                                                     relative_deviation(weight - base_weights[path],
                                                                        expected - base_weights[path]))
    # the d-vector model's speaker projection is its Linear layer outside attention
    assert {"Conv1d(k=3)", "Conv1d(k=1)"} | ({"Linear"} if conditioning == "d_vector" else set()) <= set(checked)
    assert max(checked.values()) <= TOLERANCE, checked


def test_merged_conditioning_is_the_weighted_mean_of_the_voices(merge_bank, merged, conditioning):
    total = sum(WEIGHTS.values())
    adapter = Adapter.load(merged)
    if conditioning == "d_vector":
        vectors = [merge_bank.get(n).d_vector for n in WEIGHTS]
        mean = sum(w / total * v for w, v in zip(WEIGHTS.values(), vectors))
        want = mean * (sum(float(v.norm()) for v in vectors) / len(vectors)) / mean.norm()
        assert torch.allclose(adapter.d_vector, want, rtol=0, atol=TOLERANCE)
        return

    def row(folder: Path) -> torch.Tensor:
        return next(v for k, v in load_file(str(folder / "adapter_model.safetensors")).items()
                    if "trainable_tokens_delta" in k)

    want = sum(w / total * row(merge_bank.get(n).path) for n, w in WEIGHTS.items())
    assert adapter.speaker_rows == merge_bank.get("alice").speaker_rows
    assert torch.allclose(row(merged), want, rtol=0, atol=TOLERANCE)


def test_merged_adapter_speaks_the_summed_update(merged, merge_bank, base, tmp_path):
    """Synthesis with the merged adapter equals synthesis with the base weights moved by Σ w_i ΔW_i directly
    (no peft), in the merged voice's conditioning; and ``tts-adapt synthesize --adapter`` speaks it."""
    adapter = Adapter.load(merged)
    with_adapter = speak(base, merged)
    direct = TTSBackend.from_pretrained(base)
    modules = dict(direct.model.named_modules())
    want = summed_updates(merge_bank)
    with torch.no_grad():
        for layer, delta in want.items():
            path = layer.removeprefix("base_model.model.").replace(".base_layer.", ".")
            module = modules[path]
            weight = module.in_proj_weight if isinstance(module, nn.MultiheadAttention) else module.weight
            weight.add_(delta.reshape(weight.shape).to(weight.dtype))
    rows = add_target_speaker(direct, adapter.d_vector)
    if rows:  # the merged speaker row, from the adapter file
        row = next(v for k, v in load_file(str(merged / "adapter_model.safetensors")).items()
                   if "trainable_tokens_delta" in k)
        with torch.no_grad():
            for module_name, indices in rows.items():
                getattr(direct.model, module_name).weight[indices] = row
    plain = direct.synthesize_mel(TEXT, speaker="target")
    assert plain.shape == with_adapter.shape and torch.allclose(plain, with_adapter, rtol=0, atol=1e-4)
    alice = speak(base, merge_bank.get("alice").path)  # the comparison can tell voices apart
    assert alice.shape != plain.shape or not torch.allclose(alice, plain, rtol=0, atol=1e-4)
    wav = tmp_path / "mix.wav"
    assert main(["synthesize", "--adapter", str(merged), "--model", str(base), "--text", TEXT, "--out", str(wav),
                 "--device", "cpu"]) == 0
    audio, rate = sf.read(str(wav))
    assert rate == 16000 and len(audio) > 0


def test_a_merged_adapter_joins_the_bank_like_any_adapter(merge_bank, merged, tmp_path, conditioning):
    bank = AdapterBank(tmp_path / "bank")
    bank.add("alice", merge_bank.get("alice").path)
    bank.add("mix", merged)
    entry = {e.name: e for e in bank.entries()}["mix"]
    assert entry.strategy == "merge" and entry.merged_from == ("alice", "bob", "carol") and entry.rank == 7


@D_VECTOR_ONLY
def test_cat_merges_voices_that_adapt_different_layers_exactly(base, merge_bank, tmp_path, conditioning):
    """A voice that adapts some layers only (as the selective strategy saves it) adds nothing elsewhere."""
    everything = TTSBackend.from_pretrained(base).lora_targets()
    some = Path(make_voice(base, tmp_path / "some", seed=11, targets=everything[::2]))
    bank = AdapterBank(tmp_path / "bank")
    bank.add("all", merge_bank.get("alice").path)
    bank.add("some", some)
    record = bank.merge("all=0.6,some=0.8", tmp_path / "mix")
    assert record["merge"]["exact"] and sorted(record["targets"]) == sorted(everything)
    alone, partial, got = updates(bank.get("all").path), updates(some), updates(tmp_path / "mix")
    assert set(partial) < set(alone) == set(got)
    for layer, delta in alone.items():
        want = 0.6 * delta + (0.8 * partial[layer] if layer in partial else 0)
        assert relative_deviation(got[layer], want) <= TOLERANCE, layer


@pytest.mark.parametrize("combination", SEPARATE_FACTOR_COMBINATIONS)
@D_VECTOR_ONLY
def test_combinations_that_merge_a_and_b_separately_are_refused_with_the_reason(merge_bank, tmp_path, combination,
                                                                                conditioning):
    density = None if combination == "linear" else 0.5
    with pytest.raises(BankError, match="not the weighted sum.*A factors and the B factors separately"):
        merge_bank.merge("alice=0.5,bob=0.5", tmp_path / "out", combination=combination, density=density)
    assert not (tmp_path / "out").exists()


@D_VECTOR_ONLY
def test_linear_runs_when_allowed_with_a_warning_and_is_not_the_sum(merge_bank, tmp_path, caplog, conditioning):
    """What cat's exactness test would catch: peft's linear merge is far from Σ w_i ΔW_i."""
    out = tmp_path / "linear"
    with caplog.at_level(logging.WARNING, logger="tts_adapt.adapt.bank"):
        record = merge_bank.merge("alice=0.5,bob=0.5", out, combination="linear", allow_inexact=True)
    assert "not the weighted sum" in caplog.text and "cross terms" in caplog.text
    assert not record["merge"]["exact"] and record["merge"]["max_relative_deviation"] > 100 * TOLERANCE
    want = {k: 0.5 * a + 0.5 * updates(merge_bank.get("bob").path)[k]
            for k, a in updates(merge_bank.get("alice").path).items()}
    got = updates(out)
    assert max(relative_deviation(got[k], want[k]) for k in want) > 100 * TOLERANCE
    Adapter.load(out)  # still an adapter


@D_VECTOR_ONLY
def test_svd_combinations_fail_in_peft_on_conv1d_and_are_refused_with_the_reason(merge_bank, base, tmp_path,
                                                                                 conditioning):
    # what the refusal relies on: peft's own svd merge raises on these Conv1d layers
    from peft import PeftModel

    backend = TTSBackend.from_pretrained(base)
    add_target_speaker(backend, merge_bank.get("alice").d_vector)
    peft_model = PeftModel.from_pretrained(backend.model, str(merge_bank.get("alice").path), adapter_name="a")
    peft_model.load_adapter(str(merge_bank.get("bob").path), adapter_name="b")
    with pytest.raises(RuntimeError):
        peft_model.add_weighted_adapter(["a", "b"], [0.5, 0.5], "merged", combination_type="svd")
    for combination, density in (("svd", None), ("ties_svd", 0.5)):
        with pytest.raises(BankError, match="SVD combinations fail on Conv1d layers"):
            merge_bank.merge("alice=0.5,bob=0.5", tmp_path / "out", combination=combination, density=density,
                             allow_inexact=True)
    assert not (tmp_path / "out").exists()


def test_voices_whose_peft_config_lists_suffixes_merge_with_their_layers_named_in_full(merge_bank, merged, base,
                                                                                       tmp_path, conditioning):
    # peft saves a long target list (the shipped model's) as the layers' shortest distinct suffixes
    short = AdapterBank(tmp_path / "bank")
    for name in ("alice", "bob"):
        copy = tmp_path / name
        shutil.copytree(merge_bank.get(name).path, copy)
        config = json.loads((copy / "adapter_config.json").read_text())
        config["target_modules"] = sorted({t.rsplit(".", 1)[-1] for t in config["target_modules"]})
        (copy / "adapter_config.json").write_text(json.dumps(config))
        short.add(name, copy)
    with pytest.raises(BankError, match="SVD combinations fail on Conv1d layers"):
        short.merge("alice=0.5,bob=0.5", tmp_path / "svd", combination="svd", allow_inexact=True)
    record = short.merge("alice=0.5,bob=0.5", tmp_path / "mix")
    full = merge_bank.merge("alice=0.5,bob=0.5", tmp_path / "mix-full")
    assert record["targets"] == full["targets"] and set(record["targets"]) - set(config["target_modules"])


@D_VECTOR_ONLY
def test_bad_merge_requests_are_refused(merge_bank, merged, voices, foreign_voice, tmp_path, conditioning, capsys):
    out = tmp_path / "out"
    for weights, message in (("alice=0.5,nobody=0.5", "'nobody' is not an adapter"),
                             ("alice=0.5,bob", "'bob' is not NAME=WEIGHT"),
                             ("alice=half", "the weight 'half' is not a number"),
                             ("alice=0.5,alice=0.5", "alice given more than once"),
                             ("alice=0.5,bob=-0.5", "sum to 0"),
                             ("alice=nan", "finite")):
        with pytest.raises(BankError, match=message):
            merge_bank.merge(weights, out)
    with pytest.raises(BankError, match="unknown combination 'sum'; valid: cat"):
        merge_bank.merge("alice=1", out, combination="sum")
    with pytest.raises(BankError, match="needs a density"):
        merge_bank.merge("alice=0.5,bob=0.5", out, combination="ties", allow_inexact=True)
    with pytest.raises(BankError, match="prunes nothing"):
        merge_bank.merge("alice=0.5,bob=0.5", out, density=0.5)
    with pytest.raises(BankError, match="already exists"):
        merge_bank.merge("alice=0.5,bob=0.5", merged)
    with pytest.raises(BankError, match="different base models"):
        from tts_adapt.adapt.bank import merge_adapters

        merge_adapters([(Adapter.load(voices[0]), 0.5), (Adapter.load(foreign_voice), 0.5)], out)
    assert not out.exists()
    assert main(["bank", "merge", "alice=0.5,bob=0.5", "--bank", str(merge_bank.root), "--out", str(out),
                 "--combination", "linear"]) == 1
    err = capsys.readouterr().err
    assert "not the weighted sum" in err and "Traceback" not in err and not out.exists()


def test_cli_merge_writes_an_adapter_that_loads(merge_bank, tmp_path, capsys, conditioning):
    out = tmp_path / "half"
    assert main(["bank", "merge", "alice=0.5,bob=0.5", "--bank", str(merge_bank.root), "--out", str(out)]) == 0
    said = capsys.readouterr().out
    assert "exactly the weighted sum" in said and "0.5 · alice + 0.5 · bob" in said
    run = json.loads((out / "run.json").read_text())
    assert [v["name"] for v in run["merge"]["voices"]] == ["alice", "bob"] and run["merge"]["combination"] == "cat"
    assert not [p for p in out.parent.iterdir() if p.name.startswith(".")]  # no staging left
    assert Adapter.load(out).base_fingerprint == merge_bank.get("alice").base_fingerprint


def test_parse_weights():
    assert parse_weights("a=0.5, b=-1,c=2e-1") == [("a", 0.5), ("b", -1.0), ("c", 0.2)]
    with pytest.raises(BankError, match="not NAME=WEIGHT"):
        parse_weights("")
