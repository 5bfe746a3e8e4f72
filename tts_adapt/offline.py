"""Keep libraries from reaching the network at run time.

The toolkit never downloads weights or data implicitly: Hugging Face hub
clients (used inside transformers/peft) run offline and Gradio sends no
analytics. Values the user has set explicitly are respected.
"""

from __future__ import annotations

import os

OFFLINE_ENV = {
    "HF_HUB_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "HF_DATASETS_OFFLINE": "1",
    "GRADIO_ANALYTICS_ENABLED": "False",
    "HF_HUB_DISABLE_TELEMETRY": "1",
}


def enforce() -> None:
    for key, value in OFFLINE_ENV.items():
        os.environ.setdefault(key, value)
