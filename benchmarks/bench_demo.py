"""Start-up and synthesis time of the Gradio demo, on this machine's CPU.

    python benchmarks/bench_demo.py [--model DIR] [--adapters DIR] [--repeats 5]

Start-up: wall time from launching ``tts-adapt demo`` (a new process: imports, base model, every
adapter of the bank) to the page answering (goal: < 30 s with the shipped model on 2 cores).
Synthesis: wall time of one sentence through the Compare endpoint, base model + the adapters, median
of ``--repeats`` (goal: < 5 s for base + 2 adapters). Without ``--adapters``, two untrained LoRA
adapters (rank 8 on the default layers) stand in: the cost of synthesis does not depend on the
weights. Printed as one table with the core count and the load average.
"""

from __future__ import annotations

import argparse
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

SENTENCE = "Please call Stella and ask her to bring these things with her from the store."


def untrained_adapters(bank: Path, model_dir: Path | None, count: int = 2, rank: int = 8) -> Path:
    """``count`` LoRA adapters of the model saved as ``tts-adapt adapt`` saves them (no training)."""
    from tts_adapt.adapt.lora import wrap_with_lora
    from tts_adapt.adapt.adapter import add_target_speaker, save_adapter
    from tts_adapt.models.base import TTSBackend
    from tts_adapt.models.synthesis import default_model_dir

    model_dir = model_dir or default_model_dir()
    for i in range(count):
        backend = TTSBackend.from_pretrained(model_dir)
        base_fingerprint = backend.fingerprint()
        d_vector = backend.speakers.embeddings[i].clone()
        add_target_speaker(backend, d_vector)
        for p in backend.model.parameters():
            p.requires_grad_(False)
        peft_model = wrap_with_lora(backend.model, backend.lora_targets(), rank, 16.0, seed=i)
        config = {"strategy": "lora", "lam": 0.0, "rank": rank, "steps": 0}
        save_adapter(bank / f"untrained-{i + 1}", peft_model, d_vector, {"config": config, "steps": 0},
                     base_fingerprint=base_fingerprint, targets=backend.lora_targets())
    return bank


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_demo(model: Path | None, adapters: Path, port: int, timeout: float = 300.0):
    """(process, seconds until the page answered)."""
    cmd = [sys.executable, "-m", "tts_adapt.cli", "demo", "--port", str(port), "--adapters", str(adapters)]
    if model:
        cmd += ["--model", str(model)]
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    url = f"http://127.0.0.1:{port}/"
    while time.perf_counter() - t0 < timeout:
        if proc.poll() is not None:
            raise RuntimeError(f"the demo exited with status {proc.returncode}:\n{proc.stderr.read()[-2000:]}")
        try:
            if httpx.get(url, timeout=2.0).status_code == 200:
                return proc, time.perf_counter() - t0
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    proc.terminate()
    raise TimeoutError(f"the demo did not answer within {timeout:.0f} s")


def bench_compare(url: str, repeats: int) -> dict:
    from gradio_client import Client

    client = Client(url, verbose=False)
    voices, adapters, _, _ = client.predict(api_name="/refresh")
    names = [c[1] for c in adapters["choices"]]
    old = next(key for _, key in voices["choices"] if key.startswith("old:"))
    target = next((key for _, key in voices["choices"] if key.startswith("target:")), old)
    result = {"models": 1 + len(names)}
    for label, voice in (("old speaker", old), ("target voice", target)):
        client.predict(SENTENCE, voice, None, names, api_name="/compare")  # warm-up
        times = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            client.predict(SENTENCE, voice, None, names, api_name="/compare")
            times.append(time.perf_counter() - t0)
        result[label] = statistics.median(times)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, default=None, help="base model (default: the shipped one)")
    parser.add_argument("--adapters", type=Path, default=None, help="adapter bank (default: 2 untrained adapters)")
    parser.add_argument("--repeats", type=int, default=5, help="timed comparisons per voice (default: 5)")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        bank = args.adapters or untrained_adapters(Path(tmp) / "adapters", args.model)
        port = free_port()
        proc, startup = start_demo(args.model, bank, port)
        try:
            timing = bench_compare(f"http://127.0.0.1:{port}/", args.repeats)
        finally:
            proc.terminate()
            proc.wait(timeout=60)

    load = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    threads = os.environ.get("OMP_NUM_THREADS", "unset")
    source = args.adapters or "two untrained adapters"
    print(f"\n{os.cpu_count()} CPU cores, OMP_NUM_THREADS={threads}, load average {load}; adapters: {source}")
    print(f"{'measure':<44}{'seconds':>9}{'goal':>8}")
    print("-" * 61)
    print(f"{'start-up (process start to page served)':<44}{startup:>9.1f}{'< 30':>8}")
    for label in ("old speaker", "target voice"):
        name = f"one sentence, {label}, {timing['models']} models"
        print(f"{name:<44}{timing[label]:>9.2f}{'< 5':>8}")


if __name__ == "__main__":
    main()
