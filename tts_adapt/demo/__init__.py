"""The Gradio demo: side-by-side listening of a base model and its adapters, and voice cloning from
uploaded or recorded clips (``tts-adapt demo``). Names are imported lazily (gradio is slow to import)."""

from tts_adapt.registry import lazy_exports

_EXPORTS = {
    "DemoService": "app", "build_app": "app", "launch": "app", "run_demo": "app",
    "AdapterBank": "bank", "CloneQueue": "jobs", "VoiceModels": "voices",
}
__all__ = list(_EXPORTS)

__getattr__ = lazy_exports(__name__, _EXPORTS)
