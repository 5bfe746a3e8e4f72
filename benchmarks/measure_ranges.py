"""The range of every measure: real recordings, the base model, an adapter, and a deliberately broken adapter.

    python benchmarks/measure_ranges.py --adapter work/adapters/lora [--scale 3] [--out work/measure_ranges]

Copies ``--adapter`` into ``--out``/broken with every LoRA matrix's entries shuffled at random and scaled
by ``--scale`` (the same sizes of weights, no learned structure: a model that speaks, badly), evaluates
that copy with ``tts-adapt evaluate``'s measures on the same utterances as the adapter's own report
(``<adapter>/eval/report.json``, made first when missing), and prints, per set and measure, the figure on
the real recordings, the base model, the adapter and the broken adapter, each with its 95 % interval.
docs/measures.md quotes this table.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import time
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from tts_adapt.evaluate.adapter import SET_LABELS, evaluate_adapter
from tts_adapt.evaluate.measures import MEASURES


def break_adapter(adapter: Path, out: Path, scale: float, seed: int = 0) -> Path:
    """A copy of ``adapter`` whose LoRA matrices are shuffled and scaled (its run.json and target kept)."""
    if out.exists():
        shutil.rmtree(out)
    shutil.copytree(adapter, out, ignore=shutil.ignore_patterns("eval", "checkpoint"))
    weights = load_file(out / "adapter_model.safetensors")
    g = torch.Generator().manual_seed(seed)
    for name, w in weights.items():
        if ".lora_" in name:
            flat = w.flatten()
            weights[name] = (flat[torch.randperm(flat.numel(), generator=g)] * scale).reshape(w.shape).contiguous()
    save_file(weights, out / "adapter_model.safetensors")
    return out


def cell(m, value, interval) -> str:
    if value is None:
        return "–"
    low, high = interval
    return m.format(value) if low is None else f"{m.format(value)} [{m.format(low)}, {m.format(high)}]"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--adapter", required=True, type=Path, help="an adapter folder with a prepared target")
    ap.add_argument("--scale", type=float, default=3.0, help="factor on the shuffled LoRA weights")
    ap.add_argument("--out", type=Path, default=Path("work/measure_ranges"), help="where the broken copy goes")
    ap.add_argument("--per-speaker", type=int, default=None,
                    help="held-out utterances per speaker (default: as in the adapter's report)")
    args = ap.parse_args()
    t0 = time.time()
    report_file = args.adapter / "eval" / "report.json"
    kwargs = {}
    if report_file.is_file():
        adapter_report = json.loads(report_file.read_text(encoding="utf-8"))
        counts = adapter_report["counts"]
        kwargs = dict(old_speakers=len(adapter_report["speakers"]["pretrain"]),
                      unseen_speakers=len(adapter_report["speakers"]["unseen"]),
                      per_speaker=args.per_speaker or max(1, counts["pretrain"] // max(
                          1, len(adapter_report["speakers"]["pretrain"]))))
    else:
        adapter_report = evaluate_adapter(args.adapter, progress=True)
    broken = evaluate_adapter(break_adapter(args.adapter, args.out / "broken", args.scale), images=0, **kwargs)
    by = {(r["set"], r["metric"]): r for r in broken["rows"]}
    print(f"machine: {os.cpu_count()} cores; adapter {args.adapter} ({adapter_report['strategy']}); broken copy: "
          f"LoRA entries shuffled x {args.scale:g}; {time.time() - t0:.0f} s")
    head = f"{'set':<10} {'measure':<24} {'real':<22} {'base':<22} {'adapter':<22} {'broken adapter':<22}"
    print(head)
    print("-" * len(head))
    rows = []
    for r in adapter_report["rows"]:
        m, b = MEASURES[r["metric"]], by.get((r["set"], r["metric"]), {})
        line = {"set": r["set"], "metric": r["metric"], "real": cell(m, r["real"], r["real_ci"]),
                "base": cell(m, r["base"], r["base_ci"]), "adapter": cell(m, r["adapted"], r["adapted_ci"]),
                "broken": cell(m, b.get("adapted"), b.get("adapted_ci", [None, None]))}
        rows.append(line)
        print(f"{r['set']:<10} {m.label:<24} {line['real']:<22} {line['base']:<22} {line['adapter']:<22} "
              f"{line['broken']:<22}")
    (args.out / "ranges.json").write_text(json.dumps({"sets": SET_LABELS, "rows": rows}, indent=1,
                                                     ensure_ascii=False), encoding="utf-8")


if __name__ == "__main__":
    main()
