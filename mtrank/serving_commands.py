"""`mtrank serve` and `mtrank score`: TF Serving's APIs over pushed models, and a client of them."""

from __future__ import annotations

import logging
import os
import sys

from mtrank.args import UsageError, nonnegative, positive

_LOG = logging.getLogger("mtrank")


def _serve(args, beam_args) -> None:
    from pipeline.dag import import_tensorflow_quietly

    import_tensorflow_quietly()
    import tensorflow as tf

    from serving import config as serving_config
    from serving import server

    try:
        config = serving_config.server_config(args)
    except serving_config.ConfigError as e:
        raise UsageError(f"serve: {e}") from None
    try:
        tf.config.threading.set_intra_op_parallelism_threads(args.tensorflow_intra_op_parallelism)
        tf.config.threading.set_inter_op_parallelism_threads(args.tensorflow_inter_op_parallelism)
    except RuntimeError:  # TensorFlow already ran in this process (serve called in-process)
        _LOG.warning("TensorFlow is initialised already: its thread pools stay as they are")

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


def add_serve(commands) -> None:
    from serving import config as serving_defaults

    p = commands.add_parser("serve", help="serve SavedModel versions with TF Serving's REST and gRPC APIs")
    p.add_argument("--model-name", default="mtrank", help="the model's name in request paths (default: %(default)s)")
    p.add_argument("--model-base-path", help="folder of integer-named SavedModel versions, e.g. BASE/1/saved_model.pb")
    p.add_argument(
        "--model-config-file", help="TF Serving ModelServerConfig text proto (models, version policies, labels)"
    )
    p.add_argument(
        "--num-versions", type=positive, default=1, help="the latest N versions are served (default: %(default)s)"
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
        type=positive,
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
        type=positive,
        default=serving_defaults.DEFAULT_NUM_BATCH_THREADS,
        help="batches run at once (default: %(default)s)",
    )
    p.add_argument(
        "--batching-parameters-file",
        help="TF Serving BatchingParameters text proto (overrides the three above; its max_batch_size "
        "also caps the rows of a request, as in TF Serving)",
    )
    p.add_argument("--no-batching", action="store_true", help="run each request on its own")
    p.add_argument(
        "--tensorflow-intra-op-parallelism",
        type=nonnegative,
        default=1,
        help="threads one op may use, as TF Serving's flag of that name; 0: one per core. Default "
        "%(default)s: batches already run --num-batch-threads at a time, and a one-thread op keeps "
        "the small batches of online traffic cheap (1,000-row requests take longer)",
    )
    p.add_argument(
        "--tensorflow-inter-op-parallelism",
        type=nonnegative,
        default=1,
        help="threads one model call runs its ops on, as TF Serving's flag of that name; 0: one per "
        "core (default: %(default)s)",
    )
    p.set_defaults(func=_serve)


def add_score(commands) -> None:
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
    p.add_argument("--model-version", type=positive, help="a version (default: the latest served)")
    p.add_argument("--batch-size", type=positive, default=1000, help="rows per request (default: %(default)s)")
    p.set_defaults(func=_score)
