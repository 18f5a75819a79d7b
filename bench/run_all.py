"""Every benchmark in one command. `--quick`: each on a small slice (under 3 minutes on 2 cores,
written to work/bench_quick/, the committed results untouched); the test suite runs it so that
no benchmark rots.

    python bench/run_all.py --quick
    python bench/run_all.py            # the full runs (hours: see bench/README.md for each one's time)

`bench/finetune.py` and `bench/pretrain.py` need the sample pretraining and minutes of training
each; the quick run leaves them out (the integration tests run the same launchers).
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def commands(quick: bool, out: Path) -> list[list[str]]:
    if quick:
        return [
            ["bench/data.py", "--mp", "200", "--oc20-every", "50", "--repeat", "1", "--no-full",
             "--out", str(out / "data.json")],
            ["bench/model.py", "--max-atoms", "64", "--repeats", "1", "--no-peer", "--out", str(out / "model.json")],
            ["bench/accuracy.py", "--quick", "--nproc", "1", "--models", "ours", "cgcnn", "schnet", "composition",
             "--work", str(out / "accuracy_runs"), "--out", str(out / "accuracy.json")],
            ["bench/speed.py", "--quick", "--out", str(out / "speed.json")],
            ["bench/encoder_search.py", "--only", "small", "--budget", "8s", "--nproc", "1", "--work",
             str(out / "encoder_search_runs"), "--out", str(out / "encoder_search.json"), "--extra", "data.limit=400",
             "eval.every=10", "eval.max_batches=4"],
            ["bench/transfer.py", "curves", "--tasks", "dcdft", "--seeds", "0", "--budget", "4s", "--nproc", "1",
             "--work", str(out / "transfer_runs"), "--out", str(out / "transfer_curves.json")],
            ["bench/transfer.py", "features", "--tasks", "dcdft", "--extractors", "ours_blocks", "ours_readout",
             "composition", "--work", str(out / "transfer_runs"), "--out", str(out / "transfer_features.json")],
            ["bench/transfer.py", "pretrain-ablations", "--pretrain-config", "configs/pretrain/sample.yaml", "--steps",
             "3", "--variants", "fixed-T2", "--task", "dcdft", "--size", "all", "--seeds", "0", "--budget", "3s",
             "--nproc", "1", "--work", str(out / "transfer_runs"), "--out", str(out / "transfer_pretrain_ablations.json")],
            ["bench/corpus.py", "--n", "2000", "--pool", "300", "--batches", "10", "--workdir", str(out / "corpus"),
             "--out", str(out / "corpus.json")],
        ]
    return [["bench/data.py"], ["bench/model.py"], ["bench/pretrain.py"], ["bench/finetune.py"], ["bench/accuracy.py"],
            ["bench/speed.py"], ["bench/cgcnn_check.py"], ["bench/encoder_search.py"], ["bench/transfer.py", "ablations"],
            ["bench/transfer.py", "pretrain-ablations"], ["bench/transfer.py", "curves"], ["bench/transfer.py", "features"], ["bench/corpus.py"]]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--out", default="work/bench_quick", help="--quick: where the results go")
    args = parser.parse_args(argv)
    out = ROOT / args.out
    out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    for command in commands(args.quick, out):
        print(f"[{time.perf_counter() - start:5.0f} s] python {' '.join(command)}", flush=True)
        subprocess.run([sys.executable, *command], cwd=ROOT, check=True)
    print(f"all benchmarks ran in {time.perf_counter() - start:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
