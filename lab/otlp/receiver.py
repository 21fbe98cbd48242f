"""The lab's OTLP trace receiver: OTLP/gRPC and OTLP/HTTP (protobuf), built
on the official OpenTelemetry protocol package (opentelemetry-proto) and
grpcio, independent of weft's own code. Every span received is appended to a
JSON-lines file that `weft lab traces` and the tests read back.

    python3 receiver.py --grpc 198.18.0.250:4317 --http 198.18.0.250:4318 \
        --out spans.jsonl [--delay-ms N]

--delay-ms makes every export wait that long before it is answered (a slow
collector). SIGTERM stops it.
"""

import argparse
import http.server
import json
import signal
import sys
import threading
from concurrent import futures

import grpc
from google.protobuf.message import DecodeError
from opentelemetry.proto.collector.trace.v1 import (
    trace_service_pb2,
    trace_service_pb2_grpc,
)

KINDS = {0: "UNSPECIFIED", 1: "INTERNAL", 2: "SERVER", 3: "CLIENT", 4: "PRODUCER", 5: "CONSUMER"}
STATUS = {0: "UNSET", 1: "OK", 2: "ERROR"}


def value(v):
    """An AnyValue as plain JSON."""
    which = v.WhichOneof("value")
    if which == "array_value":
        return [value(x) for x in v.array_value.values]
    if which == "kvlist_value":
        return {kv.key: value(kv.value) for kv in v.kvlist_value.values}
    if which == "bytes_value":
        return v.bytes_value.hex()
    return getattr(v, which) if which else None


def attributes(kvs):
    return {kv.key: value(kv.value) for kv in kvs}


class Store:
    """Appends spans to the file, one JSON object per line."""

    def __init__(self, path, delay):
        self.path = path
        self.delay = delay
        self.lock = threading.Lock()
        self.spans = 0
        self.wake = threading.Event()

    def take(self, request, transport):
        if self.delay:
            self.wake.wait(self.delay)
        lines = []
        for rs in request.resource_spans:
            resource = attributes(rs.resource.attributes)
            for ss in rs.scope_spans:
                for s in ss.spans:
                    lines.append(json.dumps({
                        "trace_id": s.trace_id.hex(),
                        "span_id": s.span_id.hex(),
                        "parent_span_id": s.parent_span_id.hex(),
                        "trace_state": s.trace_state,
                        "name": s.name,
                        "kind": KINDS.get(s.kind, str(s.kind)),
                        "start_ns": s.start_time_unix_nano,
                        "end_ns": s.end_time_unix_nano,
                        "status": {"code": STATUS.get(s.status.code, str(s.status.code)),
                                   "message": s.status.message},
                        "attributes": attributes(s.attributes),
                        "resource": resource,
                        "scope": ss.scope.name,
                        "transport": transport,
                    }, sort_keys=True))
        with self.lock:
            with open(self.path, "a", encoding="utf-8") as f:
                for line in lines:
                    f.write(line + "\n")
            self.spans += len(lines)
        return trace_service_pb2.ExportTraceServiceResponse()


class TraceService(trace_service_pb2_grpc.TraceServiceServicer):
    def __init__(self, store):
        self.store = store

    def Export(self, request, context):  # noqa: N802 (the service's name)
        return self.store.take(request, "grpc")


def http_handler(store):
    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_POST(self):  # noqa: N802
            length = int(self.headers.get("content-length", "0"))
            body = self.rfile.read(length)
            if self.path != "/v1/traces":
                return self.answer(404, b"")
            if not self.headers.get("content-type", "").startswith("application/x-protobuf"):
                return self.answer(415, b"")
            request = trace_service_pb2.ExportTraceServiceRequest()
            try:
                request.ParseFromString(body)
            except DecodeError:
                return self.answer(400, b"")
            response = store.take(request, "http/protobuf")
            self.answer(200, response.SerializeToString())

        def answer(self, code, body):
            self.send_response(code)
            self.send_header("content-type", "application/x-protobuf")
            self.send_header("content-length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    return Handler


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--grpc", required=True, help="host:port for OTLP/gRPC")
    p.add_argument("--http", required=True, help="host:port for OTLP/HTTP")
    p.add_argument("--out", required=True, help="JSON-lines file of spans")
    p.add_argument("--delay-ms", type=int, default=0)
    args = p.parse_args()
    store = Store(args.out, args.delay_ms / 1000.0)
    open(args.out, "a", encoding="utf-8").close()

    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    trace_service_pb2_grpc.add_TraceServiceServicer_to_server(TraceService(store), server)
    if server.add_insecure_port(args.grpc) == 0:
        sys.exit(f"cannot listen on {args.grpc} (OTLP/gRPC)")
    server.start()
    host, port = args.http.rsplit(":", 1)
    httpd = http.server.ThreadingHTTPServer((host, int(port)), http_handler(store))
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    print(f"OTLP receiver: gRPC {args.grpc}, HTTP {args.http}, spans to {args.out}", flush=True)

    done = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: done.set())
    signal.signal(signal.SIGINT, lambda *_: done.set())
    done.wait()
    httpd.shutdown()
    server.stop(1).wait()
    print(f"OTLP receiver: {store.spans} spans received", flush=True)


if __name__ == "__main__":
    main()
