"""`mtrank serve`: TF Serving's REST and gRPC APIs over the same model base paths.

REST (as TF Serving documents it):
  GET  /v1/models/{name}[/versions/{v} | /labels/{l}]            status
  GET  /v1/models/{name}[/versions/{v} | /labels/{l}]/metadata   signatures
  POST /v1/models/{name}[/versions/{v} | /labels/{l}]:predict    instances or inputs
  GET  /monitoring/prometheus/metrics                            requests, errors, latency, batch sizes
Errors are `{"error": "..."}`: 400 for a bad request, 404 for an unknown model, version, label or
signature. gRPC: PredictionService (Predict, GetModelMetadata) and ModelService (GetModelStatus).
"""

from __future__ import annotations

import asyncio
import logging
import re
import signal
import threading
import time

import grpc
import numpy as np
import prometheus_client
import tensorflow as tf
from aiohttp import web
from google.protobuf import json_format
from tensorflow_serving.apis import (
    get_model_metadata_pb2,
    get_model_status_pb2,
    model_pb2,
    model_service_pb2_grpc,
    predict_pb2,
    prediction_service_pb2_grpc,
)

from serving import codec
from serving.batching import Batcher
from serving.codec import BadRequest
from serving.config import ServerConfig
from serving.servables import ModelManager, NotFound, Servable

_LOG = logging.getLogger(__name__)

METRICS_PATH = "/monitoring/prometheus/metrics"
_MODEL_PATH = re.compile(
    r"/v1/models/(?P<model>[^/:]+)(?:/versions/(?P<version>[^/:]+)|/labels/(?P<label>[^/:]+))?"
    r"(?:(?P<metadata>/metadata)|:(?P<verb>[A-Za-z]+))?/?"
)


class _Metrics:
    def __init__(self):
        self.registry = prometheus_client.CollectorRegistry()
        self.requests = prometheus_client.Counter(
            "serving_requests",
            "Requests by model, API and response code.",
            ["model", "api", "code"],
            registry=self.registry,
        )
        self.errors = prometheus_client.Counter(
            "serving_request_errors",
            "Requests answered with an error.",
            ["model", "api", "code"],
            registry=self.registry,
        )
        self.latency = prometheus_client.Histogram(
            "serving_request_latency_seconds",
            "Time from request to response.",
            ["model", "api"],
            buckets=(0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1, 2, 5),
            registry=self.registry,
        )
        self.batch_rows = prometheus_client.Histogram(
            "serving_batch_rows",
            "Rows per model call after server-side batching.",
            buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256, 1024, 4096),
            registry=self.registry,
        )

    def observe(self, model: str, api: str, code: int, seconds: float) -> None:
        self.requests.labels(model, api, str(code)).inc()
        if code >= 400:
            self.errors.labels(model, api, str(code)).inc()
        self.latency.labels(model, api).observe(seconds)


def _version_number(text: str | None) -> int | None:
    if text is None:
        return None
    if not text.isdigit():
        raise BadRequest(f"version {text!r} is not an integer")
    return int(text)


class PredictionServer:
    """The models and the operations both APIs share."""

    def __init__(self, config: ServerConfig, manager: ModelManager | None = None):
        self.config = config
        self.manager = manager or ModelManager(config.models)
        self.metrics = _Metrics()
        self.batcher = Batcher(config.batching, on_batch=self.metrics.batch_rows.observe)

    def status(self, model: str, version: int | None, label: str | None) -> get_model_status_pb2.GetModelStatusResponse:
        served = self.manager.versions(model)
        if version is not None or label is not None:
            served = {self.manager.find(model, version, label).version: None}
        if not served:
            raise NotFound(f"Could not find any versions of model {model}")
        response = get_model_status_pb2.GetModelStatusResponse()
        for number in sorted(served):
            status = response.model_version_status.add(
                version=number, state=get_model_status_pb2.ModelVersionStatus.AVAILABLE
            )
            status.status.error_code = 0
        return response

    def metadata(self, servable: Servable) -> get_model_metadata_pb2.GetModelMetadataResponse:
        response = get_model_metadata_pb2.GetModelMetadataResponse()
        response.model_spec.name = servable.model
        response.model_spec.version.value = servable.version
        response.metadata["signature_def"].Pack(_signature_map(servable))
        return response

    async def predict(self, signature, tensors: dict, rows: int) -> dict:
        if rows > self.config.max_request_rows:
            raise BadRequest(
                f"the request holds {rows:,} rows; a request holds at most "
                f"{self.config.max_request_rows:,} rows: split it"
            )
        try:
            return await self.batcher.run(signature, tensors, rows)
        except tf.errors.InvalidArgumentError as e:
            raise BadRequest(e.message.splitlines()[0]) from None
        except UnicodeDecodeError:  # TensorFlow's own message quoted the undecodable input
            raise BadRequest(
                f"signature {signature.name}: the model rejected the input "
                f"(for '{next(iter(signature.inputs))}': a value is not a serialized tf.Example)"
            ) from None


# ------------------------------------------------------------------------------------------ REST


def _json_error(status: int, message: str) -> web.Response:
    return web.json_response({"error": message}, status=status)


def _status_json(response) -> dict:
    return {
        "model_version_status": [
            {
                "version": str(s.version),
                "state": get_model_status_pb2.ModelVersionStatus.State.Name(s.state),
                "status": {"error_code": "OK", "error_message": ""},
            }
            for s in response.model_version_status
        ]
    }


def _signature_map(servable: Servable) -> get_model_metadata_pb2.SignatureDefMap:
    signature_map = get_model_metadata_pb2.SignatureDefMap()
    for name, definition in servable.signature_defs.items():
        signature_map.signature_def[name].CopyFrom(definition)
    return signature_map


def _metadata_json(servable: Servable) -> dict:
    return {
        "model_spec": {"name": servable.model, "signature_name": "", "version": str(servable.version)},
        "metadata": {
            "signature_def": json_format.MessageToDict(_signature_map(servable), preserving_proto_field_name=True)
        },
    }


def rest_app(server: PredictionServer) -> web.Application:
    async def models(request: web.Request) -> web.Response:
        match = _MODEL_PATH.fullmatch(request.path)
        if not match:
            return _json_error(404, f"Malformed request: {request.method} {request.path}")
        model, label = match["model"], match["label"]
        api = "predict" if match["verb"] else "metadata" if match["metadata"] else "status"
        started = time.perf_counter()
        code = 500
        try:
            response = await _models(request, match, model, label, api)
            code = response.status
            return response
        finally:
            server.metrics.observe(
                model if model in server.manager.model_names else "", api, code, time.perf_counter() - started
            )

    async def _models(request, match, model, label, api) -> web.Response:
        try:
            version = _version_number(match["version"])
            if api == "status":
                _allow(request, "GET")
                return web.json_response(_status_json(server.status(model, version, label)))
            servable = server.manager.find(model, version, label)
            if api == "metadata":
                _allow(request, "GET")
                return web.json_response(_metadata_json(servable))
            _allow(request, "POST")
            if match["verb"] != "predict":
                raise BadRequest(f"'{match['verb']}' is not supported: the models here have predict signatures only")
            signature_name, form, payload = codec.parse_body(await request.read())
            signature = servable.signature(signature_name)
            tensors, rows = codec.to_tensors(form, payload, signature.inputs)
            outputs = await server.predict(signature, tensors, rows)
            return web.Response(body=codec.encode_response(form, outputs), content_type="application/json")
        except BadRequest as e:
            return _json_error(400, str(e))
        except NotFound as e:
            return _json_error(404, str(e))
        except web.HTTPException as e:
            return _json_error(e.status, e.text or e.reason)

    async def prometheus(request: web.Request) -> web.Response:
        return web.Response(
            body=prometheus_client.generate_latest(server.metrics.registry),
            headers={"Content-Type": prometheus_client.CONTENT_TYPE_LATEST},
        )

    @web.middleware
    async def errors_as_json(request, handler):
        try:
            return await handler(request)
        except web.HTTPException as e:
            if e.status < 400:
                raise
            return _json_error(e.status, e.text if e.text and not e.text.startswith(str(e.status)) else e.reason)
        except Exception:  # noqa: BLE001 - a bug answers 500 in TF Serving's format and the server goes on
            _LOG.exception("request %s %s failed", request.method, request.path)
            return _json_error(500, "Internal error; see the server log")

    app = web.Application(client_max_size=server.config.max_request_mb * 2**20, middlewares=[errors_as_json])
    app.router.add_route("*", "/v1/models/{tail:.*}", models)
    app.router.add_get(METRICS_PATH, prometheus)
    return app


def _allow(request: web.Request, method: str) -> None:
    if request.method != method:
        raise web.HTTPMethodNotAllowed(
            request.method, [method], text=f"{request.path} takes {method}, not {request.method}"
        )


# ------------------------------------------------------------------------------------------ gRPC


def _ndarray(name: str, proto, max_rows: int) -> np.ndarray:
    """The array of a request's TensorProto, after checking its declared shape: a tiny proto can
    declare billions of elements."""
    dims = [d.size for d in proto.tensor_shape.dim]
    if any(d < 0 for d in dims) or (dims and dims[0] > max_rows) or np.prod(dims, dtype=np.float64) > max_rows * 4096:
        raise BadRequest(f"input '{name}': shape {dims} is not a batch of at most {max_rows:,} rows")
    try:
        return tf.make_ndarray(proto)
    except (TypeError, ValueError) as e:
        raise BadRequest(f"input '{name}' is not a valid TensorProto: {e}") from None


def _model_spec(spec: model_pb2.ModelSpec) -> tuple[int | None, str | None]:
    version = spec.version.value if spec.HasField("version") else None  # a oneof with version_label
    return version, spec.version_label or None


class _PredictionService(prediction_service_pb2_grpc.PredictionServiceServicer):
    def __init__(self, server: PredictionServer):
        self._server = server

    async def Predict(self, request: predict_pb2.PredictRequest, context) -> predict_pb2.PredictResponse:
        async def run():
            servable = self._server.manager.find(request.model_spec.name, *_model_spec(request.model_spec))
            signature = servable.signature(request.model_spec.signature_name or None)
            tensors = {
                name: _ndarray(name, proto, self._server.config.max_request_rows)
                for name, proto in request.inputs.items()
            }
            outputs = await self._server.predict(signature, tensors, codec.check_tensors(tensors, signature.inputs))
            unknown = set(request.output_filter) - set(outputs)
            if unknown:
                raise BadRequest(f"output_filter names unknown output(s) {', '.join(sorted(unknown))}")
            response = predict_pb2.PredictResponse()
            response.model_spec.name = servable.model
            response.model_spec.version.value = servable.version
            response.model_spec.signature_name = signature.name
            for name, value in outputs.items():
                if not request.output_filter or name in request.output_filter:
                    response.outputs[name].CopyFrom(tf.make_tensor_proto(value))
            return response

        return await _grpc_call(self._server, request.model_spec.name, "predict", run, context)

    async def GetModelMetadata(self, request, context):
        async def run():
            if list(request.metadata_field) != ["signature_def"]:
                raise BadRequest(f"metadata_field must be ['signature_def'], got {list(request.metadata_field)}")
            return self._server.metadata(
                self._server.manager.find(request.model_spec.name, *_model_spec(request.model_spec))
            )

        return await _grpc_call(self._server, request.model_spec.name, "metadata", run, context)


class _ModelService(model_service_pb2_grpc.ModelServiceServicer):
    def __init__(self, server: PredictionServer):
        self._server = server

    async def GetModelStatus(self, request, context):
        async def run():
            return self._server.status(request.model_spec.name, *_model_spec(request.model_spec))

        return await _grpc_call(self._server, request.model_spec.name, "status", run, context)


async def _grpc_call(server: PredictionServer, model: str, api: str, run, context):
    started = time.perf_counter()
    code = 200
    try:
        return await run()
    except BadRequest as e:
        code = 400
        await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(e))
    except NotFound as e:
        code = 404
        await context.abort(grpc.StatusCode.NOT_FOUND, str(e))
    except Exception:
        code = 500
        raise
    finally:
        server.metrics.observe(
            model if model in server.manager.model_names else "", "grpc_" + api, code, time.perf_counter() - started
        )


# ------------------------------------------------------------------------------------- running


class RunningServer:
    """A started server: its ports, and `stop()`."""

    def __init__(self, server: PredictionServer, runner, grpc_server, rest_port: int, grpc_port: int):
        self.server, self._runner, self._grpc = server, runner, grpc_server
        self.rest_port, self.grpc_port = rest_port, grpc_port
        self.rest_url = f"http://127.0.0.1:{rest_port}"
        self.grpc_target = f"127.0.0.1:{grpc_port}"

    async def close(self) -> None:
        await self._grpc.stop(grace=1.0)
        await self._runner.cleanup()
        self.server.manager.stop()
        self.server.batcher.close()


async def start(config: ServerConfig, manager: ModelManager | None = None) -> RunningServer:
    """Loads what the base paths hold, then listens; polls for new versions afterwards."""
    server = PredictionServer(config, manager)
    await asyncio.get_running_loop().run_in_executor(None, server.manager.poll)
    server.manager.start(config.poll_seconds)
    runner = web.AppRunner(rest_app(server), access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, config.host, config.rest_port)
    await site.start()
    rest_port = site._server.sockets[0].getsockname()[1]
    grpc_server = grpc.aio.server(options=[("grpc.max_receive_message_length", config.max_request_mb * 2**20)])
    prediction_service_pb2_grpc.add_PredictionServiceServicer_to_server(_PredictionService(server), grpc_server)
    model_service_pb2_grpc.add_ModelServiceServicer_to_server(_ModelService(server), grpc_server)
    grpc_port = grpc_server.add_insecure_port(f"{config.host}:{config.grpc_port}")
    await grpc_server.start()
    return RunningServer(server, runner, grpc_server, rest_port, grpc_port)


def serve_forever(config: ServerConfig, on_ready=None) -> None:
    """`mtrank serve`: runs until SIGINT or SIGTERM."""

    async def main():
        running = await start(config)
        stop = asyncio.Event()
        for sig in (signal.SIGINT, signal.SIGTERM):
            asyncio.get_running_loop().add_signal_handler(sig, stop.set)
        if on_ready:
            on_ready(running)
        await stop.wait()
        await running.close()

    asyncio.run(main())


class ServerThread:
    """A server on its own event loop in a background thread (tests, `mtrank run`)."""

    def __init__(self, config: ServerConfig):
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="mtrank-serve", daemon=True)
        self._thread.start()
        self.running: RunningServer = asyncio.run_coroutine_threadsafe(start(config), self._loop).result()
        self.rest_url, self.grpc_target = self.running.rest_url, self.running.grpc_target

    def stop(self) -> None:
        asyncio.run_coroutine_threadsafe(self.running.close(), self._loop).result()
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.stop()
