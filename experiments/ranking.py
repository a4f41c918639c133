"""What the ranking experiments (`mtn`, `mtn-noise`, `mtn-placement`) share: their data, made once
per run, one cell trained by the project's Trainer, and the AUC tables.

Data. Without --data: synthetic raw Ali-CCP (`synth.aliccp`), one draw per run. Its
generator knows every row's true click and conversion probabilities, and their AUCs on the test
split (the Bayes-optimal AUCs) are the ceiling the tables show. With --data: a folder of real
data whose format is told from its file names and first lines (`bind_data`); no ceiling is known.
ExampleGen runs once, and Transform once per noise proportion (noise on the training split only,
seeded by `data.seed`), into OUT/data/. Each step is marked finished by a done.json holding its
settings, so a resumed run reuses it. Every seed trains on the same data: a Beam pipeline costs
40-120 s here, longer than a quick cell trains; the seed varies initialisation and batch order.

A cell is `trainer.train.train` on the Transform output with a config made from the experiment's
settings (`trainer_config`), into a scratch folder removed afterwards; OUT/runs/<cell>/trainer.json
keeps the Trainer's own metrics.json (history, MTN alphas). The cell's metrics are the test-split
AUCs of the Trainer's result (CTR on all rows, CVR on clicked rows, CTCVR on all rows): of the
trained network on Transform's test split. The full scale also exports the SavedModel.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import json
import multiprocessing
import os
import shutil
import tempfile
import typing

from common import layout
from experiments import grid, report
from experiments.base import DataError

TASKS = ("ctr", "cvr", "ctcvr")
TASK_TITLES = {"ctr": "CTR AUC", "cvr": "CVR AUC", "ctcvr": "CTCVR AUC"}
SYNTHETIC = "synthetic"
CEILING_LABEL = "Bayes-optimal (true probabilities)"
MODELS = {"mmoe": "MMoE", "esmm": "ESMM", "shared_bottom": "Shared-bottom"}
# The convergence gate's arm: the zoo's linear baseline, trained on every noise level and seed of a
# ranking experiment. A comparison is judged only when its baseline arm beats it (report.Comparison).
REFERENCE = ("logistic", "reference")
REFERENCE_LABEL = "logistic (the linear baseline)"


def is_reference(cell: grid.Cell) -> bool:
    return (cell.variant, cell.regularizer) == REFERENCE


def reference_auc(records, task: str, noise: float = 0.0) -> dict | None:
    """{seed: the reference's test AUC on `task`} at a noise level; None when the run has no
    reference cells (then there is no gate)."""
    found = {
        r.cell.seed: r.metrics[f"{task}_auc"]
        for r in records
        if is_reference(r.cell) and r.cell.noise == noise and f"{task}_auc" in r.metrics
    }
    return found or None


def reference_row(records, column_of) -> list:
    """The reference as a table row (`column_of(task, noise)` -> its columns' titles), or nothing."""
    noises = sorted({r.cell.noise for r in records if is_reference(r.cell)})
    row = {
        column: values
        for task in TASKS
        for noise in noises
        if (values := reference_auc(records, task, noise))
        for column in column_of(task, noise)
    }
    return [report.Row(REFERENCE_LABEL, row)] if row else []


@dataclasses.dataclass(frozen=True)
class DataSettings:
    """Where the data comes from. `rows`, `ctr`, `cvr`: the synthetic generator's (None for real
    data); `seed`: the synthetic draw's and the noise injection's."""

    source: str = SYNTHETIC  # or the absolute path of the --data folder
    format: str = "aliccp-raw"
    rows: typing.Optional[int] = 50_000
    # Real Ali-CCP has about 4% clicks and 0.6% conversions per click. At those rates a
    # quick-sized test split would hold a handful of conversions and no usable CVR AUC.
    ctr: typing.Optional[float] = 0.1
    cvr: typing.Optional[float] = 0.2
    seed: int = 0
    eval_fraction: float = 0.1  # of the training file, for early stopping (ExampleGen's split)
    noise_feature_prob: float = 0.2  # the MTN paper's noise: each feature of a noisy row replaced with this chance


@dataclasses.dataclass(frozen=True)
class Settings:
    """What every ranking experiment sets; an experiment subclasses it to add its own axes."""

    seeds: int = 3
    data: DataSettings = DataSettings()
    embedding_dim: int = 8
    expert_units: tuple = (64, 32)  # each expert; the shared bottom; ESMM's networks before their towers
    tower_units: tuple = (16,)
    num_experts: int = 4  # MMoE
    epochs: int = 2
    batch_size: int = 512
    # At 1e-3 (the Trainer's default) MMoE's test CTR AUC is 0.58 after 2 epochs of 70 steps; at
    # 1e-2, 0.63 (one run without MTN, seed 0). Both arms of every comparison use the same rate.
    learning_rate: float = 1e-2
    patience: int = 2  # evaluations without a better monitor value before the Trainer stops
    # The MTN paper's selection: eval CVR AUC once per epoch. The Trainer's own default is "logloss"
    # (the three log losses summed) 4 times an epoch, which the quality benchmark chose on eval.
    monitor: str = "cvr_auc"
    evals_per_epoch: int = 1
    # The multi-task models' conversion loss, ESMM aside (its own is always "esmm"): ours, "esmm"
    # (CTR and CTCVR over all impressions); "impressions": MTReclib's, the second head trained on the
    # conversion label over all impressions (trainer.config's loss conventions).
    conversion_loss: str = "esmm"
    lam: float = 1e-5  # the MTN paper's lambda
    # The MTN paper's choice of lambda on validation: each MTN arm runs once per value here (the
    # cells' `lam` axis) and the report keeps, per arm, noise level and seed, the run with the best
    # validation monitor value (`select_lambda`). Empty: `lam` alone.
    lams: tuple = ()
    alpha_floor: float = 0.5  # trainer.config's default
    subsets: str = "modes"  # MTN's alphas: trainer.config's default; "all" is the paper's 7
    xla: bool = False
    # True: the cell also writes the SavedModel (about 20 s a run here). Either way the test split
    # is scored by the trained network on Transform's test split.
    export_model: bool = False
    preset: str = "project"  # experiments.presets


# The quick scale every ranking experiment starts from: models trained to early stopping at the
# Trainer's defaults (trainer/config.py: its sizes, batch 2,048, Adam 1e-3 with its decay, the
# summed eval log loss 4 times an epoch, patience 4) on 200,000 synthetic rows. The older quick
# training (2 epochs at 1e-2, batch 512, experts [64, 32]) stopped at its first epoch in 18 of 20
# ablation runs and collapsed PLE at the FDN paper's sizes to an AUC of 0.51, below `logistic`.
QUICK = Settings(
    seeds=5,
    data=dataclasses.replace(DataSettings(), rows=200_000),
    embedding_dim=16,
    expert_units=(128, 64),
    tower_units=(64,),
    num_experts=8,
    epochs=10,
    batch_size=2048,
    learning_rate=1e-3,
    patience=4,
    monitor="logloss",
    evals_per_epoch=4,
    xla=True,
)

# The paper-sized setting every MTN experiment's `--scale full` starts from: the same sizes on a
# million synthetic rows, eval CVR AUC once an epoch, the SavedModel exported; for a GPU.
FULL = dataclasses.replace(
    QUICK,
    data=dataclasses.replace(DataSettings(), rows=1_000_000),
    patience=3,
    monitor="cvr_auc",
    evals_per_epoch=1,
    export_model=True,
)


def scaled(base: Settings, settings_class=Settings, **changes) -> Settings:
    """`base` (QUICK or FULL) as an experiment's own Settings subclass (its added axes at their
    defaults), changed."""
    return settings_class(**{**{f.name: getattr(base, f.name) for f in dataclasses.fields(Settings)}, **changes})


def quick_scale(settings_class=Settings, **changes) -> Settings:
    return scaled(QUICK, settings_class, **changes)


def full_scale(settings_class=Settings, **changes) -> Settings:
    return scaled(FULL, settings_class, **changes)


# --- the data ----------------------------------------------------------------------------------


def detect_format(folder: str) -> str:
    """The ExampleGen format of a data folder, checked as ExampleGen checks it (file names and first
    lines, nothing more); DataError naming the folder and what is wrong."""
    from example_gen import beam_pipeline, formats
    from common.beam import InputError

    if not os.path.exists(folder):
        raise DataError(f"--data {folder} does not exist")
    if not os.path.isdir(folder):
        raise DataError(f"--data {folder} is not a folder (give the folder holding the data files)")
    names = set(os.listdir(folder))
    if names & set(beam_pipeline.ALICCP_RAW_FILES):
        data_format = "aliccp-raw"
    elif set(beam_pipeline.ALIEXPRESS_FILES) <= names and _first_line_parses(
        os.path.join(folder, "train.csv"), formats.detect_aliexpress
    ):
        data_format = "aliexpress"
    else:
        data_format = "aliccp-csv"
    try:
        roles, _ = beam_pipeline.discover(beam_pipeline.IngestConfig(format=data_format, input=folder, output=""))
    except InputError as e:
        # ExampleGen names its input --input; here the user gave it as --data.
        problem = str(e).replace("--input ", "--data ")
        if data_format == "aliccp-csv":  # the fallback: say which layouts were looked for
            raw_files = ", ".join(beam_pipeline.ALICCP_RAW_FILES)
            problem = (
                f"--data {folder} holds neither Ali-CCP raw files ({raw_files}), "
                f"nor an AliExpress train.csv and test.csv, nor Ali-CCP CSV files: {problem}"
            )
        raise DataError(problem) from None
    if "test" not in roles.values():
        raise DataError(
            f"--data {folder} has no test file ({data_format}: a file with `test` in its name); "
            "the tables score the test split"
        )
    return data_format


def _first_line_parses(path: str, detect) -> bool:
    with open(path, encoding="utf-8", errors="replace") as f:
        line = f.readline().removeprefix("\ufeff")
    try:
        detect(line)
    except ValueError:
        return False
    return True


def bind_data(settings: Settings, data: str | None) -> Settings:
    """The settings with the --data folder and its format (synthetic, as the scale says, without)."""
    if data is None:
        return settings
    folder = os.path.abspath(data)
    return dataclasses.replace(
        settings,
        data=dataclasses.replace(
            settings.data, source=folder, format=detect_format(folder), rows=None, ctr=None, cvr=None
        ),
    )


def _finished(folder: str, identity: dict) -> bool:
    marker = os.path.join(folder, "done.json")
    if not os.path.exists(marker):
        return False
    with open(marker) as f:
        return json.load(f) == json.loads(json.dumps(identity))


def _done(folder: str, identity: dict, make) -> str:
    """`make()` into `folder` unless a finished run of the same identity is there already."""
    if not _finished(folder, identity):
        make()
        grid.write_json(os.path.join(folder, "done.json"), identity)
    return folder


def _transform(examples: str, folder: str, seed: int, noise: float, feature_prob: float) -> None:
    from pipeline import dag

    dag.transform(examples, folder, seed=seed, noise_proportion=noise, noise_feature_prob=feature_prob)


class Prepared:
    """The run's data, made on first use into OUT/data/: `transformed(noise)` is a Transform output
    folder, `ceiling()` the test split's Bayes-optimal AUCs (None for real data).

    `transformed` and `ceiling` given up front (tests: Transform outputs made elsewhere) are used as
    they are."""

    def __init__(
        self, settings: Settings, out: str, log=print, transformed: dict | None = None, ceiling: dict | None = None
    ):
        self.data, self.out, self.log = settings.data, os.path.abspath(out), log
        self.root = os.path.join(self.out, "data")
        self._transformed = {float(k): v for k, v in (transformed or {}).items()}
        self._ceiling = ceiling

    def _raw(self) -> str:
        if self.data.source != SYNTHETIC:
            return self.data.source
        from synth import aliccp

        config = aliccp.AliccpSynthConfig(
            rows=self.data.rows, seed=self.data.seed, ctr=self.data.ctr, cvr=self.data.cvr
        )
        folder = os.path.join(self.root, "raw")

        def make():
            self.log(f"data: {self.data.rows:,} rows of synthetic Ali-CCP -> {folder}")
            aliccp.generate(config, folder, progress=False)

        return _done(folder, dataclasses.asdict(config), make)

    def examples(self) -> str:
        from pipeline import dag

        raw = self._raw()
        folder = os.path.join(self.root, layout.EXAMPLES)
        identity = {"source": raw, "format": self.data.format, "eval_fraction": self.data.eval_fraction}
        return _done(
            folder,
            identity,
            lambda: dag.example_gen(raw, self.data.format, folder, eval_fraction=self.data.eval_fraction),
        )

    def _transform_job(self, noise: float) -> tuple[str, dict, tuple]:
        """(folder, identity, `_transform`'s arguments) of the Transform at a noise proportion."""
        examples = self.examples()
        folder = os.path.join(self.root, f"transformed-noise{noise:g}")
        identity = {
            "examples": examples,
            "noise_proportion": noise,
            "seed": self.data.seed,
            "noise_feature_prob": self.data.noise_feature_prob,
        }
        return folder, identity, (examples, folder, self.data.seed, noise, self.data.noise_feature_prob)

    def transformed(self, noise: float) -> str:
        noise = float(noise)
        if noise not in self._transformed:
            folder, identity, arguments = self._transform_job(noise)
            self._transformed[noise] = _done(folder, identity, lambda: _transform(*arguments))
        return self._transformed[noise]

    def transform_all(self, noise_levels) -> None:
        """Makes the Transforms not made yet, two at a time in processes of their own: most of a
        Transform's 40-120 s here is one core's work (tf.Transform's analysis and tracing), so two
        share this machine's two cores. The cells then find them made."""
        jobs = [self._transform_job(float(p)) for p in noise_levels if float(p) not in self._transformed]
        jobs = [job for job in jobs if not _finished(job[0], job[1])]
        if len(jobs) < 2:
            return
        self.log(f"data: {len(jobs)} Transform runs, two at a time")
        # spawn: a fork would copy this process's TensorFlow and Beam threads' state.
        context = multiprocessing.get_context("spawn")
        with concurrent.futures.ProcessPoolExecutor(2, mp_context=context) as pool:
            running = [(folder, identity, pool.submit(_transform, *arguments)) for folder, identity, arguments in jobs]
            for folder, identity, future in running:
                future.result()
                grid.write_json(os.path.join(folder, "done.json"), identity)

    def ceiling(self) -> dict | None:
        if self._ceiling is None and self.data.source == SYNTHETIC:
            with open(os.path.join(self._raw(), "synth.json")) as f:
                self._ceiling = json.load(f)["bayes_auc"]["test"]
        return self._ceiling


def prepare(settings: Settings, out: str, log=print) -> Prepared:
    return Prepared(settings, out, log)


def made(settings: Settings, out: str, noise: float) -> tuple[str, dict | None]:
    """(the Transform folder at a noise level, the ceiling) that a `Prepared` in another process made
    into OUT, read as they are: a Kubeflow cell sees them at another path than where they were made,
    so the identities recorded in their done.json (absolute paths) are not compared."""
    root = os.path.join(os.path.abspath(out), "data")
    transformed = os.path.join(root, f"transformed-noise{float(noise):g}")
    if not os.path.exists(os.path.join(transformed, "done.json")):
        raise DataError(f"{out} holds no finished Transform at noise {noise:g} ({transformed})")
    ceiling = None
    if settings.data.source == SYNTHETIC:
        with open(os.path.join(root, "raw", "synth.json")) as f:
            ceiling = json.load(f)["bayes_auc"]["test"]
    return transformed, ceiling


# --- one cell ----------------------------------------------------------------------------------

LAMBDA = "lam"  # the cell axis of MTN's lambda when it is chosen on validation


def with_lambdas(cells: list, settings: Settings, has_mtn) -> list:
    """Every cell for which `has_mtn(cell)` once per `settings.lams` value (on the `lam` axis), the
    others as they are; `cells` unchanged when lambda is not chosen."""
    if not settings.lams:
        return cells
    return [
        dataclasses.replace(cell, setting=cell.setting + ((LAMBDA, float(lam)),)) if lam is not None else cell
        for cell in cells
        for lam in (settings.lams if has_mtn(cell) else (None,))
    ]


def cell_mtn(cell: grid.Cell, mtn: dict | None) -> dict | None:
    """The cell's MTN section: `mtn` with the cell's lambda where it has one."""
    lam = dict(cell.setting).get(LAMBDA)
    return mtn if mtn is None or lam is None else {**mtn, "lam": lam}


def select_lambda(records) -> tuple[list, dict]:
    """(records, chosen): each group of runs that differ only in lambda reduced to its run with the
    best validation monitor value (`val_monitor`, higher is better), its cell without the `lam`
    axis, so the tables read it as the arm; `chosen`: {cell key: lambda} of the kept runs."""
    groups, kept = {}, []
    for record in records:
        setting = dict(record.cell.setting)
        if LAMBDA not in setting:
            kept.append(record)
            continue
        cell = dataclasses.replace(record.cell, setting=tuple(a for a in record.cell.setting if a[0] != LAMBDA))
        groups.setdefault(cell, []).append((setting[LAMBDA], record))
    chosen = {}
    for cell, runs in groups.items():
        # NaN (an eval split that cannot tell) never wins; ties go to the smaller lambda.
        lam, best = max(runs, key=lambda run: (_finite_or_low(run[1].metrics.get("val_monitor")), -run[0]))
        kept.append(dataclasses.replace(best, cell=cell))
        chosen[cell.key] = lam
    return kept, chosen


def _finite_or_low(value) -> float:
    return value if isinstance(value, (int, float)) and value == value else float("-inf")


def lambda_note(settings: Settings, chosen: dict) -> str:
    """Which lambda the MTN runs used: the setting's, or how often each candidate was chosen."""
    if not settings.lams:
        return f"MTN lambda {settings.lam:g} in every run, as the paper reports it, not tuned here."
    counts = {lam: sum(1 for v in chosen.values() if v == lam) for lam in settings.lams}
    return (
        "MTN lambda chosen per arm, noise level and seed on the validation split (the best monitor value) from "
        + ", ".join(f"{lam:g}" for lam in settings.lams)
        + ": chosen "
        + ", ".join(f"{lam:g} in {n} of {len(chosen)} runs" for lam, n in counts.items())
        + "."
    )


def claim_tasks(settings: Settings) -> tuple:
    """The tasks a claim is judged on: all three, or under MTReclib's loss the paper's two, CTR and
    conversion over all impressions (CTCVR). There CVR on clicked rows is the ratio of two heads
    trained apart, not a task of the paper (its AUC is still tabled)."""
    return ("ctr", "ctcvr") if settings.conversion_loss == "impressions" else TASKS


def tasks_phrase(tasks) -> str:
    return ", ".join(task.upper() for task in tasks)


def loss_note(settings: Settings) -> str:
    """What the multi-task models' conversion head learns from, for a report's notes."""
    if settings.conversion_loss == "impressions":
        return (
            "MMoE and Shared-bottom train MTReclib's loss: CTR, and conversion on its label over all impressions "
            "(the `impressions` convention), so their second head is CTCVR and the CVR AUC on the clicked test rows "
            "scores CTCVR / CTR; ESMM trains its own loss, CTR and CTCVR (= CTR x CVR) over all impressions."
        )
    return (
        "Every multi-task model trains on the `esmm` loss: CTR and CTCVR (= CTR x CVR) over all impressions, so "
        "the conversion head learns through CTCVR; CVR AUC is scored on the clicked test rows."
    )


def training_note(settings: Settings) -> str:
    """How the cells train, for a report's scale paragraph."""
    monitor = {"cvr_auc": "CVR AUC", "ctcvr_auc": "CTCVR AUC"}.get(settings.monitor, "the summed log loss")
    times = "once" if settings.evals_per_epoch == 1 else f"{settings.evals_per_epoch} times"
    return (
        f"up to {settings.epochs} epochs of batch {settings.batch_size}, Adam {settings.learning_rate:g}, evaluated "
        f"{times} an epoch on the eval split and stopped after {settings.patience} evaluations without a better "
        f"{monitor}, the best evaluation's weights kept"
    )


# The models whose loss is their own whatever `conversion_loss` says: the single-task ones train
# CVR on clicked rows, ESMM its CTR and CTCVR over all impressions.
OWN_CONVENTIONS = {"logistic": "clicked", "single_task": "clicked", "esmm": "esmm"}


def trainer_config(
    model: str, seed: int, settings: Settings, mtn: dict | None = None, overrides: dict | None = None
) -> dict:
    """The Trainer config (`trainer.config`) of a cell; `mtn`: {target, depth} when MTN is on;
    `overrides`: {section: {key: value}} merged over it (`TrainerConfig.replace`), for keys the
    settings above do not cover (FDN's `fdn` section, CGC's and PLE's expert counts)."""
    from trainer.config import from_dict

    config = {
        "model": {
            "name": model,
            "embedding_dim": settings.embedding_dim,
            "expert_units": list(settings.expert_units),
            "tower_units": list(settings.tower_units),
            "num_experts": settings.num_experts,
        },
        "mtn": None
        if mtn is None
        else {"lam": settings.lam, "alpha_floor": settings.alpha_floor, "subsets": settings.subsets, **mtn},
        # Equal weights: these runs' setting before the Trainer's default moved on to "both".
        "loss": {
            "convention": OWN_CONVENTIONS.get(model, settings.conversion_loss),
            "weights": {"ctr": 1.0, "cvr": 1.0, "ctcvr": 1.0},
        },
        "training": {
            "epochs": settings.epochs,
            "batch_size": settings.batch_size,
            "learning_rate": settings.learning_rate,
            "patience": settings.patience,
            # These runs' settings before the Trainer's defaults followed the training rows and
            # dropped the decay (issue 36 asks which the paper presets should take).
            "embedding_l2": 1e-3,
            "embedding_learning_rate": settings.learning_rate,
            "embedding_l2_rows": "touched",
            "decay_steps": 500,
            "seed": seed,
            "monitor": settings.monitor,
            "evals_per_epoch": settings.evals_per_epoch,
        },
        # One process, one device: the same arithmetic on every machine the seed is rerun on.
        "hardware": {"xla": settings.xla, "distribute": "none"},
    }
    return from_dict(config).replace(**overrides).to_dict() if overrides else from_dict(config).to_dict()


def cell_config(cell: grid.Cell, settings: Settings, mtn: dict | None, overrides: dict | None = None) -> dict:
    return {
        "trainer": trainer_config(cell.variant, cell.seed, settings, mtn, overrides),
        "data": {**dataclasses.asdict(settings.data), "noise_proportion": cell.noise},
    }


def train_cell(
    cell: grid.Cell, settings: Settings, prepared: Prepared, mtn: dict | None, after=None, overrides: dict | None = None
) -> dict:
    """Trains the cell and returns its metrics: the test AUCs and log losses, the ceiling's AUCs
    (`bayes_*`, synthetic data only), the best epoch, and the last epoch's mean training loss terms
    (`train_task_loss`, `train_mtn_loss`: lambda times MTN's norm). `after(run_dir, transformed)`
    -> more metrics, read from the trained model before its folder goes."""
    from trainer import train

    transformed = prepared.transformed(cell.noise)
    cell_dir = os.path.join(prepared.out, "runs", cell.key)
    scratch = tempfile.mkdtemp(prefix="trainer-", dir=cell_dir)
    try:
        result = train.train(
            transformed,
            scratch,
            trainer_config(cell.variant, cell.seed, settings, mtn, overrides),
            overwrite=True,
            export_model=settings.export_model,
        )
        extra = after(os.path.join(scratch, "model"), transformed) if after else {}
        shutil.copy(os.path.join(scratch, layout.MODEL, layout.METRICS), os.path.join(cell_dir, "trainer.json"))
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    from trainer.callbacks import monitor_value

    # `logistic` is solved, not trained in rounds: no history, no training loss to report.
    test, last = result["test"], (result["history"] or [{}])[-1]
    metrics = {f"{task}_{kind}": float(test[f"{task}_{kind}"]) for task in TASKS for kind in ("auc", "logloss")}
    names = [name for name in ("ctr_loss", "cvr_loss", "ctcvr_loss") if name in last]
    task_loss = sum(last[name] for name in names) if names else float("nan")
    metrics.update(
        # the run's best eval value of its monitor, higher is better: what `select_lambda` ranks by
        val_monitor=float(monitor_value(result["eval"], settings.monitor)),
        best_epoch=result["best_epoch"],
        epochs_done=result["epochs_done"],
        train_task_loss=task_loss,
        train_mtn_loss=last.get("mtn_loss", 0.0),
        test_rows=test["rows"],
        test_clicks=test["clicks"],
        test_conversions=test["conversions"],
    )
    ceiling = prepared.ceiling()
    if ceiling is not None:
        metrics.update({f"bayes_{task}_auc": float(ceiling[task]) for task in TASKS})
    return {**metrics, **extra}


# --- the report --------------------------------------------------------------------------------


def values(records, key) -> dict:
    """key(cell) -> {metric: {seed: value}} over the records."""
    grouped = {}
    for record in records:
        entry = grouped.setdefault(key(record.cell), {})
        for metric, value in record.metrics.items():
            entry.setdefault(metric, {})[record.cell.seed] = value
    return grouped


def ceiling_values(records) -> dict | None:
    """{task: {seed: Bayes-optimal AUC}} (the same for every seed: one data draw), None for real data."""
    found = {}
    for record in records:
        for task in TASKS:
            if f"bayes_{task}_auc" in record.metrics:
                found.setdefault(task, {})[record.cell.seed] = record.metrics[f"bayes_{task}_auc"]
    return found or None


def ceiling_row(records, column_of) -> list:
    """The ceiling as a table row (`column_of(task)` -> its columns' titles), or nothing for real data."""
    ceiling = ceiling_values(records)
    if ceiling is None:
        return []
    return [report.Row(CEILING_LABEL, {column: ceiling[task] for task in TASKS for column in column_of(task)})]


def auc_columns() -> tuple:
    return tuple(report.Column(TASK_TITLES[task]) for task in TASKS)


def data_description(settings: Settings, records) -> str:
    """One paragraph: which data the run used, and what the ceiling row is (or why there is none)."""
    data = settings.data
    test = next((r.metrics for r in records), {})
    sizes = (
        f" The test split holds {test['test_rows']:,} rows, {test['test_clicks']:,} clicks and "
        f"{test['test_conversions']:,} conversions."
        if "test_rows" in test
        else ""
    )
    if data.source == SYNTHETIC:
        return (
            f"Data: synthetic Ali-CCP (`synth/aliccp.py`), {data.rows:,} rows (80% train file, of which "
            f"{data.eval_fraction:.0%} is held out for early stopping; 20% test), CTR {data.ctr:g} and CVR "
            f"{data.cvr:g} per click, drawn once with seed {data.seed}; every seed trains on this draw.{sizes} "
            f"The row *{CEILING_LABEL}* scores the test rows with the generator's true probabilities: no model "
            "can beat it on average, and the gap to it is what there is to learn."
        )
    return (
        f"Data: `{data.source}` ({data.format}), read by ExampleGen ({data.eval_fraction:.0%} of the training "
        f"files held out for early stopping).{sizes} Real data has no known Bayes-optimal ceiling, so the "
        "tables have no ceiling row."
    )


def mtn_scale_note(records) -> str:
    """How large the MTN term is against the task losses it is added to (last training epoch)."""
    ratios = [
        r.metrics["train_mtn_loss"] / r.metrics["train_task_loss"]
        for r in records
        if r.metrics.get("train_mtn_loss") and r.metrics.get("train_task_loss")
    ]
    if not ratios:
        return "No run had an MTN term."
    mean = sum(ratios) / len(ratios)
    return (
        f"Scale of the regulariser: over the {len(ratios)} runs with MTN, lambda x mean_i R_i was "
        f"{mean:.2e} of the task losses on average in the last epoch (from {min(ratios):.2e} to "
        f"{max(ratios):.2e})."
    )
