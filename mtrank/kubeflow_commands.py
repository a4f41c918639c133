"""`mtrank compile` and `mtrank schedule`: the Kubeflow pipeline for a cluster, and its recurring run."""

from __future__ import annotations

import os

from mtrank.args import UsageError, load_json_object


def _compile(args, _) -> None:
    if args.experiment:
        return _compile_experiment(args)
    if args.preset or args.seeds or args.gpu or args.scale != "quick" or args.data:
        raise UsageError("compile: --scale, --preset, --seeds, --data and --gpu go with --experiment NAME")
    from pipeline import kubeflow

    try:
        kubeflow.compile_pipeline(args.output, args.image)
    except OSError as e:
        raise UsageError(f"compile: cannot write {args.output}: {e.strerror}") from None
    print(
        f"wrote the Kubeflow pipeline {kubeflow.PIPELINE_NAME!r} (image {args.image}) to {args.output}; "
        f"upload it in the KFP UI, or: mtrank schedule --host URL --pipeline {args.output}"
    )


def _compile_experiment(args) -> None:
    from experiments import base, cli, grid, kubeflow

    if args.experiment not in cli.EXPERIMENTS:
        raise UsageError(
            f"compile: unknown experiment {args.experiment!r}; known: {', '.join(sorted(cli.EXPERIMENTS))}"
        )
    try:
        cells = kubeflow.compile_pipeline(
            args.output,
            args.experiment,
            scale=args.scale,
            preset=args.preset,
            seeds=args.seeds,
            data=args.data,
            image=args.image,
            gpu=args.gpu,
        )
    except (ValueError, base.DataError, grid.GridError) as e:
        raise UsageError(f"compile: {e}") from None
    except OSError as e:
        raise UsageError(f"compile: cannot write {args.output}: {e.strerror}") from None
    print(
        f"wrote the Kubeflow pipeline {kubeflow.PIPELINE_PREFIX + args.experiment!r} (image {args.image}): "
        f"{cells} cells in a ParallelFor{', one GPU each' if args.gpu else ''}, then the report; to {args.output}"
    )


def _schedule(args, _) -> None:
    from pipeline import kubeflow

    if not os.path.isfile(args.pipeline):
        raise UsageError(f"schedule: --pipeline {args.pipeline} is not a file (make it with mtrank compile)")
    parameters = load_json_object(args.parameters, "schedule", "pipeline parameters") if args.parameters else {}
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


def add_compile(commands) -> None:
    from pipeline import IMAGE

    p = commands.add_parser(
        "compile", help="the Kubeflow pipeline (KFP v2 YAML) for a cluster, or an experiment's grid (--experiment)"
    )
    p.add_argument("--output", default="pipeline.yaml", help="(default: %(default)s)")
    p.add_argument(
        "--image", default=IMAGE, help="every component's image, built from the Dockerfile (default: %(default)s)"
    )
    p.add_argument(
        "--experiment",
        metavar="NAME",
        help="compile this experiment's grid instead (mtrank experiment's names): its cells in a ParallelFor, "
        "one pod each, then the report",
    )
    p.add_argument(
        "--scale", choices=("quick", "full"), default="quick", help="with --experiment (default: %(default)s)"
    )
    p.add_argument(
        "--preset",
        choices=("paper", "project"),
        help="with --experiment (default: paper at --scale full, project at quick)",
    )
    p.add_argument("--seeds", type=int, metavar="N", help="with --experiment: seeds 0..N-1 (default: the scale's)")
    p.add_argument(
        "--data", metavar="DIR", help="with --experiment: a ranking experiment's data folder, as the pods see it"
    )
    p.add_argument(
        "--gpu", action="store_true", help="with --experiment: one NVIDIA GPU per cell (an image with the gpu extra)"
    )
    p.set_defaults(func=_compile)


def add_schedule(commands) -> None:
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
