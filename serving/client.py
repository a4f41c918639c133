"""Clients of TF Serving's REST and gRPC APIs (the local server's and the real one's), and the
row reader of `mtrank score`.

    client = RestClient("http://localhost:8501", "mtrank")
    scores = client.predict_examples(serialized_examples)   # {"ctr": array, "cvr": ..., "ctcvr": ...}
"""

from __future__ import annotations

import base64
import json
import urllib.error
import urllib.parse
import urllib.request

import numpy as np

OUTPUTS = ("ctr", "cvr", "ctcvr")


class ServingError(RuntimeError):
    """The server answered with an error: `status` (HTTP code or gRPC status name) and its message."""

    def __init__(self, status, message: str):
        super().__init__(f"{status}: {message}")
        self.status, self.message = status, message


def _model_path(model: str, version: int | None, label: str | None) -> str:
    path = f"/v1/models/{urllib.parse.quote(model)}"
    if version is not None:
        path += f"/versions/{int(version)}"
    elif label is not None:
        path += f"/labels/{urllib.parse.quote(label)}"
    return path


class RestClient:
    def __init__(
        self, url: str, model: str, version: int | None = None, label: str | None = None, timeout: float = 30.0
    ):
        self.url = url.rstrip("/")
        self.path = _model_path(model, version, label)
        self.timeout = timeout

    def _call(self, path: str, body: dict | None = None) -> dict:
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(self.url + path, data=data, headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as response:
                return json.loads(response.read())
        except urllib.error.HTTPError as e:
            text = e.read().decode(errors="replace")
            try:
                message = json.loads(text)["error"]
            except (ValueError, KeyError, TypeError):
                message = text or e.reason
            raise ServingError(e.code, message) from None
        except urllib.error.URLError as e:
            raise ServingError("unreachable", f"{self.url}: {e.reason}") from None

    def status(self) -> dict:
        return self._call(self.path)

    def metadata(self) -> dict:
        return self._call(self.path + "/metadata")

    def predict(self, body: dict) -> dict:
        """The raw predict call: `body` is TF Serving's request JSON."""
        return self._call(self.path + ":predict", body)

    def predict_examples(self, examples: list[bytes]) -> dict:
        """{output: array} for serialized raw tf.Examples, through `serving_default`."""
        body = {
            "signature_name": "serving_default",
            "instances": [{"b64": base64.b64encode(e).decode()} for e in examples],
        }
        return _columns(self.predict(body)["predictions"])


def _columns(predictions: list[dict]) -> dict:
    return {name: np.array([row[name] for row in predictions], dtype=np.float32) for name in OUTPUTS}


class GrpcClient:
    """PredictionService and ModelService over gRPC (TF Serving's port 8500)."""

    def __init__(
        self, target: str, model: str, version: int | None = None, label: str | None = None, timeout: float = 30.0
    ):
        import grpc
        from tensorflow_serving.apis import model_service_pb2_grpc, prediction_service_pb2_grpc

        self._channel = grpc.insecure_channel(
            target,
            options=[("grpc.max_receive_message_length", 64 * 2**20), ("grpc.max_send_message_length", 64 * 2**20)],
        )
        self._predictions = prediction_service_pb2_grpc.PredictionServiceStub(self._channel)
        self._models = model_service_pb2_grpc.ModelServiceStub(self._channel)
        self.model, self.version, self.label, self.timeout = model, version, label, timeout

    def close(self) -> None:
        self._channel.close()

    def _spec(self, message, signature: str | None = None) -> None:
        message.model_spec.name = self.model
        if self.version is not None:
            message.model_spec.version.value = self.version
        elif self.label is not None:
            message.model_spec.version_label = self.label
        if signature:
            message.model_spec.signature_name = signature

    def _call(self, method, request):
        import grpc

        try:
            return method(request, timeout=self.timeout)
        except grpc.RpcError as e:
            raise ServingError(e.code().name, e.details()) from None

    def status(self):
        from tensorflow_serving.apis import get_model_status_pb2

        request = get_model_status_pb2.GetModelStatusRequest()
        self._spec(request)
        return self._call(self._models.GetModelStatus, request)

    def metadata(self):
        from tensorflow_serving.apis import get_model_metadata_pb2

        request = get_model_metadata_pb2.GetModelMetadataRequest(metadata_field=["signature_def"])
        self._spec(request)
        return self._call(self._predictions.GetModelMetadata, request)

    def predict(self, inputs: dict, signature: str = "serving_default"):
        """The PredictResponse for {input: array-like}."""
        import tensorflow as tf
        from tensorflow_serving.apis import predict_pb2

        request = predict_pb2.PredictRequest()
        self._spec(request, signature)
        for name, value in inputs.items():
            request.inputs[name].CopyFrom(tf.make_tensor_proto(value))
        return self._call(self._predictions.Predict, request)

    def predict_examples(self, examples: list[bytes]) -> dict:
        import tensorflow as tf

        response = self.predict({"examples": np.array(examples, dtype=object)})
        return {name: tf.make_ndarray(response.outputs[name]) for name in OUTPUTS}
