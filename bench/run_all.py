"""Every benchmark in one command. `--quick`: each on a small slice (under 3 minutes on 2 cores,
written to work/bench_quick/, the committed results untouched); the test suite runs it so that
no benchmark rots.

    python bench/run_all.py --quick
    python bench/run_all.py            # the full runs (hours: see bench/README.md for each one's time)

The quick run is a check that every benchmark still runs, not a measurement: its slices run in two
lanes at once, one thread each (one per core here), so its timings are not results. The two lanes
share no dataset, so neither reads a shard cache the other is writing. `bench/finetune.py` and
`bench/pretrain.py` need the sample pretraining and minutes of training each; the quick run leaves
them out (the integration tests run the same launchers).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def quick_lanes(out: Path) -> list[list[list[str]]]:
    """Two lanes of quick slices, about equally long; lane 1 reads mp2018, the perovskites and OC20,
    lane 2 dcdft, the sample pretraining's databases and its own mp2018 copies."""
    return [
        [["bench/accuracy.py", "--quick", "--nproc", "1", "--models", "ours", "cgcnn", "schnet", "composition",
          "--work", str(out / "accuracy_runs"), "--out", str(out / "accuracy.json")],
         ["bench/encoder_search.py", "--only", "small", "--budget", "3s", "--nproc", "1", "--work",
          str(out / "encoder_search_runs"), "--out", str(out / "encoder_search.json"), "--extra", "data.limit=400",
          "eval.every=10", "eval.max_batches=4"],
         ["bench/data.py", "--mp", "100", "--pool", "1000", "--oc20-every", "50", "--repeat", "1", "--no-full",
          "--out", str(out / "data.json")],
         ["bench/model.py", "--max-atoms", "64", "--repeats", "1", "--no-peer", "--out", str(out / "model.json")]],
        [["bench/transfer.py", "pretrain-ablations", "--pretrain-config", "configs/pretrain/sample.yaml", "--steps",
          "3", "--variants", "fixed-T2", "--task", "dcdft", "--size", "all", "--seeds", "0", "--budget", "2s",
          "--nproc", "1", "--work", str(out / "transfer_runs"), "--out", str(out / "transfer_pretrain_ablations.json")],
         ["bench/transfer.py", "curves", "--tasks", "dcdft", "--seeds", "0", "--budget", "2s", "--nproc", "1",
          "--work", str(out / "transfer_runs"), "--out", str(out / "transfer_curves.json")],
         ["bench/transfer.py", "features", "--tasks", "dcdft", "--extractors", "ours_blocks", "ours_readout",
          "composition", "--work", str(out / "transfer_runs"), "--out", str(out / "transfer_features.json")],
         ["bench/speed.py", "--quick", "--threads", "1", "--out", str(out / "speed.json")],
         ["bench/corpus.py", "--n", "2000", "--pool", "300", "--batches", "10", "--workdir",
          str(out / "corpus"), "--out", str(out / "corpus.json")]],
    ]


FULL = [["bench/data.py"], ["bench/model.py"], ["bench/pretrain.py"], ["bench/finetune.py"], ["bench/accuracy.py"],
        ["bench/speed.py"], ["bench/cgcnn_check.py"], ["bench/encoder_search.py"], ["bench/transfer.py", "ablations"],
        ["bench/transfer.py", "pretrain-ablations"], ["bench/transfer.py", "curves"], ["bench/transfer.py", "features"],
        ["bench/corpus.py"]]


def _lane(commands: list[list[str]], start: float, env: dict, capture: bool) -> None:
    """Run `commands` one after the other; a failure raises with the command's output."""
    for command in commands:
        began = time.perf_counter()
        proc = subprocess.run([sys.executable, *command], cwd=ROOT, env=env, capture_output=capture, text=True)
        print(f"[{time.perf_counter() - start:5.0f} s] ({time.perf_counter() - began:4.0f} s) python "
              f"{' '.join(command)}", flush=True)
        if proc.returncode != 0:
            output = (proc.stdout + proc.stderr)[-6000:] if capture else ""
            raise RuntimeError(f"python {' '.join(command)} failed (exit {proc.returncode}):\n{output}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--out", default="work/bench_quick", help="--quick: where the results go")
    args = parser.parse_args(argv)
    start = time.perf_counter()
    if not args.quick:
        _lane(FULL, start, dict(os.environ), capture=False)
    else:
        out = ROOT / args.out
        out.mkdir(parents=True, exist_ok=True)
        env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
        with ThreadPoolExecutor(max_workers=2) as pool:
            for lane in [pool.submit(_lane, commands, start, env, True) for commands in quick_lanes(out)]:
                lane.result()
    print(f"all benchmarks ran in {time.perf_counter() - start:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
