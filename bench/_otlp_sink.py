"""An OTLP/HTTP traces endpoint on 127.0.0.1 that accepts every export and counts what arrived.

The tracing-cost benchmark points the replicas' exporters here, so spans really leave the
process (batched, serialized, posted) as they would to a collector. It parses each export only
to count spans and traces, in a thread of the benchmark's own process, and keeps nothing else.

    replica's BatchSpanProcessor ──POST /v1/traces (protobuf)──► OtlpSink ──► counts by resource
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

__all__ = ["OtlpSink", "SinkCounts"]


@dataclass
class SinkCounts:
    """What one sink received so far."""

    exports: int = 0
    spans: int = 0
    trace_ids: set[str] = field(default_factory=set)
    bytes: int = 0


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self) -> None:
        self.counts = SinkCounts()
        self.lock = threading.Lock()
        super().__init__(("127.0.0.1", 0), _Handler)


class _Handler(BaseHTTPRequestHandler):
    server: _Server

    def do_POST(self) -> None:  # noqa: N802 - http.server's name
        from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

        body = self.rfile.read(int(self.headers.get("content-length", 0)))
        spans, traces = 0, set()
        try:
            req = ExportTraceServiceRequest.FromString(body)
        except Exception:  # noqa: BLE001 - a body we cannot parse still counts as an export
            req = None
        for rs in req.resource_spans if req is not None else ():
            for ss in rs.scope_spans:
                spans += len(ss.spans)
                traces.update(s.trace_id.hex() for s in ss.spans)
        with self.server.lock:
            c = self.server.counts
            c.exports, c.spans, c.bytes = c.exports + 1, c.spans + spans, c.bytes + len(body)
            c.trace_ids |= traces
        # An empty ExportTraceServiceResponse is zero bytes of protobuf: full success.
        self.send_response(200)
        self.send_header("content-type", "application/x-protobuf")
        self.send_header("content-length", "0")
        self.end_headers()

    def log_message(self, *args) -> None:
        pass


class OtlpSink:
    """Start with `OtlpSink()`; `url` is the traces endpoint, `snapshot()` the counts, `close()` stops it."""

    def __init__(self) -> None:
        self._srv = _Server()
        self._thread = threading.Thread(target=self._srv.serve_forever, name="otlp-sink", daemon=True)
        self._thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._srv.server_address[1]}/v1/traces"

    def snapshot(self) -> tuple[int, int, int]:
        """Return (exports, spans, distinct trace ids) received so far."""
        with self._srv.lock:
            c = self._srv.counts
            return c.exports, c.spans, len(c.trace_ids)

    def close(self) -> None:
        self._srv.shutdown()
        self._srv.server_close()
