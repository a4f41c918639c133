"""`mtrank run`, `ingest`, `transform` and `train`: the pipeline and its stages one at a time."""

from __future__ import annotations

import os

from mtrank.args import UsageError, config_sections, fraction, load_json_object, positive, probability, run_stage


def _ingest(args, beam_args) -> None:
    from pipeline import dag

    run_stage(
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

    preprocessing = load_json_object(args.config, "transform", "options") if args.config else {}
    for key, value in (("frequency_threshold", args.frequency_threshold), ("num_oov_buckets", args.oov_buckets)):
        if value is not None:
            preprocessing[key] = value
    run_stage(
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


def _trainer_config(args, command: str, config: dict) -> dict:
    """The trainer sections of --config, with the flags that override them."""
    from pipeline import dag

    return run_stage(
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

    config = _trainer_config(args, "train", config_sections(args, "train"))
    run_stage(
        "train",
        dag.trainer,
        args.transformed,
        args.output or args.transformed,
        config,
        warm_start_from=args.warm_start_from,
        overwrite=args.overwrite,
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
    sections = config_sections(args, "run")
    config = _trainer_config(args, "run", sections)
    raw = sections.get("evaluator") or {}
    run_stage("run", dag.eval_config, raw)
    transform_section = sections.get("transform") or {}
    noise_proportion = run_stage("run", dag.transform_config, transform_section)["noise_proportion"]
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
    steps = (args.data is None) + (1 if args.runner == "kfp-local" else 6) + (not args.no_serve)
    step = 0

    def stage(text: str) -> None:
        nonlocal step
        step += 1
        print(f"[{step}/{steps}] {text}", flush=True)

    if args.runner == "kfp-local":
        from pipeline import kubeflow

        result = run_stage("run", kubeflow.run_local, options, stage)
    else:
        result = run_stage("run", dag.run_local, options, stage)
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


def _add_trainer_flags(p, config_help: str = "JSON file of trainer config sections (README: Trainer)") -> None:
    from trainer.config import MODEL_NAMES

    p.add_argument("--config", help=config_help)
    p.add_argument("--model", choices=MODEL_NAMES, help="the model (default: mmoe, or the config's)")
    p.add_argument("--epochs", type=positive, help="most epochs; early stopping may end sooner (default: 10)")
    p.add_argument("--batch-size", type=positive, help="examples per step (default: 2048)")
    p.add_argument("--train-seed", type=int, help="seed of initialisation and batch order (default: 0)")
    p.add_argument("--mtn", type=float, metavar="LAMBDA", help="add the MTN regulariser with this lambda (paper: 1e-5)")


def add_run(commands) -> None:
    from common import IN_PROCESS
    from example_gen import FORMATS

    p = commands.add_parser(
        "run", help="the pipeline end to end: ExampleGen, Transform, Trainer, Evaluator, Pusher, serving"
    )
    p.add_argument("--data", help="raw data folder (default: generate synthetic raw Ali-CCP)")
    p.add_argument("--format", choices=FORMATS, help="format of --data")
    p.add_argument("--output", default="runs/default", help="folder for every artifact (default: %(default)s)")
    p.add_argument(
        "--rows", type=positive, default=200_000, help="synthetic rows without --data (default: %(default)s)"
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
        type=probability,
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


def add_train(commands) -> None:
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


def add_transform(commands) -> None:
    from common import IN_PROCESS

    p = commands.add_parser("transform", help="Transform: tf.Transform vocabularies and normalisation, noise injection")
    p.add_argument("--examples", required=True, help="ExampleGen's output folder (examples/ and stats.json)")
    p.add_argument("--output", required=True, help="writes transform_graph/ and transformed/{train,eval,test}/")
    p.add_argument(
        "--noise-proportion",
        type=probability,
        default=0.0,
        metavar="P",
        help="share of training rows that get noise (MTN paper: 0.05, 0.1, 0.15; default: %(default)s)",
    )
    p.add_argument(
        "--noise-feature-prob",
        type=probability,
        default=0.2,
        metavar="Q",
        help="chance that each feature of a noisy row is replaced (default: %(default)s)",
    )
    p.add_argument("--seed", type=int, default=0, help="seed of the noise (default: %(default)s)")
    p.add_argument(
        "--frequency-threshold", type=positive, help="ids seen fewer times in training go to OOV (default: 1)"
    )
    p.add_argument("--oov-buckets", type=positive, help="out-of-vocabulary buckets per field (default: 1)")
    p.add_argument(
        "--config", help='JSON file of preprocessing options, e.g. {"numeric": {"numerical_1": ["log1p", "z_score"]}}'
    )
    p.add_argument("--runner", default=IN_PROCESS, help="Beam runner (default: %(default)s)")
    p.add_argument("--overwrite", action="store_true", help="replace Transform output already in --output")
    p.set_defaults(func=_transform)


def add_ingest(commands) -> None:
    from common import IN_PROCESS
    from example_gen import FORMATS

    p = commands.add_parser("ingest", help="ExampleGen: raw logs to tf.Example TFRecords with Beam")
    p.add_argument("--format", required=True, choices=FORMATS)
    p.add_argument("--input", required=True, help="aliccp-raw, aliexpress: a folder; aliccp-csv: a folder or a file")
    p.add_argument("--output", required=True, help="writes examples/{train,eval,test}/, rejected/, stats.json")
    p.add_argument(
        "--eval-fraction", type=fraction, default=0.1, help="share of training rows for eval (default: %(default)s)"
    )
    p.add_argument(
        "--runner",
        default=IN_PROCESS,
        help="Beam runner: in-process, DataflowRunner, FlinkRunner, ... (default: %(default)s)",
    )
    p.add_argument("--overwrite", action="store_true", help="replace ExampleGen output already in --output")
    p.set_defaults(func=_ingest)
