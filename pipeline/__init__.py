"""The DAG and its stages (ExampleGen, Evaluator, Pusher, synthetic data), its Kubeflow pipeline, and the
`mtrank` command line."""

IN_PROCESS = "in-process"  # the name of Beam's FnApiRunner in this process, for --runner
IMAGE = "mtrank:0.1.0"  # the project's image (Dockerfile), run by every Kubeflow component and k8s job
