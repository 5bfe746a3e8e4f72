"""The table of benchmarks/measure_lalora.sh (markdown), beside plain LoRA and K-FAC of the lambda sweep (seed 0).

    python benchmarks/lalora_table.py [OUT=work/lalora_measure] [SWEEP=work/sweep_lambda]
"""
import json
import sys
from pathlib import Path

M = Path(sys.argv[1] if len(sys.argv) > 1 else "work/lalora_measure")
S = Path(sys.argv[2] if len(sys.argv) > 2 else "work/sweep_lambda") / "cells"
ROWS = [("lora (plain LoRA)", S / "lora/adapter"), ("kfac, λ 30000", S / "kfac_lam30000/adapter"),
        ("kfac, λ 100000", S / "kfac_lam100000/adapter")]
ROWS += [(f"lalora: {p.name}", p) for p in sorted(M.iterdir()) if (p / "eval/report.json").is_file()]


def get(report, group, metric, key):
    for r in report["rows"]:
        if r["set"] == group and r["metric"] == metric:
            return r.get(key)


print("| run | steps | old ΔMCD dB [95 % CI] | target MCD dB [95 % CI] | target similarity [95 % CI] |")
print("|---|---|---|---|---|")
for name, folder in ROWS:
    rep = json.loads((folder / "eval/report.json").read_text())
    run = json.loads((folder / "run.json").read_text())
    cells = []
    for group, metric, key in (("pretrain", "mcd_db", "change"), ("target", "mcd_db", "adapted"),
                               ("target", "similarity", "adapted")):
        v, ci = get(rep, group, metric, key), get(rep, group, metric, key + "_ci") or [None, None]
        cells.append(f"{v:+.2f} [{ci[0]:.2f}, {ci[1]:.2f}]" if key == "change" else f"{v:.3f} [{ci[0]:.3f}, {ci[1]:.3f}]")
    print(f"| {name} | {run['steps']} | " + " | ".join(cells) + " |")
