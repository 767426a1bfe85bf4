"""Re-ranker training on a shared machine: thread counts, quiet and beside a busy process.

    DRIFTRANK_DATA_HOME=../shared/data .venv/bin/python benchmarks/bench_threads.py \\
        --out benchmarks/results/threads

Trains the sequence re-ranker on ml-100k (leave-one-out, train+validation; ``--epochs`` epochs,
item texts embedded once) with torch/BLAS on 1 thread, on 2 threads, and on what the engine's
fit picks by itself (``fit_threads=None``: the cores other processes leave idle), first with
the machine quiet, then beside one CPU-bound process (a numpy matrix product in a loop on one
thread). Records seconds per epoch for each (``--repeats`` runs, all kept, medians compared),
the machine, and the thread count the automatic choice made. Writes ``results.json`` and
``results.md``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

COMPETITOR = "import numpy as np\na = np.random.rand(600, 600)\nwhile True:\n    a @ a\n"


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--dataset", default="ml-100k")
    p.add_argument("--data-home")
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--out", default="benchmarks/results/threads")
    args = p.parse_args()

    import numpy as np

    from driftrank._threads import fit_threads, limited_threads
    from driftrank.bench._harness import machine_info
    from driftrank.data import load_dataset
    from driftrank.eval import leave_one_out
    from driftrank.rerank._encoder import SentenceEncoder, SentenceEncoderConfig
    from driftrank.rerank._model import SequenceReranker, SequenceRerankerConfig

    data = load_dataset(args.dataset, args.data_home)
    split = leave_one_out(data)
    vectors = SentenceEncoder(SentenceEncoderConfig(progress=False)).encode(list(data.item_texts))
    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    cores = os.cpu_count() or 1

    def seconds_per_epoch(threads: int) -> float:
        with limited_threads(threads):
            model = SequenceReranker(SequenceRerankerConfig(max_epochs=args.epochs, min_epochs=args.epochs))
            start = time.perf_counter()
            model.fit(split.train_valid, vectors)
            return (time.perf_counter() - start) / args.epochs

    runs: dict[str, list[float]] = {}
    chosen: dict[str, list[int]] = {}
    for load in ("quiet", "beside one busy process"):
        competitor = None
        if load != "quiet":
            env = {**os.environ, "OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1"}
            competitor = subprocess.Popen([sys.executable, "-c", COMPETITOR], env=env)
            time.sleep(1.0)
        try:
            for _ in range(args.repeats):
                for setting in ("1 thread", f"{cores} threads", "automatic"):
                    if setting == "automatic":
                        n = fit_threads(None, cores)
                        chosen.setdefault(load, []).append(n)
                    else:
                        n = int(setting.split()[0])
                    runs.setdefault(f"{load}, {setting}", []).append(seconds_per_epoch(n))
                    print(f"{load}, {setting}: {runs[f'{load}, {setting}'][-1]:.1f} s/epoch", flush=True)
        finally:
            if competitor is not None:
                competitor.kill()
                competitor.wait()

    med = {k: statistics.median(v) for k, v in runs.items()}
    result: dict[str, Any] = {
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "machine": machine_info(),
        "epochs": args.epochs,
        "repeats": args.repeats,
        "seconds_per_epoch": runs,
        "median_seconds_per_epoch": med,
        "automatic_choice": chosen,
    }
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(result, indent=2), encoding="utf-8")
    quiet_best = min(v for k, v in med.items() if k.startswith("quiet"))
    lines = [
        f"# Re-ranker seconds per epoch on {args.dataset}, {cores} cores ({args.repeats} runs each, median)",
        "",
        "| setting | s / epoch | x the quiet best |",
        "|---|---|---|",
        *[f"| {k} | {v:.1f} | {v / quiet_best:.2f} |" for k, v in med.items()],
        "",
        f"Automatic choice (threads): {chosen}",
    ]
    (out / "results.md").write_text("\n".join(lines) + "\n", encoding="utf-8")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
