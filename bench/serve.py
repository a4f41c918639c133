"""Benchmark child: `mtrank serve` under load from this process, on loopback.

python bench/serve.py SAVED_MODEL EXAMPLES_DIR [--seconds S] [--clients N]
starts `mtrank serve` (its own process, default batching) on a copy of SAVED_MODEL as version 1,
then measures with an aiohttp load generator:
- single-row predict requests from N concurrent clients (closed loop) for S seconds, after a
  warm-up: requests/s and p50/p99 latency, for `serving_default` (a b64 tf.Example) and for
  `predict` (named JSON features);
- 1,000-row requests, one at a time: p50/p99 latency, both signatures;
- single-row `serving_default` again on a server started with --no-batching.
Prints one JSON line.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request

import aiohttp
import numpy as np


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _bodies(saved_model: str, examples_dir: str, rows: int) -> tuple[list[bytes], list[dict]]:
    """Raw test tf.Examples and the same rows as `predict` JSON rows."""
    import tensorflow as tf

    from trainer import export

    files = sorted(tf.io.gfile.glob(os.path.join(examples_dir, "examples", "test", "*")))
    records = [r.numpy() for r in tf.data.TFRecordDataset(files, compression_type="GZIP").take(rows)]
    signature = tf.saved_model.load(saved_model).signatures["predict"]
    tensors = {k: v.numpy().tolist() for k, v in export.predict_inputs(signature, records).items()}
    return records, [{k: v[i] for k, v in tensors.items()} for i in range(len(records))]


async def _closed_loop(url: str, bodies: list[bytes], clients: int, seconds: float) -> dict:
    latencies, errors = [], 0
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=clients)) as session:

        async def client(k: int, until: float, record: bool):
            nonlocal errors
            i = k
            while time.perf_counter() < until:
                started = time.perf_counter()
                async with session.post(url, data=bodies[i % len(bodies)]) as response:
                    await response.read()
                    if response.status != 200:
                        errors += 1
                if record:
                    latencies.append(time.perf_counter() - started)
                i += clients

        await asyncio.gather(*(client(k, time.perf_counter() + 2.0, False) for k in range(clients)))
        started = time.perf_counter()
        await asyncio.gather(*(client(k, started + seconds, True) for k in range(clients)))
        elapsed = time.perf_counter() - started
    ms = np.array(latencies) * 1000
    return {
        "requests_per_s": len(latencies) / elapsed,
        "p50_ms": float(np.percentile(ms, 50)),
        "p99_ms": float(np.percentile(ms, 99)),
        "requests": len(latencies),
        "errors": errors,
    }


def _sequential(url: str, body: bytes, count: int) -> dict:
    latencies = []
    for i in range(count + 3):
        started = time.perf_counter()
        with urllib.request.urlopen(urllib.request.Request(url, data=body)) as response:
            response.read()
        if i >= 3:  # warm-up
            latencies.append((time.perf_counter() - started) * 1000)
    return {"p50_ms": float(np.percentile(latencies, 50)), "p99_ms": float(np.percentile(latencies, 99))}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("saved_model")
    parser.add_argument("examples_dir")
    parser.add_argument("--seconds", type=float, default=15.0)
    parser.add_argument("--clients", type=int, default=16)
    args = parser.parse_args()
    records, feature_rows = _bodies(args.saved_model, args.examples_dir, 2000)
    b64 = [{"b64": base64.b64encode(r).decode()} for r in records]
    single = {
        "serving_default": [json.dumps({"instances": [row]}).encode() for row in b64],
        "predict": [json.dumps({"signature_name": "predict", "instances": [row]}).encode() for row in feature_rows],
    }
    large = {
        "serving_default": json.dumps({"instances": b64[:1000]}).encode(),
        "predict": json.dumps({"signature_name": "predict", "instances": feature_rows[:1000]}).encode(),
    }
    result = {"clients": args.clients}
    with _server(args.saved_model) as url:
        for name, bodies in single.items():
            result[name] = asyncio.run(_closed_loop(url + ":predict", bodies, args.clients, args.seconds))
        result["rows_1000"] = {name: _sequential(url + ":predict", body, 30) for name, body in large.items()}
    with _server(args.saved_model, "--no-batching") as url:
        result["serving_default_no_batching"] = asyncio.run(
            _closed_loop(url + ":predict", single["serving_default"], args.clients, args.seconds)
        )
    print(json.dumps(result))


@contextlib.contextmanager
def _server(saved_model: str, *flags):
    """`mtrank serve` in its own process on a copy of the model as version 1: yields the model URL."""
    base = tempfile.mkdtemp(prefix="bench_serve_")
    shutil.copytree(saved_model, os.path.join(base, "mtrank", "1"))
    port = _free_port()
    server = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "mtrank.cli",
            "serve",
            "--model-base-path",
            os.path.join(base, "mtrank"),
            "--rest-port",
            str(port),
            "--grpc-port",
            str(_free_port()),
            "--host",
            "127.0.0.1",
            *flags,
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}/v1/models/mtrank"
    try:
        deadline = time.time() + 120
        while True:
            try:
                urllib.request.urlopen(url, timeout=1).read()
                break
            except OSError:
                if time.time() > deadline or server.poll() is not None:
                    sys.exit("mtrank serve did not start")
                time.sleep(0.5)
        yield url
    finally:
        server.terminate()
        server.wait(timeout=30)
        shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    main()
