"""The DAG and its stages (ExampleGen, Evaluator, Pusher, synthetic data), its Kubeflow pipeline, and the
`mtrank` command line."""

IMAGE = "mtrank:0.1.0"  # the project's image (Dockerfile), run by every Kubeflow component and k8s job
