"""Adaptation stage: peft LoRA on the base model, under a Laplace penalty against forgetting.

:func:`adapt` clones a voice from a folder of clips; strategies (:data:`STRATEGIES`)
are registered classes with a few hooks on the shared training loop. Names are imported lazily so
that reading :mod:`tts_adapt.adapt.adapt_config` stays cheap.
"""

from tts_adapt.registry import lazy_exports

_EXPORTS = {
    "AdaptConfig": "adapt_config",
    "LoraFactors": "lora", "lora_factors": "lora", "wrap_with_lora": "lora",
    "STRATEGIES": "strategies", "Strategy": "strategies", "PenaltyStrategy": "strategies",
    "get_strategy": "strategies", "register_strategy": "strategies",
    "adapt": "train",
}
__all__ = list(_EXPORTS)

__getattr__ = lazy_exports(__name__, _EXPORTS)
