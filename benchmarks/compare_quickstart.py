"""Do two quickstart runs agree? (e.g. one on a GPU against the published CPU run)

    python benchmarks/compare_quickstart.py RUN.json REFERENCE.json

Both files are the ``quickstart.json`` that ``tts-adapt quickstart`` writes into its workdir
(``docs/quickstart_cpu.json`` is the published CPU run). For every adapter and every figure the quickstart
reports with a 95 % bootstrap interval over utterances (target similarity, MCD and mel loss; the change of
old and unseen speakers' MCD and of old speakers' WER), the two runs agree when their intervals overlap:
that interval is the noise of the measure on these utterances, and runs on two devices differ by float
rounding (TF32 convolutions, other summation orders) that a few hundred training steps amplify into a
different, equally good adapter, so bit-identity is not the test; a difference larger than the noise is.
Also printed: whether K-FAC still cuts plain LoRA's forgetting of old voices by at least half in each run,
and the wall times side by side. Exit status 0 when everything agrees, 1 otherwise.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

FIGURES = ("target_similarity", "target_mcd", "target_mel_loss", "old_dmcd", "old_dwer", "unseen_dmcd")


def overlap(a: list | None, b: list | None) -> bool | None:
    if not a or not b or None in a or None in b:
        return None
    return a[0] <= b[1] and b[0] <= a[1]


def forgetting_cut(rows: dict) -> float | None:
    lora, kfac = rows.get("lora"), rows.get("lora+kfac")
    if not lora or not kfac or not lora.get("old_dmcd"):
        return None
    return 1.0 - kfac["old_dmcd"] / lora["old_dmcd"]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("run", type=Path, help="quickstart.json of the run to check")
    ap.add_argument("reference", type=Path, help="quickstart.json to compare with (e.g. docs/quickstart_cpu.json)")
    args = ap.parse_args()
    run, ref = (json.loads(p.read_text(encoding="utf-8")) for p in (args.run, args.reference))
    print(f"run:       {run.get('device')}  ({args.run})")
    print(f"reference: {ref.get('device')}  ({args.reference})")
    if run.get("base_fingerprint") != ref.get("base_fingerprint"):
        print("warning: the two runs used different base models; re-run the reference with this model")
    rows = {name: {r["cell"]: r for r in d["rows"]} for name, d in (("run", run), ("ref", ref))}
    agree = True
    print(f"\n{'adapter':<10} {'figure':<18} {'run [95 % CI]':>26} {'reference [95 % CI]':>26}  agree")
    for cell in rows["ref"]:
        if cell not in rows["run"]:
            print(f"{cell:<10} missing from the run")
            agree = False
            continue
        a, b = rows["run"][cell], rows["ref"][cell]
        for fig in FIGURES:
            ok = overlap(a.get(f"{fig}_ci"), b.get(f"{fig}_ci"))
            if ok is None:
                continue
            agree &= ok

            def show(r):
                ci = r[f"{fig}_ci"]
                return f"{r[fig]:+.3f} [{ci[0]:+.3f},{ci[1]:+.3f}]"

            print(f"{cell:<10} {fig:<18} {show(a):>26} {show(b):>26}  {'yes' if ok else 'NO'}")
    print()
    for name, d in (("run", run), ("reference", ref)):
        cut = forgetting_cut(rows["run" if name == "run" else "ref"])
        if cut is not None:
            print(f"{name}: K-FAC cuts plain LoRA's old-voice forgetting by {100 * cut:.0f} %"
                  f" ({'at least half' if cut >= 0.5 else 'LESS than half'})")
            agree &= cut >= 0.5
        secs = d.get("seconds", {})
        print(f"{name}: wall {d.get('total_seconds', float('nan')):.0f} s ("
              + ", ".join(f"{k} {v:.0f} s" for k, v in secs.items()) + ")")
    print("\nthe runs agree within the noise of the measures" if agree else "\nthe runs DISAGREE (see above)")
    return 0 if agree else 1


if __name__ == "__main__":
    sys.exit(main())
