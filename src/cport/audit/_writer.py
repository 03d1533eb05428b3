"""Group commit: many producers, one writer thread, one transaction per batch.

`submit` returns a future that resolves to the event's sequence number only after the batch
holding it has committed — an event is acknowledged only once it is durable. Batches close at
`max_batch` events or `max_delay` seconds after their first event, so a lone event waits at
most `max_delay` and a burst costs one fsync per batch. The queue is bounded: producers block
(backpressure) rather than memory growing without limit.
"""

from __future__ import annotations

import queue
import threading
import time
from concurrent.futures import Future
from typing import Any

from cport.audit._event import AuditEvent
from cport.audit._metrics import AuditMetrics
from cport.audit._store import Store
from cport.errors import AuditError

_STOP = object()


class AuditWriter:
    def __init__(
        self,
        store: Store,
        *,
        max_batch: int = 500,
        max_delay: float = 0.005,
        max_queue: int = 100_000,
        metrics: AuditMetrics | None = None,
    ) -> None:
        self.store = store
        self.max_batch = max_batch
        self.max_delay = max_delay
        self.metrics = metrics
        self._queue: queue.Queue[object] = queue.Queue(max_queue)
        self._closed = False
        self._state = threading.Lock()  # submit and close never interleave
        self._thread = threading.Thread(target=self._run, name="cport-audit-writer", daemon=True)
        self._thread.start()

    def submit(self, event: AuditEvent) -> Future[int]:
        """Queue `event`; the future gives its sequence number once committed."""
        fut: Future[int] = Future()
        with self._state:
            if self._closed:
                raise AuditError("the audit writer is closed", code="audit-closed")
            self._queue.put((event, fut))
        if self.metrics is not None:
            self.metrics.queue_depth.set(self._queue.qsize())
        return fut

    def submit_many(self, events: list[AuditEvent]) -> Future[list[int]]:
        """Queue several events as one item (one wake-up of the writer thread instead of one
        per event: what a busy event loop wants); the future gives their sequence numbers
        once all are committed. They may share a batch with other events but are never
        split across two. Never blocks: a full queue (the store has stopped keeping up) is an
        ``audit-queue-full`` error the caller must treat as an audit failure."""
        fut: Future[list[int]] = Future()
        with self._state:
            if self._closed:
                raise AuditError("the audit writer is closed", code="audit-closed")
            try:
                self._queue.put_nowait((events, fut))
            except queue.Full:
                raise AuditError(
                    f"the audit queue is full ({self._queue.maxsize} items waiting)",
                    code="audit-queue-full",
                ) from None
        if self.metrics is not None:
            self.metrics.queue_depth.set(self._queue.qsize())
        return fut

    def write(self, event: AuditEvent, timeout: float = 30.0) -> int:
        """Append one event and wait until it is durable."""
        return self.submit(event).result(timeout)

    def close(self, timeout: float = 30.0) -> None:
        """Commit everything queued, then stop the writer thread."""
        with self._state:
            if self._closed:
                return
            self._closed = True
            self._queue.put(_STOP)
        self._thread.join(timeout)

    def _run(self) -> None:
        stop = False
        while not stop:
            item = self._queue.get()
            if item is _STOP:
                break
            batch = [item]
            deadline = time.monotonic() + self.max_delay
            while len(batch) < self.max_batch:
                remaining = deadline - time.monotonic()
                try:
                    nxt = (
                        self._queue.get(timeout=max(remaining, 0))
                        if remaining > 0
                        else (self._queue.get_nowait())
                    )
                except queue.Empty:
                    break
                if nxt is _STOP:
                    stop = True
                    break
                batch.append(nxt)
            self._commit(batch)  # type: ignore[arg-type]

    def _commit(self, batch: list[tuple[AuditEvent | list[AuditEvent], Future[Any]]]) -> None:
        started = time.perf_counter()
        events: list[AuditEvent] = []
        for item, _ in batch:
            if isinstance(item, list):
                events.extend(item)
            else:
                events.append(item)
        try:
            seqs = self.store.append(events)
        except BaseException as exc:  # every waiter learns the batch failed
            if self.metrics is not None:
                self.metrics.write_errors.inc()
            for _, fut in batch:
                fut.set_exception(exc)
            return
        if self.metrics is not None:
            self.metrics.write_seconds.observe(time.perf_counter() - started)
            self.metrics.batch_size.observe(len(events))
            self.metrics.events_written.inc(len(events))
            self.metrics.queue_depth.set(self._queue.qsize())
        i = 0
        for item, fut in batch:
            if isinstance(item, list):
                fut.set_result(seqs[i : i + len(item)])
                i += len(item)
            else:
                fut.set_result(seqs[i])
                i += 1
