"""Hugging Face Spaces-style entry point of the demo: ``python demo/app.py`` (from the repository root).

The same app as ``tts-adapt demo``; settings come from the environment:
``TTS_ADAPT_MODEL`` (base model folder; default: the shipped model), ``TTS_ADAPT_ADAPTERS`` (adapter bank;
default: work/adapters), ``TTS_ADAPT_CURVATURE`` (curvature file or folder; default: work/kfac.safetensors),
``GRADIO_SERVER_NAME`` (default: 127.0.0.1, this machine only; Spaces sets 0.0.0.0) and ``GRADIO_SERVER_PORT``.
"""

import os

from tts_adapt.demo.app import DEFAULT_ADAPTERS, DEFAULT_CURVATURE, DemoService, build_app, launch

service = DemoService(os.environ.get("TTS_ADAPT_MODEL") or None,
                      os.environ.get("TTS_ADAPT_ADAPTERS") or DEFAULT_ADAPTERS,
                      [os.environ.get("TTS_ADAPT_CURVATURE") or DEFAULT_CURVATURE])
demo = build_app(service)

if __name__ == "__main__":
    port = os.environ.get("GRADIO_SERVER_PORT")
    try:
        launch(demo, host=os.environ.get("GRADIO_SERVER_NAME") or "127.0.0.1", port=int(port) if port else None)
    finally:
        service.close()
