"""What common random numbers buy: seed-to-seed correlation of paired configurations under each seeding scheme.

A paired comparison of two configurations at one seed gains only as much as their results correlate across
seeds. This benchmark trains bn, conv0.2, dense0.5 and conv0.2+dense0.5 (the post's networks, narrowed) at the
same seeds under `Recipe.seeding` "global" (Keras's one stream: at one seed, bn and conv0.2 share only their
first kernel) and "per-layer" (every layer of the same name and shape starts from the same values; dropout masks
from (seed, layer, step)); both schemes train on one data order per (seed, epoch). Per pair and scheme it
reports the Pearson correlation of the final test accuracies with its 95% interval (Fisher z), the sd of the
paired differences, and the ratio of those sds per-layer/global with a paired bootstrap interval over seeds.

    python benchmarks/bench_seeding.py --data /tmp/cifar10.npz --out benchmarks/results/seeding-cpu

The data is real CIFAR-10 (`--data`: any source `load_cifar10` reads), its first `--train-size` training and
`--test-size` test images class by class. Every run trains alone (`training.train`, the one-by-one path), on
the backend Keras is set to (TensorFlow ran fastest on CPU). Finished runs are kept as
one file per run in `--out`/runs/, each claimed before it trains (delete a killed run's `.claim` to retrain it):
a rerun continues where one stopped, and
processes started side by side share the runs (the summary is written by the one that finds all runs done).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np
import scipy
import scipy.stats
from tabulate import tabulate

CONFIG_NAMES = ("bn", "conv0.2", "dense0.5", "conv0.2+dense0.5")
PAIRS = (("bn", "conv0.2"), ("bn", "dense0.5"), ("conv0.2", "conv0.2+dense0.5"))
SCHEMES = ("global", "per-layer")  # old, new
WIDTH = 8  # networks 1/WIDTH as wide as the post's


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", required=True, help="CIFAR-10 (an .npz, the tarball or a batches folder)")
    parser.add_argument("--out", required=True, help="folder for runs/, seeding.json and seeding.md")
    parser.add_argument("--seeds", type=int, default=8)
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--train-size", type=int, default=4000)
    parser.add_argument("--test-size", type=int, default=2000)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--machine", default=f"{os.cpu_count()} CPU cores ({platform.processor() or platform.machine()})",
                        help="the machine, in words, for the table")
    return parser.parse_args(argv)


def configs() -> dict:
    """The four networks, 1/WIDTH as wide as the post's (filters and dense units)."""
    from kt_dropout.study.experiments import CONFIGS

    return {name: CONFIGS[name].replace(nfilters=tuple(f // WIDTH for f in CONFIGS[name].nfilters),
                                        ndense=CONFIGS[name].ndense // WIDTH) for name in CONFIG_NAMES}


def train_all(args, runs: Path) -> dict:
    """{scheme: {seed: {config: final test accuracy}}}, training the runs not yet in folder `runs` (one JSON file
    per run). Each run is claimed first (an exclusive `.claim` file), so several processes share the work."""
    from kt_dropout.config import Recipe
    from kt_dropout.data.cifar10 import data_fingerprint, first_per_class, load_cifar10
    from kt_dropout.training.run import train

    runs.mkdir(exist_ok=True)
    data = first_per_class(load_cifar10(args.data), args.train_size, args.test_size)
    for seed in range(args.seeds):
        for scheme in SCHEMES:
            recipe = Recipe(batch_size=args.batch_size, epochs=args.epochs, seeding=scheme)
            for name, config in configs().items():
                path = runs / f"{scheme}-{seed}-{name}.json"
                if path.exists():
                    continue
                try:
                    (runs / f"{path.name}.claim").touch(exist_ok=False)
                except FileExistsError:
                    continue
                record = train(config, data, recipe=recipe, seed=seed, name=name, verbose=0,
                               data_fingerprint=data_fingerprint(data))
                path.write_text(json.dumps({"scheme": scheme, "seed": seed, "name": name,
                                            "final_val_accuracy": record.final_val_accuracy}))
                print(f"{scheme} seed {seed} {name}: {record.final_val_accuracy:.4f} ({record.seconds:.0f} s)",
                      flush=True)
    results = {}
    for path in runs.glob("*.json"):
        run = json.loads(path.read_text())
        results.setdefault(run["scheme"], {}).setdefault(str(run["seed"]), {})[run["name"]] = run["final_val_accuracy"]
    return results


def _sd_ratio(new_a, new_b, old_a, old_b, axis=-1):
    return np.std(new_a - new_b, ddof=1, axis=axis) / np.std(old_a - old_b, ddof=1, axis=axis)


def summarize(runs: dict, seeds: int) -> list[dict]:
    """One row per (pair, scheme): r [95% CI], sd of the paired difference; per-layer rows add the sd ratio."""
    def accuracies(scheme, name):
        return np.array([runs[scheme][str(seed)][name] for seed in range(seeds)])

    rows = []
    for a, b in PAIRS:
        for scheme in SCHEMES:
            x, y = accuracies(scheme, a), accuracies(scheme, b)
            r = scipy.stats.pearsonr(x, y)
            ci = r.confidence_interval(0.95)
            row = {"pair": f"{a} vs {b}", "seeding": scheme, "r": float(r.statistic), "r_low": float(ci.low),
                   "r_high": float(ci.high), "mean_diff": float(np.mean(x - y)), "sd_diff": float(np.std(x - y, ddof=1))}
            if scheme == "per-layer":
                samples = (x, y, accuracies("global", a), accuracies("global", b))
                boot = scipy.stats.bootstrap(samples, _sd_ratio, paired=True, vectorized=True, n_resamples=9999,
                                             method="percentile", random_state=np.random.default_rng(0))
                row.update(sd_ratio=float(_sd_ratio(*samples)), sd_ratio_low=float(boot.confidence_interval.low),
                           sd_ratio_high=float(boot.confidence_interval.high))
            rows.append(row)
    return rows


def table(rows: list[dict]) -> str:
    body = [[row["pair"], row["seeding"], f"{row['r']:+.2f} [{row['r_low']:+.2f}, {row['r_high']:+.2f}]",
             f"{row['mean_diff']:+.4f}", f"{row['sd_diff']:.4f}",
             f"{row['sd_ratio']:.2f} [{row['sd_ratio_low']:.2f}, {row['sd_ratio_high']:.2f}]" if "sd_ratio" in row else ""]
            for row in rows]
    return tabulate(body, headers=["pair", "seeding", "Pearson r [95% CI, Fisher z]", "mean diff",
                                   "sd of paired diff", "sd ratio per-layer/global [95% bootstrap CI]"],
                    tablefmt="github")


def versions() -> dict:
    import keras

    backend = keras.backend.backend()
    module = {"tensorflow": "tensorflow", "jax": "jax", "torch": "torch"}[backend]
    return {"python": platform.python_version(), "keras": keras.__version__, "backend": backend,
            backend: __import__(module).__version__, "numpy": np.__version__, "scipy": scipy.__version__}


def main(argv=None) -> None:
    args = parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    runs = train_all(args, out / "runs")
    missing = args.seeds * len(SCHEMES) * len(CONFIG_NAMES) - sum(len(r) for s in runs.values() for r in s.values())
    if missing:
        print(f"{missing} runs still training in other processes; the last to finish writes the summary")
        return
    rows = summarize(runs, args.seeds)
    sizes = {"train_images": args.train_size, "test_images": args.test_size, "seeds": args.seeds,
             "epochs": args.epochs, "batch_size": args.batch_size, "width": f"1/{WIDTH}",
             "nfilters": list(configs()["bn"].nfilters), "ndense": configs()["bn"].ndense}
    about = {"machine": args.machine, "versions": versions(), "date": datetime.datetime.now(datetime.UTC).isoformat(
        timespec="seconds"), "sizes": sizes, "data": "CIFAR-10 (JPEG copy), first images class by class",
        "accuracy": "test accuracy after the last epoch",
        "seconds_of_the_summarizing_process": round(time.perf_counter() - start)}
    (out / "seeding.json").write_text(json.dumps({**about, "rows": rows}, indent=1))
    text = (f"# Seeding benchmark: {args.machine}\n\n{about['date']}; {json.dumps(about['versions'])}\n\n"
            f"{args.train_size} training / {args.test_size} test images ({about['data']}), networks {sizes['width']} "
            f"wide (filters {sizes['nfilters']}, dense {sizes['ndense']}), {args.seeds} seeds, {args.epochs} epochs, "
            f"batch {args.batch_size}; accuracy: {about['accuracy']}; one data order per (seed, epoch) in both "
            f"schemes.\n\n{table(rows)}\n")
    (out / "seeding.md").write_text(text)
    print(text)


if __name__ == "__main__":
    sys.exit(main())
