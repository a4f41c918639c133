"""The pipeline: the DAG and its local and Kubeflow runners, the Evaluator, the Pusher and the run
record. It composes the stages below it (ExampleGen, Transform, Trainer)."""

IMAGE = "mtrank:0.1.0"  # the project's image (Dockerfile), run by every Kubeflow component and k8s job
