"""tts_adapt: few-shot voice cloning for multi-speaker TTS with LoRA under a Laplace penalty.

Pipeline stages live in subpackages: :mod:`tts_adapt.data` (corpora, readers,
audio features). The command line (:mod:`tts_adapt.cli`) is a thin layer over
these Python APIs.
"""

__version__ = "0.1.0"

from tts_adapt import offline as _offline

_offline.enforce()
