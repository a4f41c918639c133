"""`mtrank`: the project's one command. Each subcommand lives in a function below; heavy
modules are imported inside them so `mtrank --help` answers at once."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys

_LOG = logging.getLogger("mtrank")


class UsageError(Exception):
    """A bad argument or input path: reported on one line, exit status 2."""


class _Parser(argparse.ArgumentParser):
    def error(self, message):
        raise UsageError(f"{self.prog}: {message}")


def _fraction(text: str) -> float:
    value = float(text)
    if not 0.0 <= value < 1.0:
        raise argparse.ArgumentTypeError(f"{text} is not in [0, 1)")
    return value


def _probability(text: str) -> float:
    value = float(text)
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"{text} is not in [0, 1]")
    return value


def _positive(text: str) -> int:
    value = int(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"{text} is not a positive integer")
    return value


def _stage(command: str, run, *args, **kwargs):
    """Runs a stage of `pipeline.dag`, turning bad input into a one-line usage error."""
    from pipeline.dag import StageError

    try:
        return run(*args, **kwargs)
    except StageError as e:
        raise UsageError(f"mtrank {command}: {e}") from None


def _ingest(args, beam_args) -> None:
    from pipeline import dag

    _stage(
        "ingest",
        dag.example_gen,
        args.input,
        args.format,
        args.output,
        args.runner,
        beam_args,
        eval_fraction=args.eval_fraction,
        overwrite=args.overwrite,
    )


def _transform(args, beam_args) -> None:
    from pipeline import dag

    preprocessing = _load_json_object(args.config, "transform", "options") if args.config else {}
    for key, value in (("frequency_threshold", args.frequency_threshold), ("num_oov_buckets", args.oov_buckets)):
        if value is not None:
            preprocessing[key] = value
    _stage(
        "transform",
        dag.transform,
        args.examples,
        args.output,
        seed=args.seed,
        noise_proportion=args.noise_proportion,
        noise_feature_prob=args.noise_feature_prob,
        preprocessing=preprocessing,
        runner=args.runner,
        beam_args=beam_args,
        overwrite=args.overwrite,
    )


def _load_json_object(path: str, command: str, what: str) -> dict:
    try:
        with open(path) as f:
            value = json.load(f)
    except (OSError, ValueError) as e:
        raise UsageError(f"mtrank {command}: --config {path}: {e}") from None
    if not isinstance(value, dict):
        raise UsageError(f"mtrank {command}: --config {path} must hold a JSON object of {what}")
    return value


def _config_sections(args, command: str) -> dict:
    return _load_json_object(args.config, command, "config sections") if args.config else {}


def _trainer_config(args, command: str, config: dict) -> dict:
    """The trainer sections of --config, with the flags that override them."""
    from pipeline import dag

    return _stage(
        command,
        dag.trainer_config,
        config,
        model=args.model,
        epochs=args.epochs,
        batch_size=args.batch_size,
        seed=args.train_seed,
        mtn=args.mtn,
    )


def _train(args, _) -> None:
    from pipeline import dag

    config = _trainer_config(args, "train", _config_sections(args, "train"))
    _stage(
        "train",
        dag.trainer,
        args.transformed,
        args.output or args.transformed,
        config,
        warm_start_from=args.warm_start_from,
        overwrite=args.overwrite,
    )


def _synth_aliccp(args, _) -> None:
    from synth import aliccp

    config = aliccp.AliccpSynthConfig(
        rows=args.rows, seed=args.seed, test_fraction=args.test_fraction, malformed_rate=args.malformed_rate
    )
    try:
        manifest = aliccp.generate(config, args.out)
    except (ValueError, OSError) as e:
        raise UsageError(f"mtrank synth aliccp: {e}") from None
    print(json.dumps({k: manifest[k] for k in ("samples", "label_rates", "bayes_auc")}, indent=2))
    print(f"wrote {', '.join(manifest['files'])} and synth.json to {args.out}")


def _synth_fdn(args, _) -> None:
    from synth import fdn

    try:
        manifest = fdn.generate(fdn.FdnSynthConfig(rows=args.rows, seed=args.seed, dimension=args.dimension), args.out)
    except OSError as e:
        raise UsageError(f"mtrank synth fdn: {e}") from None
    print(f"wrote {', '.join(manifest['files'])} and synth.json to {args.out}")


def _synth_mmoe(args, _) -> None:
    from synth import mmoe

    config = mmoe.MmoeSynthConfig(
        rows=args.rows, seed=args.seed, correlation=args.correlation, dimension=args.dimension
    )
    try:
        manifest = mmoe.generate(config, args.out)
    except (ValueError, OSError) as e:
        raise UsageError(f"mtrank synth mmoe: {e}") from None
    print(
        f"label correlation {manifest['label_correlation']:.3f} (weights' cosine {config.correlation}); "
        f"wrote {', '.join(manifest['files'])} to {args.out}"
    )


def _is_url(path: str) -> bool:
    return "://" in path


def _absolute(path: str) -> str:
    """A local path made absolute (KFP's components run in other folders); a URL (gs://...) as it is."""
    return path if _is_url(path) else os.path.abspath(path)


def _run(args, beam_args) -> None:
    """The main job: synthetic data (unless --data), ExampleGen, Transform, Trainer, Evaluator,
    Pusher, then (unless --no-serve) the pushed model served and queried through REST."""
    from pipeline import dag

    if args.data is not None and args.format is None:
        raise UsageError("mtrank run: --data needs --format")
    if _is_url(args.output):
        raise UsageError(
            f"mtrank run: --output {args.output}: the run folder is local (the Evaluator, Pusher and "
            "run record write files); run the stages with mtrank ingest/transform/train on URLs, or "
            "the compiled Kubeflow pipeline"
        )
    if args.data is not None and not _is_url(args.data) and not os.path.exists(args.data):
        raise UsageError(f"mtrank run: --data {args.data} does not exist")
    sections = _config_sections(args, "run")
    config = _trainer_config(args, "run", sections)
    raw = sections.get("evaluator") or {}
    _stage("run", dag.eval_config, raw)
    transform_section = sections.get("transform") or {}
    noise_proportion = _stage("run", dag.transform_config, transform_section)["noise_proportion"]
    if args.noise_proportion is not None:  # the flag wins over the config's
        noise_proportion = args.noise_proportion
    options = dag.RunOptions(
        output=os.path.abspath(args.output),
        serving_base=os.path.abspath(args.serving_base),
        trainer_config=config,
        eval_config=raw,
        data=args.data and _absolute(args.data),
        data_format=args.format,
        rows=args.rows,
        seed=args.seed,
        noise_proportion=noise_proportion,
        transform_config=transform_section,
        warm_start=args.warm_start,
        model_name=args.model_name,
        beam_runner=args.beam_runner,
        beam_args=beam_args,
    )
    steps = (args.data is None) + (1 if args.runner == "kfp-local" else 5) + (not args.no_serve)
    step = 0

    def stage(text: str) -> None:
        nonlocal step
        step += 1
        print(f"[{step}/{steps}] {text}", flush=True)

    if args.runner == "kfp-local":
        from pipeline import kubeflow

        result = _stage("run", kubeflow.run_local, options, stage)
    else:
        result = _stage("run", dag.run_local, options, stage)
    if not args.no_serve:
        model_base = os.path.join(options.serving_base, options.model_name)
        stage(f"Serving: mtrank serve on {model_base}, a few test rows scored through its REST API")
        _serve_and_score(model_base, options.model_name, result["examples"])


def _serve_and_score(model_base: str, model_name: str, examples: str, rows: int = 5) -> None:
    import tensorflow as tf

    from common import layout
    from pipeline import pusher
    from serving import config as serving_config
    from serving.client import RestClient
    from serving.server import ServerThread

    if not pusher.versions(model_base):
        print("  nothing to serve: no version has been pushed")
        return
    files = sorted(tf.io.gfile.glob(os.path.join(examples, layout.EXAMPLES, "test", layout.RECORDS)))
    examples = [r.numpy() for r in tf.data.TFRecordDataset(files, compression_type="GZIP").take(rows)]
    config = serving_config.ServerConfig(
        models=(serving_config.ModelSpec(model_name, os.path.abspath(model_base)),),
        rest_port=0,
        grpc_port=0,
        host="127.0.0.1",
    )
    with ServerThread(config) as server:
        client = RestClient(server.rest_url, model_name)
        version = client.status()["model_version_status"][-1]["version"]
        scores = client.predict_examples(examples)
        print(f"  {server.rest_url}/v1/models/{model_name} serves version {version}; {rows} test rows:")
        print("  | row | ctr | cvr | ctcvr |\n  |---:|---:|---:|---:|")
        for i in range(len(examples)):
            print(f"  | {i} | {scores['ctr'][i]:.4f} | {scores['cvr'][i]:.4f} | {scores['ctcvr'][i]:.4f} |")
    print(f"  to keep serving it: mtrank serve --model-base-path {model_base} --model-name {model_name}")


def _serve(args, beam_args) -> None:
    from pipeline.dag import import_tensorflow_quietly

    import_tensorflow_quietly()
    from serving import config as serving_config
    from serving import server

    try:
        config = serving_config.server_config(args)
    except serving_config.ConfigError as e:
        raise UsageError(f"serve: {e}") from None

    for model in config.models:
        if not os.path.isdir(model.base_path):
            _LOG.warning("model %s: base path %s does not exist yet; waiting for versions", model.name, model.base_path)

    def ready(running):
        for model in config.models:
            versions = sorted(running.server.manager.versions(model.name))
            print(f"serving {model.name} versions {versions or 'none yet'} from {model.base_path}", flush=True)
        print(
            f"REST on {config.host}:{running.rest_port}, gRPC on {config.host}:{running.grpc_port}; "
            f"e.g. curl http://localhost:{running.rest_port}/v1/models/{config.models[0].name}",
            flush=True,
        )

    try:
        server.serve_forever(config, on_ready=ready)
    except OSError as e:
        raise UsageError(f"serve: {e.strerror or e}") from None


def _score(args, beam_args) -> None:
    from serving import score
    from serving.client import RestClient, ServingError

    if not os.path.isfile(args.input):
        raise UsageError(f"score: --input {args.input} is not a file")
    client = RestClient(args.server, args.model_name, version=args.model_version)
    out = sys.stdout if args.output == "-" else open(args.output, "w", newline="")
    try:
        counts = score.score(
            client,
            args.input,
            out,
            batch_size=args.batch_size,
            progress=lambda c: print(
                f"\rscored {c['scored']:,} rows, {c['rejected']:,} unreadable", end="", file=sys.stderr, flush=True
            ),
        )
    except ServingError as e:
        raise UsageError(f"score: the server answered {e}") from None
    except ValueError as e:
        raise UsageError(f"score: {args.input}: {e}") from None
    finally:
        if out is not sys.stdout:
            out.close()
    print(
        f"\n{counts['rows']:,} rows: {counts['scored']:,} scored, {counts['rejected']:,} unreadable "
        f"(their reasons are in the error column){'' if args.output == '-' else ' -> ' + args.output}",
        file=sys.stderr,
    )


def _experiment(args, beam_args) -> None:
    from experiments import cli as experiment_cli

    try:
        experiment_cli.command(args, beam_args)
    except experiment_cli.ExperimentError as e:
        raise UsageError(f"mtrank experiment: {e}") from None


def _compile(args, _) -> None:
    from pipeline import kubeflow

    try:
        kubeflow.compile_pipeline(args.output, args.image)
    except OSError as e:
        raise UsageError(f"compile: cannot write {args.output}: {e.strerror}") from None
    print(
        f"wrote the Kubeflow pipeline {kubeflow.PIPELINE_NAME!r} (image {args.image}) to {args.output}; "
        f"upload it in the KFP UI, or: mtrank schedule --host URL --pipeline {args.output}"
    )


def _schedule(args, _) -> None:
    from pipeline import kubeflow

    if not os.path.isfile(args.pipeline):
        raise UsageError(f"schedule: --pipeline {args.pipeline} is not a file (make it with mtrank compile)")
    parameters = _load_json_object(args.parameters, "schedule", "pipeline parameters") if args.parameters else {}
    fields = args.cron.split()
    if len(fields) != 6:
        raise UsageError(
            f"schedule: --cron {args.cron!r} has {len(fields)} fields; KFP's cron has 6 "
            '(seconds first), e.g. "0 0 2 * * *" for 02:00 every day'
        )
    from pipeline.dag import StageError

    try:
        created = kubeflow.schedule(args.host, args.pipeline, args.cron, args.experiment, args.job_name, parameters)
    except StageError as e:
        raise UsageError(f"schedule: {e}") from None
    except Exception as e:  # the KFP client raises ApiException, connection and auth errors alike
        raise UsageError(
            f"schedule: the Kubeflow Pipelines API at {args.host} failed: "
            f"{str(e).splitlines()[0] if str(e) else type(e).__name__}"
        ) from None
    print(
        f"recurring run {args.job_name!r} ({created['recurring_run_id']}) in experiment {args.experiment!r}: "
        f"cron {args.cron!r}, at most one run at a time, missed runs not caught up"
    )


def _add_trainer_flags(p, config_help: str = "JSON file of trainer config sections (README: Trainer)") -> None:
    from trainer.config import MODEL_NAMES

    p.add_argument("--config", help=config_help)
    p.add_argument("--model", choices=MODEL_NAMES, help="the model (default: mmoe, or the config's)")
    p.add_argument("--epochs", type=_positive, help="most epochs; early stopping may end sooner (default: 10)")
    p.add_argument("--batch-size", type=_positive, help="examples per step (default: 2048)")
    p.add_argument("--train-seed", type=int, help="seed of initialisation and batch order (default: 0)")
    p.add_argument("--mtn", type=float, metavar="LAMBDA", help="add the MTN regulariser with this lambda (paper: 1e-5)")


def build_parser() -> argparse.ArgumentParser:
    from common import IN_PROCESS
    from pipeline import IMAGE
    from example_gen import FORMATS
    from serving import config as serving_defaults

    parser = _Parser(
        prog="mtrank",
        description="Multi-task ranking pipeline: ExampleGen, Transform, Trainer, Evaluator, Pusher, serving, "
        "experiments.",
        epilog="Arguments after `--` go to Apache Beam (e.g. -- --project=P --region=R).",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log Beam's own messages too")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND", parser_class=_Parser)

    p = commands.add_parser(
        "run", help="the pipeline end to end: ExampleGen, Transform, Trainer, Evaluator, Pusher, serving"
    )
    p.add_argument("--data", help="raw data folder (default: generate synthetic raw Ali-CCP)")
    p.add_argument("--format", choices=FORMATS, help="format of --data")
    p.add_argument("--output", default="runs/default", help="folder for every artifact (default: %(default)s)")
    p.add_argument(
        "--rows", type=_positive, default=200_000, help="synthetic rows without --data (default: %(default)s)"
    )
    p.add_argument("--seed", type=int, default=0, help="seed of the synthetic data (default: %(default)s)")
    p.add_argument(
        "--runner",
        choices=("local", "kfp-local"),
        default="local",
        help="local: every stage in this process; kfp-local: Kubeflow Pipelines' local runner, "
        "each stage a component in its own process (default: %(default)s)",
    )
    p.add_argument(
        "--beam-runner", default=IN_PROCESS, help="Beam runner of ExampleGen and Transform (default: %(default)s)"
    )
    p.add_argument(
        "--noise-proportion",
        type=_probability,
        metavar="P",
        help="share of training rows that get feature noise (see transform; default: the config's "
        "transform.noise_proportion, else 0)",
    )
    p.add_argument(
        "--warm-start",
        action="store_true",
        help="initialise the network from the last pushed version under --serving-base",
    )
    p.add_argument(
        "--serving-base",
        default="runs/serving",
        help="blessed models are pushed to SERVING_BASE/MODEL_NAME/<version>/ (default: %(default)s)",
    )
    p.add_argument("--model-name", default="mtrank", help="the served model's name (default: %(default)s)")
    p.add_argument("--no-serve", action="store_true", help="stop after the Pusher")
    _add_trainer_flags(p, "JSON file of config sections: the trainer's (README: Trainer), `transform` and `evaluator`")
    p.set_defaults(func=_run)

    p = commands.add_parser("train", help="Trainer: a multi-task model on Transform's output, exported for serving")
    p.add_argument("--transformed", required=True, help="Transform's output folder (transform_graph/, transformed/)")
    p.add_argument(
        "--output", help="writes model/ (checkpoints, logs, metrics) and model/serving/ (default: --transformed)"
    )
    _add_trainer_flags(p)
    p.add_argument(
        "--warm-start-from",
        metavar="SAVED_MODEL",
        help="initialise the network from this exported model (e.g. a pushed version)",
    )
    p.add_argument("--overwrite", action="store_true", help="start again instead of resuming a run in --output")
    p.set_defaults(func=_train)

    from experiments import cli as experiment_cli

    p = commands.add_parser("experiment", help=experiment_cli.HELP)
    experiment_cli.add_arguments(p)
    p.set_defaults(func=_experiment)

    p = commands.add_parser("compile", help="the Kubeflow pipeline (KFP v2 YAML) for a cluster")
    p.add_argument("--output", default="pipeline.yaml", help="(default: %(default)s)")
    p.add_argument(
        "--image", default=IMAGE, help="every component's image, built from the Dockerfile (default: %(default)s)"
    )
    p.set_defaults(func=_compile)

    p = commands.add_parser(
        "schedule", help="a KFP recurring run of the compiled pipeline (one at a time, no catch-up)"
    )
    p.add_argument("--host", required=True, help="the KFP API, e.g. http://ml-pipeline-ui.kubeflow:80")
    p.add_argument("--pipeline", default="pipeline.yaml", help="compiled by mtrank compile (default: %(default)s)")
    p.add_argument("--cron", default="0 0 2 * * *", help="KFP cron, seconds first (default: %(default)s, 02:00 daily)")
    p.add_argument("--experiment", default="mtrank-retraining", help="(default: %(default)s)")
    p.add_argument("--job-name", default="mtrank-retrain", help="(default: %(default)s)")
    p.add_argument(
        "--parameters", help='JSON file of pipeline parameters, e.g. {"data": "/data/latest", "model": "mmoe"}'
    )
    p.set_defaults(func=_schedule)

    p = commands.add_parser("serve", help="serve SavedModel versions with TF Serving's REST and gRPC APIs")
    p.add_argument("--model-name", default="mtrank", help="the model's name in request paths (default: %(default)s)")
    p.add_argument("--model-base-path", help="folder of integer-named SavedModel versions, e.g. BASE/1/saved_model.pb")
    p.add_argument(
        "--model-config-file", help="TF Serving ModelServerConfig text proto (models, version policies, labels)"
    )
    p.add_argument(
        "--num-versions", type=_positive, default=1, help="the latest N versions are served (default: %(default)s)"
    )
    p.add_argument("--rest-port", type=int, default=8501, help="(default: %(default)s)")
    p.add_argument("--grpc-port", type=int, default=8500, help="(default: %(default)s)")
    p.add_argument(
        "--host",
        default="127.0.0.1",
        help="address to listen on (default: %(default)s, this machine "
        "only; 0.0.0.0 listens on every interface, and the server has no authentication)",
    )
    p.add_argument(
        "--poll-seconds",
        type=float,
        default=1.0,
        help="how often base paths are checked for versions (default: %(default)s)",
    )
    p.add_argument(
        "--max-batch-size",
        type=_positive,
        default=serving_defaults.DEFAULT_MAX_BATCH_SIZE,
        help="rows per server-side batch (default: %(default)s)",
    )
    p.add_argument(
        "--batch-timeout-micros",
        type=int,
        default=serving_defaults.DEFAULT_BATCH_TIMEOUT_MICROS,
        help="longest wait for a batch to fill (default: %(default)s)",
    )
    p.add_argument(
        "--num-batch-threads",
        type=_positive,
        default=serving_defaults.DEFAULT_NUM_BATCH_THREADS,
        help="batches run at once (default: %(default)s)",
    )
    p.add_argument(
        "--batching-parameters-file",
        help="TF Serving BatchingParameters text proto (overrides the three above; its max_batch_size "
        "also caps the rows of a request, as in TF Serving)",
    )
    p.add_argument("--no-batching", action="store_true", help="run each request on its own")
    p.set_defaults(func=_serve)

    p = commands.add_parser(
        "score", help="score raw rows (CSV layouts or JSON lines) through a TF Serving REST endpoint"
    )
    p.add_argument("--server", required=True, help="REST address, e.g. http://localhost:8501")
    p.add_argument(
        "--input",
        required=True,
        help="an Ali-CCP/AliExpress CSV file in an ingest layout, or JSON lines of raw features",
    )
    p.add_argument("--output", default="-", help="scores CSV: line,sample_id,ctr,cvr,ctcvr,error (default: stdout)")
    p.add_argument("--model-name", default="mtrank", help="(default: %(default)s)")
    p.add_argument("--model-version", type=_positive, help="a version (default: the latest served)")
    p.add_argument("--batch-size", type=_positive, default=1000, help="rows per request (default: %(default)s)")
    p.set_defaults(func=_score)

    p = commands.add_parser("transform", help="Transform: tf.Transform vocabularies and normalisation, noise injection")
    p.add_argument("--examples", required=True, help="ExampleGen's output folder (examples/ and stats.json)")
    p.add_argument("--output", required=True, help="writes transform_graph/ and transformed/{train,eval,test}/")
    p.add_argument(
        "--noise-proportion",
        type=_probability,
        default=0.0,
        metavar="P",
        help="share of training rows that get noise (MTN paper: 0.05, 0.1, 0.15; default: %(default)s)",
    )
    p.add_argument(
        "--noise-feature-prob",
        type=_probability,
        default=0.2,
        metavar="Q",
        help="chance that each feature of a noisy row is replaced (default: %(default)s)",
    )
    p.add_argument("--seed", type=int, default=0, help="seed of the noise (default: %(default)s)")
    p.add_argument(
        "--frequency-threshold", type=_positive, help="ids seen fewer times in training go to OOV (default: 1)"
    )
    p.add_argument("--oov-buckets", type=_positive, help="out-of-vocabulary buckets per field (default: 1)")
    p.add_argument(
        "--config", help='JSON file of preprocessing options, e.g. {"numeric": {"numerical_1": ["log1p", "z_score"]}}'
    )
    p.add_argument("--runner", default=IN_PROCESS, help="Beam runner (default: %(default)s)")
    p.add_argument("--overwrite", action="store_true", help="replace Transform output already in --output")
    p.set_defaults(func=_transform)

    p = commands.add_parser("ingest", help="ExampleGen: raw logs to tf.Example TFRecords with Beam")
    p.add_argument("--format", required=True, choices=FORMATS)
    p.add_argument("--input", required=True, help="aliccp-raw, aliexpress: a folder; aliccp-csv: a folder or a file")
    p.add_argument("--output", required=True, help="writes examples/{train,eval,test}/, rejected/, stats.json")
    p.add_argument(
        "--eval-fraction", type=_fraction, default=0.1, help="share of training rows for eval (default: %(default)s)"
    )
    p.add_argument(
        "--runner",
        default=IN_PROCESS,
        help="Beam runner: in-process, DataflowRunner, FlinkRunner, ... (default: %(default)s)",
    )
    p.add_argument("--overwrite", action="store_true", help="replace ExampleGen output already in --output")
    p.set_defaults(func=_ingest)

    synth = commands.add_parser("synth", help="write synthetic data").add_subparsers(
        dest="generator", required=True, metavar="GENERATOR", parser_class=_Parser
    )
    p = synth.add_parser("aliccp", help="raw Ali-CCP files with labels from a known model")
    p.add_argument("--rows", type=_positive, required=True, help="valid sample rows over train and test")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", required=True)
    p.add_argument("--test-fraction", type=_fraction, default=0.2)
    p.add_argument(
        "--malformed-rate",
        type=_fraction,
        default=0.0,
        help="malformed lines per valid line, of every kind, counted in synth.json",
    )
    p.set_defaults(func=_synth_aliccp)
    p = synth.add_parser("fdn", help="the FDN paper's synthetic regression (Dataset-A, -B, -I)")
    p.add_argument("--rows", type=_positive, default=10_000, help="rows per dataset (default: %(default)s)")
    p.add_argument("--dimension", type=_positive, default=100, help="feature dimension d (default: %(default)s)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", required=True)
    p.set_defaults(func=_synth_fdn)
    p = synth.add_parser("mmoe", help="the MMoE paper's two-task regression with a chosen task correlation")
    p.add_argument("--correlation", type=float, required=True, help="cosine of the two tasks' weights, in [-1, 1]")
    p.add_argument("--rows", type=_positive, default=10_000)
    p.add_argument("--dimension", type=_positive, default=100)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", required=True)
    p.set_defaults(func=_synth_mmoe)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    beam_args = argv[argv.index("--") + 1 :] if "--" in argv else []
    argv = argv[: argv.index("--")] if "--" in argv else argv
    try:
        args = build_parser().parse_args(argv)
        from pipeline.dag import configure_logging

        configure_logging(args.verbose)
        args.func(args, beam_args)
    except UsageError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # `mtrank score ... | head`: the reader has gone
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141
    return 0


if __name__ == "__main__":
    sys.exit(main())
