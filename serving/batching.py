"""Server-side batching: concurrent requests for one signature run as one call (TF Serving's
--enable_batching).

A request waits at most `batch_timeout_micros` for others to join it, or until the batch would
pass `max_batch_size` rows; a request of that many rows or more runs alone (as TF Serving's
large-batch splitting would run it in pieces). At most `num_batch_threads` batches run at once;
while all are busy, waiting requests keep joining the next batch, so a loaded server makes larger
batches rather than a longer queue. Only requests whose inputs have the same inner shapes merge
(bags of one length): TF Serving either refuses to merge others or pads them with a copy of their
first element, which would change a bag's scores. When a merged batch fails, each request is
rerun on its own, so one bad request fails only itself.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import dataclasses

import numpy as np

from serving.config import BatchingConfig


@dataclasses.dataclass
class _Pending:
    items: list = dataclasses.field(default_factory=list)  # [(tensors, rows, future)]
    rows: int = 0
    timer: asyncio.TimerHandle | None = None
    due: bool = False  # the timeout has passed; runs as soon as a thread is free


def _key(signature, tensors: dict) -> tuple:
    return (signature, *((name, array.shape[1:]) for name, array in sorted(tensors.items())))


class Batcher:
    """Runs `signature.run(tensors)` for requests, merging concurrent ones per signature."""

    def __init__(self, config: BatchingConfig, on_batch=None):
        self._config = config
        self._executor = concurrent.futures.ThreadPoolExecutor(config.num_batch_threads, thread_name_prefix="batch")
        self._pending: dict = {}
        self._running = 0
        self._on_batch = on_batch or (lambda rows: None)

    def close(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)

    async def run(self, signature, tensors: dict, rows: int) -> dict:
        loop = asyncio.get_running_loop()
        if not self._config.enabled or rows >= self._config.max_batch_size:
            self._on_batch(rows)
            return await loop.run_in_executor(self._executor, signature.run, tensors)
        future = loop.create_future()
        key = _key(signature, tensors)
        if key in self._pending and self._pending[key].rows + rows > self._config.max_batch_size:
            self._start(key)
        pending = self._pending.setdefault(key, _Pending())
        pending.items.append((tensors, rows, future))
        pending.rows += rows
        if pending.rows == self._config.max_batch_size:
            self._start(key)
        elif pending.timer is None:
            pending.timer = loop.call_later(self._config.batch_timeout_micros / 1e6, self._timeout, key)
        return await future

    def _timeout(self, key) -> None:
        pending = self._pending.get(key)
        if pending is None:
            return
        if self._running < self._config.num_batch_threads:
            self._start(key)
        else:
            pending.due = True

    def _start(self, key) -> None:
        pending = self._pending.pop(key)
        if pending.timer is not None:
            pending.timer.cancel()
        self._running += 1
        asyncio.ensure_future(self._execute(key[0], pending.items))

    async def _execute(self, signature, items: list) -> None:
        loop = asyncio.get_running_loop()
        try:
            total = sum(rows for _, rows, _ in items)
            self._on_batch(total)
            try:
                merged = {name: np.concatenate([t[name] for t, _, _ in items]) for name in items[0][0]}
                outputs = await loop.run_in_executor(self._executor, signature.run, merged)
                if any(np.ndim(v) == 0 or len(v) != total for v in outputs.values()):
                    raise RuntimeError(f"signature {signature.name}: an output's first dimension is not the batch's")
            except Exception as error:  # noqa: BLE001 - handed to the requests, retried alone
                if len(items) == 1:
                    _settle(items[0][2], error=error)
                    return
                for tensors, _, future in items:
                    try:
                        _settle(future, await loop.run_in_executor(self._executor, signature.run, tensors))
                    except Exception as alone:  # noqa: BLE001
                        _settle(future, error=alone)
                return
            offset = 0
            for _, rows, future in items:
                _settle(future, {k: v[offset : offset + rows] for k, v in outputs.items()})
                offset += rows
        finally:
            for _, _, future in items:  # whatever went wrong above, no request is left waiting
                _settle(future, error=RuntimeError("the batch ended without a result for this request"))
            self._running -= 1
            due = next((k for k, p in self._pending.items() if p.due), None)
            if due is not None:
                self._start(due)


def _settle(future: asyncio.Future, result=None, error: BaseException | None = None) -> None:
    if future.done():  # the client went away
        return
    if error is not None:
        future.set_exception(error)
    else:
        future.set_result(result)
