"""Benchmark: scan + features on a real collection, cold and warm cache, with peak memory.

    python bench/bench_scan.py [--dataset asterisk-en]

Each measurement runs in a fresh Python process so peak RSS belongs to that pass alone.
Targets on the 2-core machine: cold ≥ 500× real time, warm ≥ 5000× real time, peak < 1 GiB.
"""
from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def one_pass(folder: str, cache: str) -> dict:
    sys.path.insert(0, str(REPO))
    t0 = time.perf_counter()
    from distill.scan import scan_dataset

    t_import = time.perf_counter() - t0
    t1 = time.perf_counter()
    report = scan_dataset(folder, cache_dir=cache)
    seconds = time.perf_counter() - t1
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {"files_used": len(report.used), "files_skipped": len(report.skipped), "audio_s": report.total_seconds,
            "scan_s": seconds, "import_s": t_import, "peak_mb": peak_mb, "cache_hits": report.cache_hits}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--dataset", default="asterisk-en")
    ap.add_argument("--one-pass", nargs=2, metavar=("FOLDER", "CACHE"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.one_pass:
        print(json.dumps(one_pass(*args.one_pass)))
        return
    fetch = REPO / "scripts" / "fetch_datasets.sh"
    folder = subprocess.run(["bash", str(fetch), args.dataset], capture_output=True, text=True, check=True).stdout.split()[-1]
    with tempfile.TemporaryDirectory() as cache:
        rows = {}
        for label in ("cold", "warm"):
            out = subprocess.run([sys.executable, __file__, "--one-pass", folder, cache], capture_output=True, text=True, check=True)
            rows[label] = json.loads(out.stdout.strip().splitlines()[-1])
    targets = {"cold": 500, "warm": 5000}
    print(f"dataset {args.dataset}: {rows['cold']['files_used']} files used, {rows['cold']['files_skipped']} skipped, "
          f"{rows['cold']['audio_s'] / 60:.1f} min of audio")
    print(f"{'pass':6} {'seconds':>8} {'× real time':>12} {'target':>8} {'peak MiB':>9} {'cache hits':>10}")
    for label, r in rows.items():
        xrt = r["audio_s"] / r["scan_s"]
        print(f"{label:6} {r['scan_s']:8.2f} {xrt:12.0f} {'≥' + str(targets[label]):>8} {r['peak_mb']:9.0f} {r['cache_hits']:10d}")
    print(f"(import of distill.scan: {rows['cold']['import_s']:.2f} s, not counted)")


if __name__ == "__main__":
    main()
