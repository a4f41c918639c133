"""The DAG: ExampleGen -> Transform -> Trainer -> Evaluator -> Pusher.

Each stage is a function of folders and plain values that prints its summary. `run_local` runs
them one after another in this process (`mtrank run`); the Kubeflow components of
`pipeline.kubeflow` call the very same functions, each on its own artifact folder. The layout of
a local run, all under OUTPUT:

    examples/{train,eval,test}/, rejected/, stats.json   ExampleGen
    transform_graph/, transformed/                        Transform
    model/ (model/serving/: the SavedModel)               Trainer
    evaluation/{metrics.json, BLESSED | NOT_BLESSED}      Evaluator
    run.json                                              config, packages, data fingerprint, lineage
and a blessed model goes to <serving base>/<model name>/<next version>/ (Pusher).
"""

from __future__ import annotations

import dataclasses
import os

from common import IN_PROCESS, layout


def configure_logging(verbose: bool = False) -> None:
    """Our stages' progress at INFO; Beam's, TensorFlow's and tf.Transform's own INFO only if `verbose`."""
    import logging
    import sys

    logging.basicConfig(
        level=logging.INFO if verbose else logging.WARNING,
        format="%(asctime)s %(message)s",
        datefmt="%H:%M:%S",
        stream=sys.stderr,
    )
    if not verbose:
        logging.getLogger().setLevel(logging.WARNING)  # a KFP executor has set the root logger to INFO
    for ours in ("mtrank", "common", "example_gen", "pipeline", "transform", "trainer", "serving"):
        logging.getLogger(ours).setLevel(logging.INFO)


def import_tensorflow_quietly() -> None:
    """Imports TensorFlow with its C++ start-up lines hidden (CUDA probing on a CPU machine, CPU
    features), unless the root logger shows INFO (`--verbose`). They print to the process's stderr
    before any log setting applies, so stderr points at /dev/null for the import. TF's later C++
    messages show from errors up (not XLA's banners). The stages call it once their input checks
    have passed, so a bad argument is still answered at once."""
    import logging
    import sys

    if "tensorflow" in sys.modules or logging.getLogger().isEnabledFor(logging.INFO):
        return
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with open(os.devnull, "w") as devnull:
            os.dup2(devnull.fileno(), 2)
            try:
                import tensorflow

                # Probing the devices is what prints CUDA's errors on a machine without one. Listing
                # them leaves the runtime uninitialised, so a distribution strategy can still start.
                tensorflow.config.list_physical_devices()
            except ImportError:
                pass  # the command that needs it reports it, with stderr back
    finally:
        os.dup2(saved, 2)
        os.close(saved)


class StageError(Exception):
    """Bad input or config for a stage: its message names what and why, on one line."""


# --- configs ----------------------------------------------------------------------------------------


def trainer_config(
    config: dict | None = None,
    *,
    model: str | None = None,
    epochs: int | None = None,
    batch_size: int | None = None,
    seed: int | None = None,
    mtn: float | None = None,
) -> dict:
    """A trainer config (`trainer.config` sections) with the command-line overrides applied; checked."""
    from trainer.config import from_dict

    config = {k: v for k, v in (config or {}).items() if k not in ("evaluator", "transform")}  # `mtrank run`'s
    overrides = {"model": {"name": model}, "training": {"epochs": epochs, "batch_size": batch_size, "seed": seed}}
    for section, values in overrides.items():
        values = {k: v for k, v in values.items() if v is not None}
        if values:
            config[section] = {**(config.get(section) or {}), **values}
    if mtn:
        config["mtn"] = {**(config.get("mtn") or {}), "lam": mtn}
    try:
        from_dict(config)
    except ValueError as e:
        raise StageError(f"trainer config: {e}") from None
    return config


TRANSFORM_NOISE = {"noise_proportion": 0.0, "noise_feature_prob": 0.2}


def transform_config(raw: dict | None) -> dict:
    """`mtrank run`'s `transform` section, checked: preprocessing_fn's options (`transform.options`:
    frequency_threshold, num_oov_buckets, numeric, numeric_default) and the noise
    (noise_proportion, noise_feature_prob), as {"preprocessing": {...}, "noise_proportion": P,
    "noise_feature_prob": Q}."""
    from transform.options import Options

    if raw is not None and not isinstance(raw, dict):
        raise StageError(f"transform config must be an object of options, got {raw!r}")
    raw = dict(raw or {})
    known = sorted({f.name for f in dataclasses.fields(Options)} | set(TRANSFORM_NOISE))
    unknown = sorted(set(raw) - set(known))
    if unknown:
        raise StageError(f"transform config: unknown keys {unknown}; known: {known}")
    noise = {key: raw.pop(key, default) for key, default in TRANSFORM_NOISE.items()}
    for key, value in noise.items():
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value <= 1:
            raise StageError(f"transform.{key} must be a number in [0, 1], got {value!r}")
    try:
        Options.from_config(raw)
    except ValueError as e:
        raise StageError(f"transform config: {str(e).replace('custom_config', 'transform')}") from None
    return {"preprocessing": raw, **{k: float(v) for k, v in noise.items()}}


def eval_config(raw: dict | None):
    from pipeline.evaluator import EvalConfig

    try:
        return EvalConfig.from_dict(raw or {})
    except (ValueError, TypeError) as e:
        raise StageError(str(e)) from None


# --- the stages ------------------------------------------------------------------------------------


def _beam_stage(run, config) -> dict:
    from common.beam import InputError

    try:
        return run(config)
    except InputError as e:
        raise StageError(str(e)) from None


def example_gen(
    data: str,
    data_format: str,
    output: str,
    runner: str = IN_PROCESS,
    beam_args=(),
    eval_fraction: float = 0.1,
    overwrite: bool = True,
) -> dict:
    from example_gen import beam_pipeline

    config = beam_pipeline.IngestConfig(
        format=data_format,
        input=data,
        output=output,
        eval_fraction=eval_fraction,
        runner=runner,
        overwrite=overwrite,
        beam_args=list(beam_args),
    )
    stats = _beam_stage(beam_pipeline.run, config)
    print_ingest_summary(stats, output)
    return stats


def print_ingest_summary(stats: dict, output: str) -> None:
    s = stats["samples"]
    print(f"ExampleGen: {stats['lines_read']:,} lines read in {stats['seconds']:.1f} s -> {output}")
    print("  written   " + "  ".join(f"{k} {v:,}" for k, v in s["written"].items()))
    for title, counts in (("rejected", s["rejected"]), ("dropped", s["dropped"])):
        if counts:
            print(f"  {title:<9} " + "  ".join(f"{k} {v:,}" for k, v in counts.items()))
    if "common_features" in stats:
        c = stats["common_features"]
        print(
            f"  common    joined {c['joined']:,}  unreferenced {c['unreferenced']:,}  "
            + "  ".join(f"rejected/{k} {v:,}" for k, v in c["rejected"].items())
        )
    print(f"  stats: {os.path.join(output, 'stats.json')}", flush=True)


def transform(
    examples: str,
    output: str,
    *,
    seed: int = 0,
    noise_proportion: float = 0.0,
    noise_feature_prob: float = 0.2,
    preprocessing: dict | None = None,
    runner: str = IN_PROCESS,
    beam_args=(),
    overwrite: bool = True,
) -> dict:
    import_tensorflow_quietly()
    from transform import beam_pipeline

    config = beam_pipeline.TransformConfig(
        examples=examples,
        output=output,
        noise_proportion=noise_proportion,
        noise_feature_prob=noise_feature_prob,
        seed=seed,
        preprocessing=dict(preprocessing or {}),
        runner=runner,
        overwrite=overwrite,
        beam_args=list(beam_args),
    )
    stats = _beam_stage(beam_pipeline.run, config)
    rows = "  ".join(f"{split} {n:,}" for split, n in stats["rows"].items())
    print(f"Transform: {sum(stats['rows'].values()):,} rows in {stats['seconds']:.1f} s -> {output}")
    print(f"  transformed  {rows}")
    sizes = stats["vocabulary_size"]
    if sizes:
        print(f"  vocabularies {len(sizes)} fields, {min(sizes.values()):,} to {max(sizes.values()):,} ids")
    if "noise" in stats:
        n = stats["noise"]
        replaced = sum(f["replaced"] for f in n["fields"].values())
        print(
            f"  noise        {n['rows_selected']:,} of {n['rows']:,} training rows selected, "
            f"{replaced:,} features replaced"
        )
    print(f"  stats: {os.path.join(output, 'transformed', 'stats.json')}", flush=True)
    return stats


def trainer(
    transformed: str, output: str, config: dict, *, warm_start_from: str | None = None, overwrite: bool = True
) -> dict:
    """Trains into OUTPUT/model (a killed run resumes unless `overwrite`); `warm_start_from` is a
    pushed SavedModel version whose weights initialise the network (`trainer.warm_start`)."""
    for needed in (
        layout.TRANSFORM_GRAPH,
        os.path.join(layout.TRANSFORMED, "train"),
        os.path.join(layout.TRANSFORMED, "eval"),
    ):
        if not os.path.isdir(os.path.join(transformed, needed)):
            raise StageError(f"{transformed} has no {needed}/ (run mtrank transform first)")
    import_tensorflow_quietly()
    from trainer import train

    try:
        result = train.train(transformed, output, config, overwrite=overwrite, base_model=warm_start_from)
    except (train.TrainingError, ValueError) as e:
        raise StageError(str(e)) from None
    print_training_summary(result, os.path.join(output, layout.MODEL))
    return result


def print_training_summary(result: dict, run_dir: str) -> None:
    def aucs(m):
        return f"CTR {m['ctr_auc']:.4f}  CVR {m['cvr_auc']:.4f}  CTCVR {m['ctcvr_auc']:.4f}"

    stop = " (stopped early)" if result["stopped_early"] else ""
    print(
        f"Trainer: {result['model']}, {result['epochs_done']:g} epochs{stop}, best at epoch {result['best_epoch']:g} "
        f"(step {result['best_step']}, by eval {result['monitor']}) in {result['seconds']['train']:.1f} s -> {run_dir}"
        if "solver" not in result
        else f"Trainer: {result['model']} solved to convergence (C {result['solver']['C']['ctr']:g} for CTR, "
        f"{result['solver']['C']['cvr']:g} for CVR, chosen on eval) in {result['seconds']['train']:.1f} s -> {run_dir}"
    )
    if result.get("warm_start"):
        w = result["warm_start"]
        print(
            f"  warm start {w['from']}: "
            + (
                f"{w['copied']} of {w['variables']} variables copied, "
                f"{w['embedding_rows']:,} embedding rows carried over"
                if "copied" in w
                else f"skipped ({w['skipped']})"
            )
        )
    print(f"  eval AUC   {aucs(result['eval'])}")
    if "test" in result:
        print(f"  test AUC   {aucs(result['test'])}  (the network on Transform's test split)")
    p = result["params"]
    print(f"  parameters {p['total']:,} trained, {p['exported']:,} exported")
    print(f"  SavedModel {result['serving_model_dir']}; metrics {os.path.join(run_dir, 'metrics.json')}", flush=True)


# The run's `training` keys that the solved reference uses too: how inputs are read and scored.
REFERENCE_TRAINING_KEYS = ("max_bag_length", "memory_budget_gb", "eval_batch_size")


def reference_config(config: dict) -> dict:
    """The linear reference's trainer config: the `logistic` model, solved to convergence with its
    own settings (`trainer.linear`); of the run's sections it takes `hardware` and the `training`
    keys that say how inputs are read, never the deep model's optimisation or regularisation."""
    training = {k: v for k, v in (config.get("training") or {}).items() if k in REFERENCE_TRAINING_KEYS}
    return {"model": {"name": "logistic"}, "training": training, "hardware": config.get("hardware") or {}}


def evaluator(
    saved_model: str, examples: str, output: str, config, baseline: str | None, reference: str | None = None
) -> dict:
    import_tensorflow_quietly()
    from pipeline import evaluator as evaluation

    try:
        result = evaluation.evaluate(saved_model, examples, output, config, baseline, reference)
    except ValueError as e:
        raise StageError(str(e)) from None
    print(evaluation.table(result))
    verdict = "BLESSED" if result["blessed"] else "NOT_BLESSED: " + "; ".join(result["reasons"])
    print(f"  {verdict} ({os.path.join(output, 'evaluation')})", flush=True)
    return result


def pusher(saved_model: str, evaluated: str, serving_base: str, model_name: str) -> dict | None:
    """Pushes a blessed model as the next version; None (and says so) when it is not blessed."""
    from pipeline import evaluator as evaluation, pusher as push

    if not evaluation.is_blessed(evaluated):
        print(
            f"  not pushed: the model is not blessed; serving keeps "
            f"{push.latest(os.path.join(serving_base, model_name)) or 'no version'}",
            flush=True,
        )
        return None
    pushed = push.push(saved_model, evaluated, serving_base, model_name)
    print(f"  pushed version {pushed['version']}: {pushed['path']}", flush=True)
    return pushed


def record(
    output: str,
    arguments: dict,
    *,
    data: str,
    data_format: str,
    data_fingerprint: dict,
    artifacts: dict,
    pushed: dict | None,
    readable: dict | None = None,
    beam_args=(),
) -> str:
    """OUTPUT/run.json (`pipeline.run_record`), the one builder both runners call.

    `artifacts`: {"examples", "transform_graph", "model", "evaluation"}: each stage's output
    folder as the lineage names it (a URI on a cluster); `readable`: the same folders as this
    process reads them (default: `artifacts`). The trainer config, the Trainer's eval metrics, the
    warm start, the Evaluator's config, verdict and test metrics are read from those folders.
    `data_fingerprint`: `run_record.fingerprint` of the data as ExampleGen read it."""
    import json

    from pipeline import run_record

    readable = readable or artifacts
    with open(os.path.join(readable["model"], layout.MODEL, layout.METRICS)) as f:
        trained = json.load(f)
    with open(os.path.join(readable["model"], layout.MODEL, "config.json")) as f:
        trainer_config = json.load(f)["trainer"]
    with open(os.path.join(readable["evaluation"], layout.EVALUATION, layout.METRICS)) as f:
        evaluated = json.load(f)
    lineage = {
        "examples": artifacts["examples"],
        "transform_graph": os.path.join(artifacts["transform_graph"], layout.TRANSFORM_GRAPH),
        "model": os.path.join(artifacts["model"], layout.MODEL, layout.SERVING),
        "evaluation": os.path.join(artifacts["evaluation"], layout.EVALUATION),
        "baseline": (evaluated.get("baseline") or {}).get("model"),
        "reference": (evaluated.get("reference") or {}).get("model"),
        "blessed": evaluated["blessed"],
        "pushed": pushed,
    }
    return run_record.write(
        output,
        {
            "command": "run",
            "arguments": arguments,
            "trainer_config": trainer_config,
            "evaluator_config": evaluated["config"],
            "beam_args": list(beam_args),
            "data": {"path": data, "format": data_format, "fingerprint": data_fingerprint},
            "lineage": lineage,
            "warm_start": trained.get("warm_start"),
            "metrics": {
                "eval": trained.get("eval"),
                "test": evaluated["overall"],
                "reference_test": (evaluated.get("reference") or {}).get("overall"),
            },
        },
    )


# --- the local runner -------------------------------------------------------------------------------


@dataclasses.dataclass
class RunOptions:
    """What `mtrank run` was given. Without `data`, `rows` synthetic raw Ali-CCP rows are made first."""

    output: str
    serving_base: str
    trainer_config: dict
    eval_config: dict = dataclasses.field(default_factory=dict)
    transform_config: dict = dataclasses.field(default_factory=dict)  # the `transform` section (transform_config)
    data: str | None = None
    data_format: str | None = None
    rows: int = 200_000
    seed: int = 0
    noise_proportion: float = 0.0
    warm_start: bool = False
    model_name: str = "mtrank"
    beam_runner: str = IN_PROCESS
    beam_args: list = dataclasses.field(default_factory=list)


def synthesize(options: RunOptions) -> tuple[str, str]:
    """(data folder, format): the given data, or freshly generated synthetic raw Ali-CCP."""
    if options.data is not None:
        return options.data, options.data_format
    from synth import aliccp

    data = os.path.join(options.output, "raw")
    aliccp.generate(aliccp.AliccpSynthConfig(rows=options.rows, seed=options.seed, malformed_rate=0.001), data)
    return data, "aliccp-raw"


def warm_start_source(serving_base: str, model_name: str, warm_start: bool) -> str | None:
    """The last pushed version, when warm-starting."""
    from pipeline import pusher as push

    return push.latest(os.path.join(serving_base, model_name)) if warm_start else None


def run_local(options: RunOptions, stage) -> dict:
    """Every stage in this process; `stage(text)` announces each. Returns {"pushed", "evaluation", ...}."""
    from pipeline import pusher as push, run_record

    config = eval_config(options.eval_config)
    preprocessing = transform_config({**options.transform_config, "noise_proportion": options.noise_proportion})
    if options.data is None:
        stage(f"synth: {options.rows:,} rows of raw Ali-CCP -> {os.path.join(options.output, 'raw')}")
    data, data_format = synthesize(options)
    out = options.output
    stage(f"ExampleGen: {data_format} {data} -> {out}")
    example_gen(data, data_format, out, options.beam_runner, options.beam_args)
    data_fingerprint = run_record.fingerprint(data)
    stage(f"Transform: {out}/examples -> {out}/transform_graph, transformed/")
    transform(
        out,
        out,
        seed=options.seed,
        noise_proportion=preprocessing["noise_proportion"],
        noise_feature_prob=preprocessing["noise_feature_prob"],
        preprocessing=preprocessing["preprocessing"],
        runner=options.beam_runner,
        beam_args=options.beam_args,
    )
    warm = warm_start_source(options.serving_base, options.model_name, options.warm_start)
    stage(f"Trainer: {out}/transformed -> {out}/model" + (f", warm-started from {warm}" if warm else ""))
    trained = trainer(out, out, options.trainer_config, warm_start_from=warm)
    reference_out = os.path.join(out, layout.REFERENCE)
    stage(f"Trainer: the linear reference (logistic) -> {reference_out}/model")
    trainer(out, reference_out, reference_config(options.trainer_config))
    model_base = os.path.join(options.serving_base, options.model_name)
    baseline = push.latest(model_base)
    stage(
        f"Evaluator: {trained['serving_model_dir']} on the test split"
        + (f", against the last pushed model {baseline}" if baseline else "")
        + ", beside the linear reference"
    )
    reference = os.path.join(reference_out, layout.MODEL, layout.SERVING)
    evaluation = evaluator(trained["serving_model_dir"], out, out, config, baseline, reference)
    stage(f"Pusher: -> {model_base}/<next version>/")
    pushed = pusher(trained["serving_model_dir"], out, options.serving_base, options.model_name)
    path = record(
        out,
        {**dataclasses.asdict(options), "runner": "local"},
        data=data,
        data_format=data_format,
        data_fingerprint=data_fingerprint,
        pushed=pushed,
        beam_args=options.beam_args,
        artifacts={"examples": out, "transform_graph": out, "model": out, "evaluation": out},
    )
    print(f"  run record: {path}", flush=True)
    return {"examples": out, "pushed": pushed, "evaluation": evaluation, "trained": trained, "record": path}
