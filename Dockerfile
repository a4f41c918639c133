# The project's one image, `mtrank:<pyproject version>`: every Kubeflow Pipelines component, the
# retraining CronJob (k8s/retraining/) and the TFJob (k8s/training/) run it.
#
#   docker build -t mtrank:0.1.0 .
#
# The Python minor version must be the one requirements.lock was resolved with (requires-python
# in pyproject.toml), and the lock's TensorFlow the minor version of the TF Serving images in k8s/;
# tests/test_dockerfile.py checks both, and that every file `pip install .` needs is copied.
FROM python:3.11-slim-bookworm

LABEL org.opencontainers.image.title="mtrank" \
      org.opencontainers.image.version="0.1.0" \
      org.opencontainers.image.description="Multi-task ranking pipeline: ExampleGen, Transform, Trainer, Evaluator, Pusher, serving"

ENV PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

# The runtime user: uid/gid 1000, as the manifests' securityContext (runAsUser, fsGroup) expects.
# Its home holds what Keras and TensorFlow cache at run time. KFP v2's launcher stages artifacts
# under /gcs, /minio and /s3 as the container's user; backends that do not mount emptyDirs there
# need the folders to exist and be writable.
RUN groupadd --gid 1000 mtrank \
 && useradd --uid 1000 --gid 1000 --create-home --home-dir /home/mtrank --shell /usr/sbin/nologin mtrank \
 && mkdir /gcs /minio /s3 \
 && chown mtrank:mtrank /gcs /minio /s3

WORKDIR /app

# The exact dependency set first, in its own layer: a code change does not reinstall TensorFlow.
COPY requirements.lock ./
RUN pip install --no-cache-dir -r requirements.lock

# The project itself, without dependencies (the lock holds all of them): pyproject.toml and the
# packages its [tool.setuptools.packages.find] includes. The build's leftovers are removed.
COPY pyproject.toml ./
COPY mtrank/ mtrank/
COPY common/ common/
COPY example_gen/ example_gen/
COPY synth/ synth/
COPY pipeline/ pipeline/
COPY transform/ transform/
COPY trainer/ trainer/
COPY serving/ serving/
COPY experiments/ experiments/
RUN pip install --no-cache-dir --no-deps . \
 && rm -rf build mtrank.egg-info \
 && chown mtrank:mtrank /app

# /app (the working directory) is the user's, so relative outputs such as the default runs/ work;
# the installed code stays root's and read-only.
USER 1000:1000

ENTRYPOINT ["mtrank"]
CMD ["--help"]
