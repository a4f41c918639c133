"""The DAG on Kubeflow Pipelines (KFP v2): compiled for a cluster, or run by KFP's local runner.

Each stage is a lightweight Python component whose body calls its function in `pipeline.dag`, so a
cluster run, a `--runner kfp-local` run and a plain local run execute the same code. Components
run the project's image (`Dockerfile`), which holds the project and its locked dependencies, so
nothing is installed when a component starts (`install_kfp_package=False`).

Artifacts passed between steps, as TFX names them:
    examples (Dataset)          ExampleGen's folder: examples/{train,eval,test}/, rejected/, stats.json
    transform_graph (Artifact)  Transform's folder: transform_graph/ and transformed/{split}/
    model (Model)               the Trainer's run folder: model/ with model/serving/ (the SavedModel)
    evaluation (Artifact)       evaluation/metrics.json and BLESSED or NOT_BLESSED
    pushed (Artifact)           run.json: config, packages, data fingerprint, lineage, version pushed
On a cluster the raw data and the serving base live on PersistentVolumeClaims (`k8s/`), mounted
into the steps that read them; the serving base is the claim TF Serving reads.

Caching is off for every step: a scheduled run on the same data path must read the new data.
"""

import os
from kfp import dsl
from kfp.dsl import Artifact, Dataset, Input, Model, Output

from pipeline import IMAGE

DATA_CLAIM, DATA_MOUNT = "mtrank-data", "/data"
MODELS_CLAIM, MODELS_MOUNT = "mtrank-models", "/models"
PIPELINE_NAME = "mtrank"


# --- component bodies: self-contained (KFP ships each function's source), calling pipeline.dag ----------


def example_gen(data: str, data_format: str, beam_runner: str, beam_args: list, examples: Output[Dataset]) -> dict:
    from pipeline import dag, run_record

    dag.configure_logging()
    # Remote Beam workers cannot see this pod's files: they write to the artifact's URI (gs://...).
    output = examples.path if beam_runner == "in-process" else examples.uri
    dag.example_gen(data, data_format, output, beam_runner, beam_args)
    return run_record.fingerprint(data)  # of the data as read now, for the run record


def transform(
    examples: Input[Dataset],
    seed: int,
    noise_proportion: float,
    transform_config: str,
    beam_runner: str,
    beam_args: list,
    transform_graph: Output[Artifact],
):
    import json

    from pipeline import dag

    dag.configure_logging()
    section = json.loads(transform_config)
    if noise_proportion:  # the pipeline parameter wins over the section's
        section["noise_proportion"] = noise_proportion
    options = dag.transform_config(section)
    remote = beam_runner != "in-process"  # remote Beam workers read and write the artifacts' URIs
    dag.transform(
        examples.uri if remote else examples.path,
        transform_graph.uri if remote else transform_graph.path,
        seed=seed,
        noise_proportion=options["noise_proportion"],
        noise_feature_prob=options["noise_feature_prob"],
        preprocessing=options["preprocessing"],
        runner=beam_runner,
        beam_args=beam_args,
    )


def trainer(
    transform_graph: Input[Artifact],
    trainer_config: str,
    model_choice: str,
    mtn_lambda: float,
    epochs: int,
    warm_start: bool,
    serving_base: str,
    model_name: str,
    model: Output[Model],
):
    import json

    from pipeline import dag

    dag.configure_logging()
    config = dag.trainer_config(
        json.loads(trainer_config), model=model_choice or None, epochs=epochs or None, mtn=mtn_lambda or None
    )
    dag.trainer(
        transform_graph.path,
        model.path,
        config,
        warm_start_from=dag.warm_start_source(serving_base, model_name, warm_start),
    )


def reference_trainer(transform_graph: Input[Artifact], trainer_config: str, epochs: int, reference: Output[Model]):
    import json

    from pipeline import dag

    dag.configure_logging()
    config = dag.trainer_config(json.loads(trainer_config), epochs=epochs or None)
    dag.trainer(transform_graph.path, reference.path, dag.reference_config(config))


def evaluator(
    model: Input[Model],
    reference: Input[Model],
    examples: Input[Dataset],
    eval_config: str,
    serving_base: str,
    model_name: str,
    evaluation: Output[Artifact],
) -> bool:
    import os

    import json

    from common import layout
    from pipeline import dag, pusher

    dag.configure_logging()
    baseline = pusher.latest(os.path.join(serving_base, model_name))
    result = dag.evaluator(
        os.path.join(model.path, layout.MODEL, layout.SERVING),
        examples.path,
        evaluation.path,
        dag.eval_config(json.loads(eval_config)),
        baseline,
        os.path.join(reference.path, layout.MODEL, layout.SERVING),
    )
    return result["blessed"]


def pusher(
    model: Input[Model],
    evaluation: Input[Artifact],
    examples: Input[Dataset],
    transform_graph: Input[Artifact],
    data: str,
    data_format: str,
    data_fingerprint: dict,
    serving_base: str,
    model_name: str,
    noise_proportion: float,
    seed: int,
    warm_start: bool,
    beam_runner: str,
    beam_args: list,
    runner: str,
    pushed: Output[Artifact],
) -> int:
    import os

    from common import layout
    from pipeline import dag

    dag.configure_logging()
    saved_model = os.path.join(model.path, layout.MODEL, layout.SERVING)
    result = dag.pusher(saved_model, evaluation.path, serving_base, model_name)
    os.makedirs(pushed.path, exist_ok=True)
    arguments = {
        "data": data,
        "data_format": data_format,
        "serving_base": serving_base,
        "model_name": model_name,
        "noise_proportion": noise_proportion,
        "seed": seed,
        "warm_start": warm_start,
        "beam_runner": beam_runner,
        "runner": runner,
    }
    artifacts = {"examples": examples, "transform_graph": transform_graph, "model": model, "evaluation": evaluation}
    dag.record(
        pushed.path,
        arguments,
        data=data,
        data_format=data_format,
        data_fingerprint=data_fingerprint,
        pushed=result,
        beam_args=beam_args,
        artifacts={k: a.uri for k, a in artifacts.items()},
        readable={k: a.path for k, a in artifacts.items()},
    )
    return result["version"] if result else 0


# --- the pipeline ---------------------------------------------------------------------------------------


def build(image: str = IMAGE, claims: bool = True):
    """The pipeline function. `claims`: mount the data and models claims (a cluster; off locally)."""

    def component(func):
        return dsl.component(func, base_image=image, install_kfp_package=False)

    steps = {f.__name__: component(f) for f in (example_gen, transform, trainer, reference_trainer, evaluator, pusher)}

    def mount(task, claim: str, path: str):
        if claims:
            from kfp import kubernetes

            kubernetes.mount_pvc(task, pvc_name=claim, mount_path=path)
        return task

    @dsl.pipeline(
        name=PIPELINE_NAME,
        description="ExampleGen -> Transform -> Trainer -> Evaluator -> Pusher for multi-task CTR/CVR ranking",
    )
    def mtrank(
        data: str = f"{DATA_MOUNT}/latest",
        data_format: str = "aliccp-raw",
        serving_base: str = MODELS_MOUNT,
        model_name: str = "mtrank",
        model: str = "",
        mtn_lambda: float = 0.0,
        noise_proportion: float = 0.0,
        epochs: int = 0,
        seed: int = 0,
        warm_start: bool = True,
        trainer_config: str = "{}",
        eval_config: str = "{}",
        transform_config: str = "{}",
        beam_runner: str = "in-process",
        beam_args: list = [],
        runner: str = "kubeflow",
    ) -> Artifact:
        gen = mount(
            steps["example_gen"](data=data, data_format=data_format, beam_runner=beam_runner, beam_args=beam_args),
            DATA_CLAIM,
            DATA_MOUNT,
        )
        gen.set_display_name("ExampleGen").set_cpu_request("2").set_memory_request("8G")
        transformed = steps["transform"](
            examples=gen.outputs["examples"],
            seed=seed,
            noise_proportion=noise_proportion,
            transform_config=transform_config,
            beam_runner=beam_runner,
            beam_args=beam_args,
        )
        transformed.set_display_name("Transform").set_cpu_request("2").set_memory_request("8G")
        train = mount(
            steps["trainer"](
                transform_graph=transformed.outputs["transform_graph"],
                trainer_config=trainer_config,
                model_choice=model,
                mtn_lambda=mtn_lambda,
                epochs=epochs,
                warm_start=warm_start,
                serving_base=serving_base,
                model_name=model_name,
            ),
            MODELS_CLAIM,
            MODELS_MOUNT,
        )
        train.set_display_name("Trainer").set_cpu_request("4").set_memory_request("16G")
        reference = steps["reference_trainer"](
            transform_graph=transformed.outputs["transform_graph"], trainer_config=trainer_config, epochs=epochs
        )
        reference.set_display_name("Trainer (linear reference)").set_cpu_request("2").set_memory_request("8G")
        evaluate = mount(
            steps["evaluator"](
                model=train.outputs["model"],
                reference=reference.outputs["reference"],
                examples=gen.outputs["examples"],
                eval_config=eval_config,
                serving_base=serving_base,
                model_name=model_name,
            ),
            MODELS_CLAIM,
            MODELS_MOUNT,
        )
        evaluate.set_display_name("Evaluator").set_cpu_request("2").set_memory_request("8G")
        push = steps["pusher"](
            model=train.outputs["model"],
            evaluation=evaluate.outputs["evaluation"],
            examples=gen.outputs["examples"],
            transform_graph=transformed.outputs["transform_graph"],
            data=data,
            data_format=data_format,
            data_fingerprint=gen.outputs["Output"],
            serving_base=serving_base,
            model_name=model_name,
            noise_proportion=noise_proportion,
            seed=seed,
            warm_start=warm_start,
            beam_runner=beam_runner,
            beam_args=beam_args,
            runner=runner,
        )
        mount(push, MODELS_CLAIM, MODELS_MOUNT).set_display_name("Pusher")
        for task in (gen, transformed, train, reference, evaluate, push):
            task.set_caching_options(False)
        return push.outputs["pushed"]

    return mtrank


def compile_pipeline(path: str, image: str = IMAGE) -> str:
    from kfp import compiler

    compiler.Compiler().compile(build(image), package_path=path)
    return path


def init_local(root: str) -> None:
    """KFP's local subprocess runner, each component a process of this environment, artifacts under
    `root`; the components find this checkout's packages even where it is not installed."""
    import warnings

    from kfp import local

    workspace = os.path.join(root, ".workspace")
    os.makedirs(workspace, exist_ok=True)
    local.init(runner=local.SubprocessRunner(use_venv=False), pipeline_root=root, workspace_root=workspace)
    # The image stands for this environment here; resources apply on a cluster only.
    warnings.filterwarnings("ignore", message=".*(no effect in the current local runner|non-Python base image).*")
    project = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (project, os.environ.get("PYTHONPATH")) if p)


def run_local(options, stage) -> dict:
    """`mtrank run --runner kfp-local`: the pipeline through KFP's local subprocess runner, each
    component in its own process of this environment; artifacts under OUTPUT/kfp/."""
    import json
    import re
    import shutil

    from pipeline import dag

    if options.data is None:
        stage(f"synth: {options.rows:,} rows of raw Ali-CCP -> {os.path.join(options.output, 'raw')}")
    data, data_format = dag.synthesize(options)
    dag.eval_config(options.eval_config)  # a bad section fails here, not in a component
    dag.transform_config(options.transform_config)
    root = os.path.join(options.output, "kfp")
    stage(
        f"Kubeflow Pipelines local runner: ExampleGen -> Transform -> Trainer (+ the linear reference) -> "
        f"Evaluator -> Pusher, "
        f"artifacts under {root}"
    )
    init_local(root)
    arguments = dict(
        data=data,
        data_format=data_format,
        serving_base=options.serving_base,
        model_name=options.model_name,
        noise_proportion=options.noise_proportion,
        seed=options.seed,
        warm_start=options.warm_start,
        trainer_config=json.dumps(options.trainer_config),
        eval_config=json.dumps(options.eval_config),
        transform_config=json.dumps(options.transform_config),
        beam_runner=options.beam_runner,
        beam_args=list(options.beam_args),
        runner="kfp-local",
    )
    try:
        task = build(claims=False)(**arguments)
    except RuntimeError as e:  # KFP has logged the failing component's output above
        raise dag.StageError(re.sub(r"\x1b\[[0-9;]*m", "", str(e)) + " (its log is above)") from None
    record_path = os.path.join(options.output, "run.json")
    shutil.copyfile(os.path.join(task.output.path, "run.json"), record_path)
    with open(record_path) as f:
        record = json.load(f)
    print(f"  run record: {record_path}", flush=True)
    return {"examples": record["lineage"]["examples"], "pushed": record["lineage"]["pushed"], "record": record_path}


def schedule(
    host: str, pipeline_file: str, cron: str, experiment: str, job_name: str, parameters: dict, client=None
) -> dict:
    """A KFP recurring run of the compiled pipeline: at most one run at a time, no catch-up of
    missed runs. `client` defaults to `kfp.Client(host)`."""
    import kfp

    from pipeline import dag

    client = client or kfp.Client(host=host)
    experiment_id = client.create_experiment(name=experiment).experiment_id
    # Two recurring runs of one pipeline would overlap each other despite max concurrency 1 each.
    existing = client.list_recurring_runs(experiment_id=experiment_id, page_size=1000).recurring_runs or []
    same = [r.recurring_run_id for r in existing if r.display_name == job_name]
    if same:
        raise dag.StageError(
            f"experiment {experiment!r} already has a recurring run {job_name!r} ({', '.join(same)}); "
            "delete it in the KFP UI (or with kfp.Client().delete_recurring_run) before scheduling "
            "another, or pick another --job-name"
        )
    job = client.create_recurring_run(
        experiment_id=experiment_id,
        job_name=job_name,
        cron_expression=cron,
        max_concurrency=1,
        no_catchup=True,
        pipeline_package_path=pipeline_file,
        params=parameters,
        enable_caching=False,
    )
    return {"experiment_id": experiment_id, "recurring_run_id": getattr(job, "recurring_run_id", None)}
