"""Adaptation strategies: registered classes with a few hooks on the shared training loop.

:data:`STRATEGIES` maps each name to its class; :func:`get_strategy` looks one up. The built-in
strategies (``lora``, ``l2``, ``diag``, ``kfac``, ``ekfac``: :mod:`.penalties`) register on import of
this package; a new method is one :class:`Strategy` subclass in one file, decorated with
:func:`register_strategy`.
"""

from tts_adapt.adapt.strategies import penalties  # noqa: F401  (the built-in strategies register on import)
from tts_adapt.adapt.strategies import lalora  # noqa: F401  (LaLoRA registers on import)
from tts_adapt.adapt.strategies import selective  # noqa: F401  (selective LoRA registers on import)
from tts_adapt.adapt.strategies import ilora  # noqa: F401  (I-LoRA registers on import)
from tts_adapt.adapt.strategies.base import STRATEGIES, Strategy, get_strategy, register_strategy
from tts_adapt.adapt.strategies.penalties import PenaltyStrategy

__all__ = ["STRATEGIES", "PenaltyStrategy", "Strategy", "get_strategy", "register_strategy"]
