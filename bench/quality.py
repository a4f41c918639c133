"""The quality benchmark: how well each model ranks, against a ceiling, a linear baseline and a peer.

For each data regime (`REGIMES`: `mtrank synth aliccp --regime` and `mtrank synth aliexpress`) and
size (200,000 sessions rows is the main job's data, `make run`) it runs ExampleGen and Transform once,
then prints test AUC mean ± std over the training seeds of CTR, CVR (clicked rows) and CTCVR for:
- the generator's Bayes-optimal ceiling (true probabilities as scores, `synth.json`);
- scikit-learn's logistic regression on the same ExampleGen output (bench/sklearn_logistic.py;
  deterministic, so one fit);
- every model of `--models` at the Trainer's defaults (`trainer.config`), `logistic` being the
  solved linear reference the Evaluator compares against (`--large-models` at 1M rows and more),
  with the early stopping kept, training seconds and examples/s;
- DeepCTR 0.9.4's MMOE and PLE on the same transformed ids at its usual settings
  (bench/deepctr_peer.py), in the same run;
and below each table the quality floors: the solved `logistic` within 0.005 CTR AUC of
scikit-learn's, every multi-task model above `logistic` on CTR (and CTCVR where the test split holds
500 conversions), and at 1M rows MMoE and PLE within 0.003 of DeepCTR's and 0.01 CTR AUC above
`logistic`. Each cell runs in a process of its own; results are cached in DATA_DIR/quality/, so a
rerun only runs what is missing (delete the folder to measure again).
`--plot PNG` draws eval AUC against training steps for MMoE on the largest sessions size, at this
code's defaults and, with `--before REV`, at a git revision's (its code checked out into a worktree).
Usage: python bench/quality.py [--regimes sessions,latent,...] [--sizes 100000,200000,1000000]
                               [--seeds 3] [--models mmoe,ple,...] [--large-models logistic,mmoe,ple]
                               [--peers mmoe,ple] [--data-dir bench/.data] [--plot PNG] [--before REV]
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import subprocess
import sys

import numpy as np

from trainer.config import MODEL_NAMES

AUCS = ("ctr_auc", "cvr_auc", "ctcvr_auc")
ZOO = tuple(MODEL_NAMES) + ("mmoe+mtn",)
_TRAIN = """
import json, sys
from trainer import train
transformed, out, config = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
r = train.train(transformed, out, config, overwrite=True, export_model=False)
print(json.dumps({k: r.get(k) for k in ("model", "seed", "test", "eval", "best_epoch", "best_step", "epochs_done",
                                        "history", "seconds", "train_examples_per_second", "params", "rows",
                                        "solver", "resolved")},
                 default=float))
"""


def _run(command: list, env: dict | None = None, cwd: str | None = None) -> dict:
    result = subprocess.run(command, capture_output=True, text=True, env=env, cwd=cwd)
    if result.returncode:
        sys.exit(f"quality benchmark child failed: {' '.join(command[:4])}...\n{result.stderr[-3000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def _cached(path: pathlib.Path, measure) -> dict:
    if path.exists():
        return json.loads(path.read_text())
    result = measure()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, default=float))
    return result


REGIMES = ("sessions", "sparse", "cold-users", "latent", "aliexpress")


def prepare(rows: int, data_dir: pathlib.Path, regime: str = "sessions") -> tuple[pathlib.Path, dict]:
    """(folder with ExampleGen's and Transform's outputs, synth.json) for `rows` synthetic rows of a
    regime (`mtrank synth aliccp --regime`, or `aliexpress`), made as `mtrank run` makes its data
    (seed 0; Ali-CCP with 0.1% malformed lines)."""
    from synth import aliccp, aliexpress

    folder = data_dir / (f"quality_{rows}" if regime == "sessions" else f"quality_{regime}_{rows}")
    raw = folder / "raw"
    if not (raw / "synth.json").exists():
        if regime == "aliexpress":
            aliexpress.generate(aliexpress.AliexpressSynthConfig(rows=rows, seed=0), str(raw))
        else:
            config = aliccp.for_regime(regime, rows=rows, seed=0, malformed_rate=0.001)
            aliccp.generate(config, str(raw), progress=False)
    mtrank = str(pathlib.Path(sys.executable).with_name("mtrank"))
    data_format = "aliexpress" if regime == "aliexpress" else "aliccp-raw"
    if not (folder / "stats.json").exists():
        subprocess.run(
            [mtrank, "ingest", "--format", data_format, "--input", str(raw), "--output", str(folder), "--overwrite"],
            check=True,
            capture_output=True,
        )
    if not (folder / "transformed" / "stats.json").exists():
        subprocess.run(
            [mtrank, "transform", "--examples", str(folder), "--output", str(folder), "--overwrite"],
            check=True,
            capture_output=True,
        )
    return folder, json.loads((raw / "synth.json").read_text())


def checkout(data_dir: pathlib.Path, revision: str) -> pathlib.Path:
    """A git worktree of `revision` under `data_dir` (made once), for runs of another revision's code."""
    worktree = data_dir / f"worktree_{revision}"
    if not worktree.exists():
        subprocess.run(["git", "worktree", "add", "--detach", str(worktree), revision], check=True)
    return worktree


def zoo_config(name: str, seed: int) -> dict:
    model = "mmoe" if name == "mmoe+mtn" else name
    config = {"model": {"name": model}, "training": {"seed": seed}}
    if name == "mmoe+mtn":
        config["mtn"] = {}
    return config


def train_zoo(folder: pathlib.Path, cache: pathlib.Path, name: str, seed: int, code_dir: str | None = None) -> dict:
    """One Trainer run at the defaults (`code_dir`: another checkout's code, for --before)."""
    out = cache / "runs" / f"{name}_{seed}{'_before' if code_dir else ''}"
    env = {**os.environ, "PYTHONPATH": code_dir} if code_dir else None
    return _run(
        [sys.executable, "-c", _TRAIN, str(folder.resolve()), str(out.resolve()), json.dumps(zoo_config(name, seed))],
        env=env,
        cwd=code_dir,
    )


def _mean(runs: list, key: str) -> float:
    return float(np.mean([r["test"][key] for r in runs]))


def _mean_std(runs: list, key: str) -> str:
    values = np.array([r["test"][key] for r in runs], np.float64)
    return f"{values.mean():.4f} ± {values.std(ddof=1) if len(values) > 1 else 0.0:.4f}"


MULTI_TASK = ("shared_bottom", "omoe", "mmoe", "cgc", "ple", "esmm", "aitm", "fdn", "mmoe+mtn")
HELD_POSITIVES = 500  # CVR and CTCVR are held to a floor only with this many test positives


def floors(rows: int, logistic: dict, results: dict) -> list[str]:
    """The quality issue's floors on this table: each line says which comparison holds or fails."""
    test = logistic["test"]
    held = {"ctr_auc": True, "cvr_auc": test["conversions"] >= HELD_POSITIVES}
    held["ctcvr_auc"] = held["cvr_auc"]
    reference = results.get("logistic")
    lines = []
    if reference:
        gap = _mean(reference, "ctr_auc") - test["ctr_auc"]
        lines.append(f"- {'ok' if abs(gap) <= 0.005 else 'FAILS'}: logistic (solved) vs scikit-learn CTR {gap:+.4f}")
    for name in MULTI_TASK:
        if not results.get(name) or not reference:
            continue
        for key in ("ctr_auc", "ctcvr_auc"):
            if held[key]:
                lift = _mean(results[name], key) - _mean(reference, key)
                need = 0.01 if rows >= 1_000_000 and name in ("mmoe", "ple") and key == "ctr_auc" else 0.0
                verdict = "ok" if lift > need else "FAILS"
                lines.append(f"- {verdict}: {name} over logistic {key} {lift:+.4f} (floor > {need:+.2f})")
    if rows >= 1_000_000:
        for ours, peer in (("mmoe", "DeepCTR MMOE"), ("ple", "DeepCTR PLE")):
            for name in ("mmoe", "ple"):
                if not results.get(name) or not results.get(peer):
                    continue
                for key in ("ctr_auc", "ctcvr_auc"):
                    if held[key]:
                        gap = _mean(results[name], key) - _mean(results[peer], key)
                        lines.append(f"- {'ok' if gap >= -0.003 else 'FAILS'}: {name} vs {peer} {key} {gap:+.4f}")
    return lines


def table(regime: str, rows: int, synth: dict, logistic: dict, results: dict) -> list[str]:
    bayes = synth["bayes_auc"]["test"]
    test = logistic["test"]
    lines = [
        f"\n### {regime}, {rows:,} rows (test: {test['rows']:,} rows, {test['clicks']:,} clicks, "
        f"{test['conversions']:,} conversions)\n",
        "| model | test AUC CTR | CVR (clicked) | CTCVR | seeds | stopped at epoch (step) | train s | train ex/s |",
        "|---|---|---|---|---:|---|---:|---:|",
        f"| Bayes-optimal ceiling | {bayes['ctr']:.4f} | {bayes['cvr']:.4f} | {bayes['ctcvr']:.4f} | | | | |",
        f"| scikit-learn logistic regression (C {logistic['C']['ctr']:g} / {logistic['C']['cvr']:g}) "
        f"| {test['ctr_auc']:.4f} | {test['cvr_auc']:.4f} | {test['ctcvr_auc']:.4f} | 1 | | | |",
    ]
    for name, runs in results.items():
        if not runs:
            continue
        epochs = ", ".join(
            "solved"
            if r.get("solver")
            else f"{r['best_epoch']:g}" + (f" ({r['best_step']})" if r.get("best_step") else "")
            for r in runs
        )
        seconds = np.mean([r["seconds"]["train"] if "seconds" in r else np.nan for r in runs])
        rate = np.mean([r["train_examples_per_second"] or np.nan for r in runs])
        lines.append(
            f"| {name} | {_mean_std(runs, 'ctr_auc')} | {_mean_std(runs, 'cvr_auc')} | "
            f"{_mean_std(runs, 'ctcvr_auc')} | {len(runs)} | {epochs} | "
            f"{'' if np.isnan(seconds) else f'{seconds:.0f}'} | {'' if np.isnan(rate) else f'{rate:,.0f}'} |"
        )
    lines.append("")
    return lines + floors(rows, logistic, results)


def plot(path: str, runs: dict, rows: int) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(1, 3, figsize=(15, 4))
    for label, run in runs.items():
        history = run["history"]
        steps = [e.get("step") or e["epoch"] * (run["rows"]["train"] // 2048) for e in history]
        for axis, key in zip(axes, AUCS):
            axis.plot(steps, [e[f"val_{key}"] for e in history], marker="o", label=label)
            axis.set_title(f"eval {key.replace('_', ' ').upper()}")
            axis.set_xlabel("training steps (batch 2,048)")
    axes[0].legend()
    figure.suptitle(f"MMoE, {rows:,} synthetic rows: eval AUC during training")
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    print(f"\nwrote {path}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="100000,200000,1000000", help="rows per data set (default: %(default)s)")
    parser.add_argument("--regimes", default=",".join(REGIMES), help="data regimes (default: all)")
    parser.add_argument("--seeds", type=int, default=3, help="training seeds per model (default: %(default)s)")
    parser.add_argument("--models", default=",".join(ZOO), help="zoo models (default: all, and mmoe+mtn)")
    parser.add_argument("--large-models", default="logistic,mmoe,ple", help="the zoo models at 1M rows and more")
    parser.add_argument("--peers", default="mmoe,ple", help="DeepCTR models, or '' for none (default: %(default)s)")
    parser.add_argument("--data-dir", default="bench/.data", help="where data and results are cached")
    parser.add_argument("--plot", help="PNG of MMoE's eval AUC against steps on the largest sessions size")
    parser.add_argument("--before", help="a git revision whose defaults the plot also shows")
    args = parser.parse_args()
    models = [m for m in args.models.split(",") if m]
    large = [m for m in args.large_models.split(",") if m]
    peers = [p for p in args.peers.split(",") if p]
    regimes = [r for r in args.regimes.split(",") if r]
    if set(models + large) - set(ZOO):
        sys.exit(f"--models: unknown {sorted(set(models + large) - set(ZOO))}; known: {', '.join(ZOO)}")
    if set(peers) - {"mmoe", "ple"}:
        sys.exit("--peers: DeepCTR's mmoe and ple only")
    if set(regimes) - set(REGIMES):
        sys.exit(f"--regimes: unknown {sorted(set(regimes) - set(REGIMES))}; known: {', '.join(REGIMES)}")
    data_dir = pathlib.Path(args.data_dir)
    sizes = [int(n) for n in args.sizes.split(",")]
    here = pathlib.Path(__file__).parent
    lines = ["## Ranking quality: test AUC, mean ± std over training seeds"]
    for regime in regimes:
        for rows in sizes:
            folder, synth = prepare(rows, data_dir, regime)
            cache = data_dir / "quality" / (str(rows) if regime == "sessions" else f"{regime}/{rows}")
            print(f"  {regime} {rows:,} rows: data ready in {folder}", file=sys.stderr, flush=True)
            logistic = _cached(
                cache / "sklearn_logistic.json",
                lambda: _run([sys.executable, str(here / "sklearn_logistic.py"), str(folder)]),
            )
            results = {}
            for name in large if rows >= 1_000_000 else models:
                seeds = range(1 if name == "logistic" else args.seeds)  # the solve is deterministic
                results[name] = [
                    _cached(cache / f"{name}_{seed}.json", lambda: train_zoo(folder, cache, name, seed))
                    for seed in seeds
                ]
                print(f"  {regime} {rows:,} rows: {name} done", file=sys.stderr, flush=True)
            for peer in peers:
                results[f"DeepCTR {peer.upper()}"] = [
                    _cached(
                        cache / f"deepctr_{peer}_{seed}.json",
                        lambda: _run([sys.executable, str(here / "deepctr_peer.py"), str(folder), peer, str(seed)]),
                    )
                    for seed in range(args.seeds)
                ]
                print(f"  {regime} {rows:,} rows: DeepCTR {peer} done", file=sys.stderr, flush=True)
            lines += table(regime, rows, synth, logistic, results)
            print("\n".join(lines[-len(results) - 12 :]), file=sys.stderr, flush=True)
    print("\n".join(lines))
    if args.plot:
        rows = max(sizes)
        folder, _ = prepare(rows, data_dir)
        cache = data_dir / "quality" / str(rows)
        runs = {"this code's defaults": _cached(cache / "mmoe_0.json", lambda: train_zoo(folder, cache, "mmoe", 0))}
        if args.before:
            worktree = checkout(data_dir, args.before)
            runs[f"defaults at {args.before}"] = _cached(
                cache / f"mmoe_0_before_{args.before}.json",
                lambda: train_zoo(folder, cache, "mmoe", 0, code_dir=str(worktree.resolve())),
            )
        plot(args.plot, runs, rows)
        if args.before:
            ours, theirs = (r["train_examples_per_second"] for r in runs.values())
            print(
                f"MMoE training examples/s at {rows:,} rows, one seed, in this run: this code {ours:,.0f}, "
                f"{args.before} {theirs:,.0f} (ratio {ours / theirs:.2f})"
            )


if __name__ == "__main__":
    main()
