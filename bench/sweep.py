"""A config sweep chosen on the eval split: one Trainer run per (variant, seed) on `bench/quality.py`'s
data, printing the 3-term eval log loss (the default monitor's value; lower is better) and the test
AUCs, which are for the record only.

    python bench/sweep.py --rows 200000 --seeds 0,1,2 --regimes sessions,latent --base '{"model": {"name": "ple"}}' \\
        default='{}' e64='{"model": {"expert_units": [64]}}'

Each variant's sections are merged over `--base`'s, and `training.seed` is set per seed. `--regimes`
names `bench/quality.py`'s data regimes (default: sessions). Results are cached in
DATA_DIR/sweep/ROWS/LABEL_SEED.json for sessions and DATA_DIR/sweep/REGIME/ROWS/LABEL_SEED.json for
the others (a label names one config: change the label when you change its config).
"""

from __future__ import annotations

import argparse
import json
import pathlib
import statistics
import sys

import quality


def merged(base: dict, variant: dict, seed: int) -> dict:
    config = {section: dict(values) for section, values in base.items()}
    for section, values in variant.items():
        config[section] = {**config.get(section, {}), **values}
    config["training"] = {**config.get("training", {}), "seed": seed}
    return config


def eval_sum(run: dict) -> float:
    return sum(run["eval"][f"{task}_logloss"] for task in ("ctr", "cvr", "ctcvr"))


def _variant(text: str) -> tuple[str, dict]:
    label, sep, config = text.partition("=")
    if not sep or not label:
        raise argparse.ArgumentTypeError(f"a variant is LABEL=JSON, got {text!r}")
    try:
        value = json.loads(config)
    except json.JSONDecodeError as e:
        raise argparse.ArgumentTypeError(f"variant {label}: not JSON ({e})") from None
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError(f"variant {label}: a JSON object of config sections, got {config!r}")
    return label, value


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("variants", nargs="+", type=_variant, help="LABEL=JSON config sections over --base")
    parser.add_argument("--rows", type=int, default=200000, help="synthetic rows (default: %(default)s)")
    parser.add_argument("--seeds", default="0,1,2", help="comma-separated training seeds (default: %(default)s)")
    parser.add_argument("--regimes", default="sessions", help="comma-separated data regimes (default: %(default)s)")
    parser.add_argument("--base", type=json.loads, default={}, help="JSON config every variant starts from")
    parser.add_argument("--data-dir", default="bench/.data", help="where data and results are cached")
    args = parser.parse_args()
    seeds = [int(s) for s in args.seeds.split(",")]
    regimes = [r for r in args.regimes.split(",") if r]
    if set(regimes) - set(quality.REGIMES):
        parser.error(f"--regimes: unknown {sorted(set(regimes) - set(quality.REGIMES))}; known: {quality.REGIMES}")
    for regime in regimes:
        sweep(regime, args.rows, seeds, args.base, args.variants, pathlib.Path(args.data_dir))


def sweep(regime: str, rows: int, seeds: list, base: dict, variants: list, data_dir: pathlib.Path) -> None:
    folder, _ = quality.prepare(rows, data_dir, regime)
    cache = data_dir / "sweep" / (str(rows) if regime == "sessions" else f"{regime}/{rows}")
    print(
        f"\n| {regime}, {rows:,} rows: variant | eval, 3 terms: mean (min-max) | eval AUC CTR / CTCVR (mean) "
        "| test AUC CTR / CVR / CTCVR (mean) | ex/s |"
    )
    print("|---|---|---|---|---:|")
    for label, variant in variants:
        runs = []
        for seed in seeds:
            config = merged(base, variant, seed)
            out = cache / "runs" / f"{label}_{seed}"
            run = quality._cached(
                cache / f"{label}_{seed}.json",
                lambda: quality._run(
                    [
                        sys.executable,
                        "-c",
                        quality._TRAIN,
                        str(folder.resolve()),
                        str(out.resolve()),
                        json.dumps(config),
                    ]
                ),
            )
            print(f"  {regime} {label} seed {seed}: eval {eval_sum(run):.4f}", file=sys.stderr, flush=True)
            runs.append(run)
        sums = [eval_sum(r) for r in runs]
        evals = " / ".join(
            f"{statistics.mean(r['eval'][f'{task}_auc'] for r in runs):.4f}" for task in ("ctr", "ctcvr")
        )
        tests = " / ".join(
            f"{statistics.mean(r['test'][f'{task}_auc'] for r in runs):.4f}" for task in ("ctr", "cvr", "ctcvr")
        )
        rate = statistics.mean(r["train_examples_per_second"] or float("nan") for r in runs)
        print(
            f"| {label} | {statistics.mean(sums):.4f} ({min(sums):.4f}-{max(sums):.4f}) | {evals} | {tests} "
            f"| {rate:,.0f} |",
            flush=True,
        )


if __name__ == "__main__":
    main()
