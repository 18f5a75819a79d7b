"""Ridge regression on frozen encoder features: the perovskites' heat of formation (`heat_all`).

    python examples/ridge_perovskites.py                                  # runs/sample/export, all 3,787
    python examples/ridge_perovskites.py --checkpoint CKPT --limit 1000

Embeds every perovskite with `foundation.load_encoder(...).embed` (the mean of the encoder's
per-atom invariants), fits scikit-learn's RidgeCV on standardised features of a fixed random 80 %
of them and prints the test MAE next to the mean baseline (predict the training mean).
`heat_all` is the formation energy of the 5-atom cell in eV (the matbench_perovskites target).
"""

from __future__ import annotations

import argparse
import itertools
import time
from pathlib import Path

import numpy as np
from sklearn.linear_model import RidgeCV
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from foundation import Crystal, load_encoder
from foundation.data.readers import read

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data" / "perovskites" / "perov5_val.csv"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkpoint", default=str(ROOT / "runs" / "sample" / "export"))
    parser.add_argument("--data", type=Path, default=DATA)
    parser.add_argument("--limit", type=int, default=None, help="use the first N perovskites")
    parser.add_argument("--test-fraction", type=float, default=0.2)
    parser.add_argument("--seed", type=int, default=0, help="seed of the train/test split")
    parser.add_argument("--batch-size", type=int, default=256)
    args = parser.parse_args()

    crystals = [c for c in itertools.islice(read(args.data), args.limit)
                if isinstance(c, Crystal) and "formation_energy" in c.targets]
    y = np.array([c.targets["formation_energy"] for c in crystals])  # [n] eV per cell (heat_all)

    embedder = load_encoder(args.checkpoint)
    start = time.perf_counter()
    features = embedder.embed(crystals, batch_size=args.batch_size, progress=True)  # [n, F]
    seconds = time.perf_counter() - start

    order = np.random.default_rng(args.seed).permutation(len(y))
    n_test = int(round(args.test_fraction * len(y)))
    test, train = order[:n_test], order[n_test:]
    ridge = make_pipeline(StandardScaler(), RidgeCV(alphas=np.logspace(-4, 4, 17)))
    ridge.fit(features[train], y[train])
    mae = np.abs(ridge.predict(features[test]) - y[test]).mean()
    baseline = np.abs(y[train].mean() - y[test]).mean()

    print(f"checkpoint       {args.checkpoint}")
    print(f"structures       {len(y)} ({len(train)} train / {len(test)} test, seed {args.seed})")
    print(f"features         {features.shape[1]} per structure, embedded in {seconds:.1f} s "
          f"({len(y) / seconds:.0f} structures/s)")
    print(f"ridge alpha      {ridge[-1].alpha_:g}")
    print(f"test MAE ridge   {mae:.4f} eV")
    print(f"test MAE mean    {baseline:.4f} eV   (predicting the training mean)")


if __name__ == "__main__":
    main()
