"""I-LoRA (Ren et al., 2024): a fast and a slow LoRA adapter, replay of pretraining utterances, and a
consistency loss between the two adapters' hidden states on the replayed utterances.

* The fast adapter is the one the optimizer trains. The slow adapter is a copy of its weights (LoRA factors
  and trainable speaker rows), updated after every optimizer step by
  θ_slow ← β · θ_slow + (1 − β) · θ_fast  (``ilora_beta``); it starts equal to the fast one.
* Every batch of target clips gets ``replay_batch`` pretraining utterances drawn from a reservoir buffer of
  ``replay_size`` (:mod:`tts_adapt.adapt.replay`; ``--replay-data``), and the TTS loss is that of the mixed
  batch.
* The consistency loss is a masked mean squared difference between the fast adapter's hidden states on the
  replayed utterances (from the mixed batch's forward) and a target from the slow adapter's hidden states
  (a forward without gradients): the slow ones themselves (``consistency_target`` ``slow``), or their
  element-wise maximum with the fast ones (``max``, the authors' code), weighted by ``consistency``.
* Validation, early stopping and the saved adapter use the slow adapter: the adapter saved is the slow one of
  the best validation.

The hidden states compared (FastPitch): the output of the decoder's transformer stack,
``decoder.decoder.transformer_block``, ``(B, C, frames)``, just before the 1×1 projection to the mel
spectrogram. It is the model's last hidden layer, as the language models' last hidden state is in the paper;
under teacher forcing it depends on the speaker projection, every encoder and decoder layer and the pitch
embedding, i.e. on nearly all adapted layers, and its frames are the same for both adapters (the
durations come from the aligner, which is not adapted, and the pitch is the recorded one). The duration and
pitch predictors are not behind it; on the replayed utterances they are held by the replay's duration and
pitch losses and by the slow average.

The slow forward runs on the replayed rows of the mixed batch, in eval mode (no dropout: a fixed target), with
the slow weights swapped into the LoRA parameters for the call (tensor storage swapped, no copy, no second
peft model). coqui's decoder transformer sees no padding mask, so a row's hidden states depend on the
batch's longest utterance; when that is a target clip, its row is run along so both forwards see the same
frame count.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging

import torch

from tts_adapt.adapt.replay import ReplayPool, Reservoir, batch_rows, concat_batches
from tts_adapt.adapt.strategies.base import Strategy, register_strategy
from tts_adapt.device import autocast
from tts_adapt.models.base import Batch
from tts_adapt.models.trainer import LossTerm

log = logging.getLogger(__name__)
#: The module whose output is the hidden state compared, per model backend (module doc).
HIDDEN_STATE_MODULES = {"fastpitch": "decoder.decoder.transformer_block"}
CONSISTENCY_TARGETS = ("slow", "max")


def consistency_loss(fast: torch.Tensor, slow: torch.Tensor, frames: torch.Tensor, target: str = "slow"
                     ) -> torch.Tensor:
    """Mean over real frames and channels of (fast − y)², y = ``slow`` (``target`` ``slow``) or max(fast, slow)
    element-wise (``max``). ``fast``, ``slow``: (B, C, T) hidden states; ``frames``: (B, T) True on real frames.
    Gradients reach ``fast`` only."""
    slow = slow.detach().to(fast.dtype)
    y = slow if target == "slow" else torch.maximum(slow, fast.detach())
    mask = frames[:, None, :].to(fast.dtype)
    return (((fast - y) * mask) ** 2).sum() / (mask.sum() * fast.shape[1]).clamp_min(1.0)


@register_strategy
class ILoRA(Strategy):
    """Fast + slow (EMA) LoRA with replay and a hidden-state consistency loss (module doc)."""

    name = "ilora"
    needs_replay_data = True

    def __init__(self, curvature=None, **kwargs):
        super().__init__(curvature, **kwargs)
        c = self.config
        if c.consistency_target not in CONSISTENCY_TARGETS:
            raise ValueError(f"consistency_target must be one of {', '.join(CONSISTENCY_TARGETS)}, "
                             f"got {c.consistency_target!r}")
        if c.replay_batch > c.replay_size:
            raise ValueError(f"replay_batch ({c.replay_batch}) is larger than the replay buffer (replay_size "
                             f"{c.replay_size})")
        if c.replay_size > c.replay_pool:
            raise ValueError(f"replay_size ({c.replay_size}) is larger than the pool it is drawn from (replay_pool "
                             f"{c.replay_pool})")
        self.replay: ReplayPool | None = None
        self.reservoir: Reservoir | None = None
        self.slow: dict[str, torch.Tensor] | None = None
        self._params: dict[str, torch.nn.Parameter] = {}
        self._cached: dict[int, object] = {}  # features of the utterances in the buffer, by pool index
        self._hook = None
        self._capture: str | None = None  # which forward's hidden states the hook keeps: "slow", "fast", None
        self._hidden: dict[str, torch.Tensor] = {}
        self._rows: tuple[list[int], list[int]] = ([], [])  # replayed rows: of the mixed batch, of the slow forward
        self._frames: torch.Tensor | None = None

    # ------------------------------------------------------------------ set-up
    def use_replay(self, pool: ReplayPool) -> None:
        """Replay the utterances of ``pool`` (:func:`tts_adapt.adapt.replay.read_replay_pool`)."""
        if len(pool) < self.config.replay_size:
            log.warning("the replay pool has %d utterances, fewer than replay_size %d: the buffer holds them all",
                        len(pool), self.config.replay_size)
        self.replay = pool
        self.reservoir = Reservoir(len(pool), min(self.config.replay_size, len(pool)), self.config.seed)

    def _check_replay(self) -> None:
        if self.replay is None:
            raise ValueError("strategy 'ilora' needs pretraining utterances to replay: give --replay-data DIR (the "
                             "base model's pretraining corpus, e.g. work/corpus)")

    def wrap(self, model, targets, trainable_rows=None):
        self._check_replay()
        layer = HIDDEN_STATE_MODULES.get(self.replay.backend)
        modules = dict(model.named_modules())
        if layer is None or layer not in modules:
            raise ValueError(f"strategy 'ilora' compares hidden states of a FastPitch decoder "
                             f"({', '.join(HIDDEN_STATE_MODULES)} backends); the {self.replay.backend!r} model has "
                             "none chosen")
        wrapped = super().wrap(model, targets, trainable_rows)
        self._hook = modules[layer].register_forward_hook(self._keep_hidden)
        return wrapped

    def _keep_hidden(self, module, inputs, output) -> None:
        if self._capture is not None:
            self._hidden[self._capture] = output

    # ------------------------------------------------------------------ the two adapters
    @contextlib.contextmanager
    def slow_weights(self):
        """The slow adapter in the LoRA parameters for the duration of the block (storage swapped both ways,
        so no autograd graph may be alive across it)."""
        self._swap()
        try:
            yield
        finally:
            self._swap()

    def _swap(self) -> None:
        for k, p in self._params.items():
            fast = p.data
            p.data = self.slow[k]
            self.slow[k] = fast

    def on_train_start(self, trainer):
        self._check_replay()
        self._params = trainer.params
        if self.slow is None:
            self.slow = {k: p.detach().clone() for k, p in trainer.params.items()}

    def validation_weights(self, trainer):
        return self.slow_weights()  # validation and early stopping judge the adapter that is saved

    def on_after_optimizer_step(self, trainer):
        beta = self.config.ilora_beta
        with torch.no_grad():
            for k, p in self._params.items():
                self.slow[k].mul_(beta).add_(p.detach(), alpha=1.0 - beta)
        self.reservoir.offer(self.config.replay_batch, trainer.step)

    def before_save(self):
        # the loop has put back the weights of the best validation, which ran on the slow adapter
        if self._hook is not None:
            self._hook.remove()
            self._hook = None

    # ------------------------------------------------------------------ replay and consistency
    def replay_batch(self, step: int) -> Batch:
        """The replayed utterances of step ``step`` (CPU), from the buffer."""
        picks = self.reservoir.draw(self.config.replay_batch, step)
        self._cached = {i: self._cached[i] for i in self.reservoir.slots if i in self._cached}
        for i in picks:
            if i not in self._cached:
                self._cached[i] = self.replay.features[i]
        return self.replay.collate([self._cached[i] for i in picks])

    def on_batch_start(self, trainer, batch):
        n_target = len(batch)
        replay = self.replay_batch(trainer.step).to(trainer.device)
        mixed = concat_batches(batch, replay, self.replay.pad_id)
        for f in dataclasses.fields(Batch):  # the loop's batch becomes the mixed one
            setattr(batch, f.name, getattr(mixed, f.name))
        replayed = list(range(n_target, len(batch)))
        self._frames = batch.frame_mask[n_target:]
        self._hidden = {}
        if not self.config.consistency:
            return
        longest = int(batch.mel_lengths.argmax())
        slow_rows = ([longest] if longest < n_target else []) + replayed
        self._rows = (replayed, [slow_rows.index(r) for r in replayed])
        was_training = trainer.model.training
        trainer.model.eval()
        self._capture = "slow"
        try:
            with torch.no_grad(), self.slow_weights(), autocast(trainer.device, trainer.precision):
                trainer.loss_fn(batch_rows(batch, slow_rows))
        finally:
            trainer.model.train(was_training)
            self._capture = None
        self._capture = "fast"  # the loop's forward of the mixed batch comes next

    def loss_terms(self, trainer, batch):
        self._capture = None
        hidden, self._hidden = self._hidden, {}
        if not self.config.consistency:
            return [LossTerm("consistency", next(iter(self._params.values())).new_zeros(()), 0.0)]
        if "fast" not in hidden or "slow" not in hidden:
            raise RuntimeError(f"the {HIDDEN_STATE_MODULES[self.replay.backend]} module did not run in the forward "
                               "of the batch; the consistency loss has no hidden states")
        mixed_rows, slow_rows = self._rows
        fast, slow = hidden["fast"][mixed_rows].float(), hidden["slow"][slow_rows].float()
        frames = self._frames[:, :fast.shape[2]]
        return [LossTerm("consistency", consistency_loss(fast, slow, frames, self.config.consistency_target),
                         self.config.consistency)]

    # ------------------------------------------------------------------ checkpoints
    def state_dict(self):
        return {"slow": {k: v.detach().cpu() for k, v in (self.slow or {}).items()},
                "reservoir": self.reservoir.state_dict() if self.reservoir is not None else {}}

    def load_state_dict(self, state):
        if not state.get("slow"):
            return
        params = self.trainable_parameters()
        missing = sorted(set(params) - set(state["slow"]))
        if missing:
            raise ValueError(f"the checkpoint has no slow adapter weights for {missing[0]} (and {len(missing) - 1} "
                             "more); it was written by another run")
        self.slow = {k: state["slow"][k].to(p.device, p.dtype) for k, p in params.items()}
        self._check_replay()
        self.reservoir.load_state_dict(state["reservoir"])
