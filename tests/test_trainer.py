"""The shared training loop on a toy regression: the order of events, loss terms, validation with best
weights and early stopping, non-finite losses, cancellation, and exact resume from one state dict."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from tts_adapt.models.trainer import (STATE_FORMAT, Callback, CheckpointError, LoopConfig, LossTerm, Trainer,
                                      read_checkpoint)

X = torch.linspace(-1, 1, 32).reshape(-1, 1)
Y = 3 * X + 0.5


class Recorder(Callback):
    """Logs every moment it is called at, and counts steps in its own checkpointed state."""

    state_key = "recorder"

    def __init__(self):
        self.events, self.count = [], 0

    def on_train_start(self, trainer):
        self.events.append("start")

    def on_batch_start(self, trainer, batch):
        self.events.append("batch")

    def loss_terms(self, trainer, batch):
        self.events.append("terms")
        return [LossTerm("l1", trainer.model.weight.abs().sum(), 0.1)]

    def on_after_optimizer_step(self, trainer):
        self.events.append("optimizer")
        self.count += 1

    def on_train_batch_end(self, trainer, row, parts):
        self.events.append("end")

    def on_save_checkpoint(self, trainer):
        self.events.append("checkpoint")

    def state_dict(self):
        return {"count": self.count}

    def load_state_dict(self, state):
        self.count = state["count"]


def make_trainer(tmp_path, *, loss_of=None, callbacks=(), val=None, **loop) -> Trainer:
    torch.manual_seed(0)
    model = nn.Linear(1, 1)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)

    def loss_fn(idx):
        loss = ((model(X[idx]) - Y[idx]) ** 2).mean()
        return (loss if loss_of is None else loss_of(loss)), {"mse": float(loss.detach())}

    config = LoopConfig(**{"steps": 6, "checkpoint_every": 2, **loop})
    return Trainer(model, dict(model.named_parameters()), optimizer, loss_fn,
                   epoch_batches=lambda epoch: [list(range(i, 32, 4)) for i in range(4)],
                   make_batch=lambda idx: idx, config=config, validate=val,
                   checkpoint_path=tmp_path / "state.pt", callbacks=callbacks, progress=False)


def test_events_come_in_the_documented_order_and_terms_join_the_loss(tmp_path):
    rec = Recorder()
    rows = []

    class Rows(Callback):
        def on_train_batch_end(self, trainer, row, parts):
            rows.append((row, parts))

    trainer = make_trainer(tmp_path, callbacks=[rec, Rows()], steps=2)
    assert trainer.fit() == "steps"
    step = ["batch", "terms", "optimizer", "end"]
    assert rec.events == ["start"] + step + step + ["checkpoint"]
    row, parts = rows[-1]
    assert row["step"] == 2 and set(row) == {"step", "loss", "l1"} and "mse" in parts
    assert row["l1"] == pytest.approx(float(trainer.model.weight.detach().abs().sum()), rel=0.5)


def test_resume_from_the_checkpoint_equals_the_uninterrupted_run(tmp_path):
    whole = make_trainer(tmp_path / "a", callbacks=[Recorder()])
    whole.fit()
    first = make_trainer(tmp_path / "b", callbacks=[Recorder()])
    assert first.fit(stop_after=3) == "interrupted"
    state = read_checkpoint(tmp_path / "b" / "state.pt")
    assert state["format"] == STATE_FORMAT and state["step"] == 3 and state["callbacks"]["recorder"] == {"count": 3}
    second_rec = Recorder()
    second = make_trainer(tmp_path / "b", callbacks=[second_rec])
    second.load_state_dict(state)
    assert second.fit() == "steps"
    assert second.step == 6 and second_rec.count == 6
    assert all(torch.equal(whole.params[k], second.params[k]) for k in whole.params)


def test_best_weights_and_early_stopping(tmp_path):
    losses = iter([1.0, 0.5, 0.7, 0.8, 0.9, 0.95])
    trainer = make_trainer(tmp_path, val=lambda: next(losses), val_every=1, patience=2, keep_best=True, steps=10)
    snapshots = []

    class Snap(Callback):
        def on_train_batch_end(self, trainer, row, parts):
            snapshots.append({k: p.detach().clone() for k, p in trainer.params.items()})

    trainer.callbacks.append(Snap())
    assert trainer.fit() == "early stopping"
    assert trainer.step == 4 and trainer.best_val == 0.5  # steps 3 and 4 did not improve on step 2
    trainer.restore_best()
    assert all(torch.equal(trainer.params[k], snapshots[1][k]) for k in trainer.params)


def test_non_finite_steps_are_skipped_and_too_many_end_the_run(tmp_path):
    calls = {"n": 0}

    def sometimes_nan(loss):
        calls["n"] += 1
        return loss * math.nan if calls["n"] == 2 else loss

    trainer = make_trainer(tmp_path, loss_of=sometimes_nan, steps=3)
    assert trainer.fit() == "steps" and trainer.step == 3 and calls["n"] == 4  # one batch skipped

    always = make_trainer(tmp_path / "nan", loss_of=lambda loss: loss * math.nan, max_bad_steps=3)
    assert always.fit() == "non-finite loss" and always.step == 0
    raising = make_trainer(tmp_path / "raise", loss_of=lambda loss: loss * math.nan, max_bad_steps=3,
                           raise_on_non_finite=True)
    with pytest.raises(FloatingPointError, match="3 non-finite losses in a row"):
        raising.fit()


def test_a_callback_can_cancel_and_the_checkpoint_is_written(tmp_path):
    class Cancel(Callback):
        def on_train_batch_end(self, trainer, row, parts):
            return trainer.step < 3

    trainer = make_trainer(tmp_path, callbacks=[Cancel()], checkpoint_every=100)
    assert trainer.fit() == "cancelled" and trainer.step == 3
    assert read_checkpoint(tmp_path / "state.pt")["step"] == 3


def test_a_checkpoint_of_another_layout_is_refused_with_its_path(tmp_path):
    torch.save({"step": 3, "optimizer": {}}, tmp_path / "old.pt")
    with pytest.raises(CheckpointError, match="old.pt: a checkpoint of another layout"):
        read_checkpoint(tmp_path / "old.pt")
    (tmp_path / "broken.pt").write_bytes(b"\x80\x02 half a pickle")
    with pytest.raises(CheckpointError, match="broken.pt: not a readable checkpoint"):
        read_checkpoint(tmp_path / "broken.pt")


def test_two_callbacks_with_one_state_key_are_refused(tmp_path):
    with pytest.raises(ValueError, match="share a state key"):
        make_trainer(tmp_path, callbacks=[Recorder(), Recorder()])
