"""The ilora strategy: the slow adapter's EMA, the reservoir replay, the consistency loss, the adapter it saves,
resuming, and the error without replay data."""

from __future__ import annotations

import contextlib

from types import SimpleNamespace

import pytest
import torch
from safetensors.torch import load_file

from tts_adapt.adapt.adapt_config import AdaptConfig
from tts_adapt.adapt.replay import ReplayPool, Reservoir, read_replay_pool
from tts_adapt.adapt.strategies.ilora import ILoRA, consistency_loss
from tts_adapt.adapt.train import adapt


def ilora_config(**kw) -> AdaptConfig:
    return AdaptConfig(**{"strategy": "ilora", "rank": 2, "steps": 4, "batch_size": 4, "val_every": 2,
                          "checkpoint_every": 1, "seed": 0, "replay_size": 8, "replay_batch": 2, "replay_pool": 16,
                          **kw})


def fake_pool(n: int) -> ReplayPool:
    return ReplayPool(features=list(range(n)), collate=None, pad_id=0, backend="fastpitch", data=None,
                      fingerprint="")


# --------------------------------------------------------------------------- units
def test_ema_update_matches_a_hand_computation():
    beta = 0.9
    strategy = ILoRA(config=ilora_config(ilora_beta=beta))
    strategy.use_replay(fake_pool(16))
    params = {"a": torch.nn.Parameter(torch.tensor([1.0, -2.0], dtype=torch.float64)),
              "b": torch.nn.Parameter(torch.tensor([[0.5]], dtype=torch.float64))}
    trainer = SimpleNamespace(params=params, validate=None, step=0)
    strategy.on_train_start(trainer)
    hand = {k: p.detach().tolist() for k, p in params.items()}
    fast_values = [{"a": [3.0, 4.0], "b": [[-1.0]]}, {"a": [0.0, 10.0], "b": [[2.0]]}, {"a": [7.0, 7.0], "b": [[0.0]]}]
    for step, fast in enumerate(fast_values):
        with torch.no_grad():
            for k, v in fast.items():
                params[k].copy_(torch.tensor(v, dtype=torch.float64))
        trainer.step = step
        strategy.on_after_optimizer_step(trainer)
        hand["a"] = [beta * s + (1 - beta) * f for s, f in zip(hand["a"], fast["a"])]
        hand["b"] = [[beta * hand["b"][0][0] + (1 - beta) * fast["b"][0][0]]]
        assert strategy.slow["a"].tolist() == pytest.approx(hand["a"], rel=0, abs=1e-15)
        assert strategy.slow["b"].tolist()[0] == pytest.approx(hand["b"][0], rel=0, abs=1e-15)
        assert params["a"].tolist() == fast["a"]  # the fast adapter is left as the optimizer made it
    # the slow adapter lags: after three steps it is nowhere near the last fast weights
    assert strategy.slow["a"].tolist() != pytest.approx(fast_values[-1]["a"], abs=0.5)


def test_reservoir_is_seeded_uniform_and_restorable():
    a, b, other = Reservoir(100, 10, seed=3), Reservoir(100, 10, seed=3), Reservoir(100, 10, seed=4)
    for step in range(30):
        for r in (a, b, other):
            r.offer(3, step)
    assert a.slots == b.slots and a.seen == b.seen == 100  # the stream ran out after 30 offers of 3
    assert a.draw(4, 7) == b.draw(4, 7) and a.draw(4, 7) != a.draw(4, 8)
    assert a.slots != other.slots
    assert len(set(a.slots)) == 10 and set(a.slots) <= set(range(100))
    assert max(a.slots) >= 10  # utterances beyond the first fill made it in
    restored = Reservoir(100, 10, seed=3)
    restored.load_state_dict(a.state_dict())
    assert restored.slots == a.slots and restored.seen == a.seen
    # uniform: over many seeds, each utterance of the stream ends in the buffer about capacity / pool of the time
    counts = torch.zeros(20)
    for seed in range(400):
        r = Reservoir(20, 5, seed=seed)
        r.offer(15, 0)
        counts[r.slots] += 1
    assert counts.min() > 400 * 0.25 * 0.6 and counts.max() < 400 * 0.25 * 1.4


def test_consistency_loss():
    fast = torch.randn(2, 3, 5)
    frames = torch.tensor([[True] * 5, [True] * 3 + [False] * 2])
    assert float(consistency_loss(fast, fast.clone(), frames)) == 0.0
    assert float(consistency_loss(fast, fast - 1.0, frames, "max")) == 0.0  # fast above slow: nothing to pull
    assert float(consistency_loss(fast, fast + 1.0, frames, "max")) == pytest.approx(1.0)
    assert float(consistency_loss(fast, fast + 1.0, frames)) == pytest.approx(1.0)
    padded = fast.clone()
    padded[1, :, 3:] += 100.0  # padding frames do not count
    assert float(consistency_loss(padded, fast, frames)) == 0.0


def test_bad_settings_are_refused():
    with pytest.raises(ValueError, match="consistency_target"):
        ILoRA(config=ilora_config(consistency_target="min"))
    with pytest.raises(ValueError, match="replay_batch"):
        ILoRA(config=ilora_config(replay_batch=9))
    with pytest.raises(ValueError, match="ilora_beta"):
        ilora_config(ilora_beta=1.0)


# --------------------------------------------------------------------------- on the tiny model
@pytest.fixture(scope="module")
def tiny_setup(tiny_model, tiny_corpus, feature_cache):
    """A tiny backend and its replay pool (the tiny corpus's pretraining utterances)."""
    from tts_adapt.models.base import TTSBackend

    def make(seed: int = 0):
        backend = TTSBackend.from_pretrained(tiny_model)
        pool = read_replay_pool(tiny_corpus, backend, num_utterances=16, seed=seed, cache_dir=feature_cache,
                                progress=False)
        strategy = ILoRA(config=ilora_config(seed=seed))
        strategy.use_replay(pool)
        strategy.wrap(backend.model, backend.lora_targets())
        params = strategy.trainable_parameters()
        trainer = SimpleNamespace(params=params, validate=None, step=0, device=torch.device("cpu"),
                                  precision="fp32", model=backend.model, loss_fn=backend.loss)
        strategy.on_train_start(trainer)
        return backend, pool, strategy, trainer

    return make


def _target_batch(backend, pool):
    return backend.collate([pool.features[i] for i in range(3)])


def test_replay_is_mixed_into_each_batch_and_is_deterministic(tiny_setup):
    backend, pool, strategy, trainer = tiny_setup()
    _, _, again, trainer2 = tiny_setup()
    _, _, other_seed, trainer3 = tiny_setup(seed=1)
    pretraining_speakers = set(pool.features.speakers)
    drawn = []
    for step in range(3):
        batches = []
        for s, t in ((strategy, trainer), (again, trainer2), (other_seed, trainer3)):
            t.step = step
            batch = _target_batch(backend, pool)
            s.on_batch_start(t, batch)
            t.loss_fn(batch)
            s.loss_terms(t, batch)
            s.on_after_optimizer_step(t)
            batches.append(batch)
        mixed = batches[0]
        assert len(mixed) == 3 + 2  # the target rows, then replay_batch replayed utterances
        assert set(mixed.speakers[3:]) <= pretraining_speakers
        assert torch.equal(mixed.mel, batches[1].mel) and mixed.speakers == batches[1].speakers  # same seed
        drawn.append((mixed.speakers[3:], batches[2].speakers[3:], float(mixed.mel[3:].sum()),
                       float(batches[2].mel[3:].sum())))
    assert any(d[2] != d[3] for d in drawn)  # another seed replays other utterances
    assert strategy.reservoir.slots == again.reservoir.slots and strategy.reservoir.seen == 8 + 3 * 2


def test_consistency_is_zero_while_fast_equals_slow(tiny_setup):
    backend, pool, strategy, trainer = tiny_setup()
    backend.model.eval()  # no dropout: the fast forward is the slow forward's arithmetic

    def consistency():
        batch = _target_batch(backend, pool)
        strategy.on_batch_start(trainer, batch)
        backend.loss(batch)
        (term,) = strategy.loss_terms(trainer, batch)
        return float(term.value.detach())

    assert consistency() < 1e-12
    with torch.no_grad():
        for k, v in strategy.slow.items():
            if "lora_B" in k:
                v.add_(0.05)
    assert consistency() > 1e-6


def test_missing_replay_data_is_a_clear_error(tiny_model, tiny_target_clips, feature_cache, tmp_path):
    with pytest.raises(ValueError, match="--replay-data"):
        adapt(tiny_target_clips, tmp_path / "out", tiny_model, ilora_config(), cache_dir=feature_cache,
              progress=False)
    assert not (tmp_path / "out").exists()
    backend_model = torch.nn.Linear(2, 2)
    with pytest.raises(ValueError, match="--replay-data"):
        ILoRA(config=ilora_config()).wrap(backend_model, ["weight"])


def _saved_key(param_name: str) -> str:
    return param_name.replace(".default", "")


def test_saves_the_slow_adapter_and_resumes_identically(tiny_model, tiny_corpus, tiny_target_clips, feature_cache,
                                                         tmp_path, monkeypatch):
    seen = {"slow": []}
    validation_weights, batch_end = ILoRA.validation_weights, ILoRA.on_train_batch_end

    @contextlib.contextmanager
    def spy_slow(self, trainer):  # what each validation saw, and the fast weights after the last step
        with validation_weights(self, trainer):
            seen["slow"].append({_saved_key(k): p.detach().clone() for k, p in self.trainable_parameters().items()})
            yield

    def spy_end(self, trainer, row, parts):
        if "val_loss" in row:
            seen.setdefault("val", []).append(row["val_loss"])
        seen["fast"] = {_saved_key(k): p.detach().clone() for k, p in self.trainable_parameters().items()}
        return batch_end(self, trainer, row, parts)

    monkeypatch.setattr(ILoRA, "validation_weights", spy_slow)
    monkeypatch.setattr(ILoRA, "on_train_batch_end", spy_end)
    run = lambda out, **kw: adapt(tiny_target_clips, out, tiny_model, ilora_config(), cache_dir=feature_cache,
                                  progress=False, replay_data=tiny_corpus, **kw)
    record = run(tmp_path / "whole")
    assert record["steps"] == 4 and record["replay_data"] == str(tiny_corpus)
    assert any("consistency" in row for row in record["curve"])
    saved = load_file(str(tmp_path / "whole" / "adapter_model.safetensors"))
    best_slow = seen["slow"][min(range(len(seen["val"])), key=seen["val"].__getitem__)]
    assert len(seen["slow"]) == len(seen["val"]) >= 2 and sorted(saved) == sorted(best_slow)
    assert all(torch.equal(saved[k], best_slow[k].cpu()) for k in saved)  # the slow adapter of the best validation
    lora_b = [k for k in saved if "lora_B" in k]
    assert lora_b and any(not torch.equal(saved[k], seen["fast"][k]) for k in lora_b)  # not the fast adapter
    assert any(saved[k].abs().sum() > 0 for k in lora_b)  # and it did move from the base model

    assert run(tmp_path / "resumed", stop_after=3)["status"] == "interrupted"
    run(tmp_path / "resumed", resume=True)
    resumed = load_file(str(tmp_path / "resumed" / "adapter_model.safetensors"))
    assert sorted(resumed) == sorted(saved)
    different = [k for k in saved if not torch.equal(saved[k], resumed[k])]
    assert not different, f"a resumed run saved other weights, e.g. {different[:3]}"
