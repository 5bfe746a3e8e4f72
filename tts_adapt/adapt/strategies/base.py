"""The strategy interface: what one adaptation method changes in the shared training loop.

A strategy is a :class:`~tts_adapt.models.trainer.Callback` of the loop plus two moments of its own
(as peft's tuners wrap a model): :meth:`Strategy.wrap` chooses what trains, :meth:`Strategy.before_save`
prepares the adapter that is written. Every hook is a no-op or peft's plain LoRA here, so a method is a
few short overrides in one class, registered by name::

    @register_strategy
    class MyStrategy(Strategy):
        name = "mine"

        def loss_terms(self, trainer, batch):
            return [LossTerm("mine", some_scalar_tensor, weight)]
"""

from __future__ import annotations

from typing import ClassVar

from torch import nn

from tts_adapt.adapt.adapt_config import AdaptConfig
from tts_adapt.adapt.lora import adapter_parameters, wrap_with_lora
from tts_adapt.models.trainer import Callback
from tts_adapt.registry import Registry

STRATEGIES: Registry[type["Strategy"]] = Registry("strategy")
register_strategy = STRATEGIES.register


def get_strategy(name: str) -> type["Strategy"]:
    """The strategy class registered as ``name`` (an unknown name is an error listing the valid ones)."""
    return STRATEGIES.get_class(name)


class Strategy(Callback):
    """Plain LoRA on the backend's target layers; subclasses change what differs.

    ``curvature_method`` names the curvature file a strategy needs (``fit-curvature --method``), None
    for none; ``curvature_methods`` all it can read (default: that one); ``uses_lam`` says whether λ
    (``AdaptConfig.lam``) means anything to it, and ``default_lam`` is the λ of a run that does not set one.
    ``config`` carries the run's settings (λ, rank, seed, …).
    """

    name: ClassVar[str]
    curvature_method: ClassVar[str | None] = None
    curvature_methods: ClassVar[tuple[str, ...]] = ()
    uses_lam: ClassVar[bool] = False
    default_lam: ClassVar[float] = 0.0
    needs_curvature: ClassVar[bool] = False
    #: True for a strategy that replays pretraining utterances (``adapt(replay_data=...)``, ``--replay-data``); it
    #: is given them by ``use_replay(pool)`` (:func:`tts_adapt.adapt.replay.read_replay_pool`) before ``wrap``
    needs_replay_data: ClassVar[bool] = False
    state_key = "strategy"

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        cls.needs_curvature = cls.curvature_method is not None
        if "curvature_methods" not in cls.__dict__:
            cls.curvature_methods = (cls.curvature_method,) if cls.curvature_method else ()

    def __init__(self, curvature=None, *, damping: float = 0.0, config: AdaptConfig | None = None):
        if self.needs_curvature and curvature is None:
            raise ValueError(f"strategy {self.name!r} needs a curvature file (--curvature; fit it with "
                             f"tts-adapt fit-curvature --method {self.curvature_method})")
        self.curvature = curvature
        self.damping = damping
        self.config = config or AdaptConfig(strategy=self.name)
        self.model: nn.Module | None = None

    @classmethod
    def from_config(cls, config: AdaptConfig, curvature=None) -> "Strategy":
        return cls(curvature, damping=config.damping, config=config)

    def wrap(self, model: nn.Module, targets: list[str], trainable_rows: dict[str, list[int]] | None = None
             ) -> nn.Module:
        """Freeze ``model`` and return it wrapped for training (peft LoRA on ``targets``, with
        ``trainable_rows`` of embeddings trained along, e.g. a new speaker's row)."""
        for p in model.parameters():
            p.requires_grad_(False)
        c = self.config
        self.model = wrap_with_lora(model, targets, c.rank, c.alpha, seed=c.seed, trainable_tokens=trainable_rows)
        return self.model

    def trainable_parameters(self) -> dict[str, nn.Parameter]:
        """The parameters the optimizer updates, by name (in a fixed order)."""
        return adapter_parameters(self.model)

    def before_save(self) -> None:
        """Make ``self.model``'s adapter the one to save (e.g. swap in a slow copy, drop unused blocks)."""

    def run_record(self) -> dict:
        """Entries the strategy adds to the run record (run.json), after :meth:`before_save`; none here."""
        return {}
