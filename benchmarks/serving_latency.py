"""Serving latency of the exported global block with the meta-embedding input vs the same network
without it, in-process (SavedModel signature call) and through gRPC (official stub -> local
PredictionService on loopback), batch 1 and 64. The two variants are measured interleaved in one run.

Then a bounded load test (`load_test`): `limaml serve` in its own process, C concurrent clients x R
Predict requests each on loopback (stops by itself), while a new version is deployed halfway (its
directory renamed into place; the server's file-system poll loads it and unloads the old one):
errors, p50 / p99 overall and during the reload, and the versions that answered.

    python benchmarks/serving_latency.py [--iterations 300] [--clients 8 --requests 2000]
                                         [--out runs/bench/serving_latency.json]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from limaml_tf import LiMAMLModel, MLPGlobalBlock, MLPMetaBlock, make_synthetic  # noqa: E402
from limaml_tf.export import EMBEDDING_INPUT, export_serving  # noqa: E402
from limaml_tf.serving import InMemoryEmbeddingStore, ServingClient  # noqa: E402
from limaml_tf.serving.server import start_server  # noqa: E402


class NoMetaEmbedding(keras.layers.Layer):
    """A zero-width meta embedding: the global block then has no meta-embedding input at all."""

    def call(self, inputs):
        return tf.zeros([tf.shape(inputs["activity"])[0], 0])


def build(spec, with_meta: bool, dim: int):
    meta = MLPMetaBlock(spec.meta_features, output_dim=dim) if with_meta else NoMetaEmbedding()
    return LiMAMLModel(meta, MLPGlobalBlock(spec.other_features), spec)


def percentiles(samples) -> dict:
    ms = np.asarray(samples) * 1e3
    return {"p50_ms": float(np.percentile(ms, 50)), "p99_ms": float(np.percentile(ms, 99))}


def load_test(target: str, request, clients: int = 8, per_client: int = 2000, deploy=None,
              deployed=None, timeout: float = 10.0, warmup: int = 5) -> dict:
    """`clients` threads, each with its own channel, send `per_client` copies of `request` (Predict) to
    `target` as fast as answers come. Once half of all requests are answered, `deploy()` runs (e.g. a
    new version directory renamed into place) and `deployed()` is polled until it is true (e.g. the old
    version unloaded): requests started in between are "during the reload"; each client keeps sending
    until one of its requests starts after it is over (or `timeout` passed). Returns errors (by status
    code), p50 / p99 latency (ms) overall and during the reload, and the versions that answered.
    Each client first sends `warmup` requests that are not counted (channel set-up)."""
    import grpc
    from tensorflow_serving.apis import prediction_service_pb2_grpc

    records, lock, half, done = [], threading.Lock(), threading.Event(), threading.Event()
    ready = threading.Barrier(clients)
    window = {}

    def client():
        with grpc.insecure_channel(target) as channel:
            stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
            for _ in range(warmup):
                stub.Predict(request, timeout=timeout)
            ready.wait()
            sent = after = 0  # after: requests started once the reload was over (each client sends one)
            while sent < per_client or (deploy is not None and not after):
                sent += 1
                after += done.is_set()
                start = time.perf_counter()
                try:
                    answer = f"version {stub.Predict(request, timeout=timeout).model_spec.version.value}"
                except grpc.RpcError as e:
                    answer = f"error {e.code().name}"
                with lock:
                    records.append((start, time.perf_counter() - start, answer))
                    if len(records) == clients * per_client // 2:
                        half.set()

    def reloader():
        half.wait()
        window["start"] = time.perf_counter()
        deploy()
        while deployed is not None and not deployed() and time.perf_counter() < window["start"] + timeout:
            time.sleep(0.01)
        window["end"] = time.perf_counter()
        done.set()

    threads = [threading.Thread(target=client) for _ in range(clients)]
    if deploy is not None:
        threads.append(threading.Thread(target=reloader, daemon=True))
    for t in threads:
        t.start()
    for t in threads[:clients]:
        t.join()
    seconds = max(r[0] + r[1] for r in records) - min(r[0] for r in records)
    if deploy is not None:
        threads[-1].join(timeout)

    def stats(rows):
        ms = np.asarray([r[1] for r in rows]) * 1e3
        return {"requests": len(rows), "p50_ms": float(np.percentile(ms, 50)) if len(ms) else None,
                "p99_ms": float(np.percentile(ms, 99)) if len(ms) else None}

    answers = {}
    for r in records:
        answers[r[2]] = answers.get(r[2], 0) + 1
    out = {"clients": clients, "requests_per_client": per_client, "seconds": seconds,
           "requests_per_second": len(records) / seconds, "answers": answers,
           "errors": sum(n for a, n in answers.items() if a.startswith("error")), "all": stats(records)}
    if "end" in window:
        out["reload_seconds"] = window["end"] - window["start"]
        out["during_reload"] = stats([r for r in records if window["start"] <= r[0] <= window["end"]])
    return out


def serve_process(base: str, *flags) -> tuple[subprocess.Popen, int]:
    """`limaml serve` on `base` in its own process (a free port); returns (process, port)."""
    proc = subprocess.Popen([sys.executable, "-m", "limaml_cli", "serve", "--saved-models", base, "--port", "0",
                             *flags], stdout=subprocess.PIPE, text=True,
                            cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    line = proc.stdout.readline()
    match = re.search(r":(\d+) serving", line)
    if not match:
        proc.kill()
        raise RuntimeError(f"limaml serve did not start: {line!r}")
    return proc, int(match.group(1))


def run_load(df, spec, clients: int, per_client: int, embedding_dim: int) -> dict:
    """The load test against `limaml serve` with a version deployed halfway (see the module docstring)."""
    import grpc
    from tensorflow_serving.apis import get_model_status_pb2, model_service_pb2_grpc

    base = tempfile.mkdtemp(prefix="serving-load-")
    staging = tempfile.mkdtemp(prefix="serving-load-next-")
    for seed, where in ((0, base), (1, staging)):
        keras.utils.set_random_seed(seed)
        export_serving(build(spec, True, embedding_dim), where, "ranker", train_df=df)
    proc, port = serve_process(base, "--file_system_poll_wait_seconds", "0.2")
    target = f"127.0.0.1:{port}"
    try:
        client = ServingClient.from_export(os.path.join(base, "ranker", "1"), target,
                                           InMemoryEmbeddingStore(embedding_dim))
        rows = df.iloc[:1]
        request = client.build_request(rows, rows["user_id"].tolist())
        status = model_service_pb2_grpc.ModelServiceStub(grpc.insecure_channel(target))
        status_request = get_model_status_pb2.GetModelStatusRequest()
        status_request.model_spec.name = "ranker"

        def old_version_unloaded():
            states = {s.version: s.state for s in status.GetModelStatus(status_request).model_version_status}
            return states.get(1) == get_model_status_pb2.ModelVersionStatus.State.END

        out = load_test(target, request, clients, per_client,
                        deploy=lambda: os.rename(os.path.join(staging, "ranker", "1"), os.path.join(base, "ranker", "2")),
                        deployed=old_version_unloaded)
    finally:
        proc.send_signal(signal.SIGTERM)  # graceful stop
        out_code = proc.wait(60)
    out["server_exit_code"] = out_code
    return out


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--iterations", type=int, default=300)
    parser.add_argument("--clients", type=int, default=8, help="load test: concurrent clients (0: no load test)")
    parser.add_argument("--requests", type=int, default=2000, help="load test: requests per client")
    parser.add_argument("--warmup", type=int, default=30)
    parser.add_argument("--embedding-dim", type=int, default=8)
    parser.add_argument("--out", default=None, help="write the figures as JSON here")
    args = parser.parse_args(argv)

    keras.utils.set_random_seed(0)
    df, spec = make_synthetic(num_tasks=200, seed=0)
    spec = spec.fit(df)
    base = tempfile.mkdtemp(prefix="serving-bench-")
    variants = {"with_meta": True, "without_meta": False}
    paths = {v: export_serving(build(spec, m, args.embedding_dim), base, v, train_df=df)
             for v, m in variants.items()}
    server, port = start_server(base, port=0, max_workers=2)
    signatures = {v: tf.saved_model.load(p).signatures["serving_default"] for v, p in paths.items()}
    clients = {v: ServingClient.from_export(p, f"127.0.0.1:{port}", InMemoryEmbeddingStore(
        args.embedding_dim if variants[v] else 0)) for v, p in paths.items()}

    results = {}
    for batch in (1, 64):
        rows = df.sample(batch, random_state=batch)
        keys = rows["user_id"].tolist()
        requests = {v: c.build_request(rows, keys) for v, c in clients.items()}
        tensors = {v: {k: tf.constant(tf.make_ndarray(t)) for k, t in r.inputs.items()} for v, r in requests.items()}
        assert EMBEDDING_INPUT in tensors["with_meta"] and EMBEDDING_INPUT not in tensors["without_meta"]
        calls = {}
        for v in variants:
            calls[("in-process", v)] = lambda v=v: signatures[v](**tensors[v])["probability"].numpy()
            calls[("grpc", v)] = lambda v=v: clients[v].stub.Predict(requests[v], timeout=30)
        timings = {k: [] for k in calls}
        for i in range(args.warmup + args.iterations):
            for key, call in calls.items():  # interleaved: both variants see the same machine load
                start = time.perf_counter()
                call()
                if i >= args.warmup:
                    timings[key].append(time.perf_counter() - start)
        for (path, v), samples in timings.items():
            results[f"{path}/batch{batch}/{v}"] = percentiles(samples)

    print(f"\nserving latency, {args.iterations} calls each (meta embedding d={args.embedding_dim}; "
          f"TF {tf.__version__}; {os.cpu_count()} cores)")
    print(f"{'path':<12}{'batch':>6}{'with meta p50/p99 ms':>24}{'without p50/p99 ms':>22}{'ratio p50':>11}{'ratio p99':>11}")
    ratios = {}
    for path in ("in-process", "grpc"):
        for batch in (1, 64):
            w, wo = results[f"{path}/batch{batch}/with_meta"], results[f"{path}/batch{batch}/without_meta"]
            r50, r99 = w["p50_ms"] / wo["p50_ms"], w["p99_ms"] / wo["p99_ms"]
            ratios[f"{path}/batch{batch}"] = {"p50": r50, "p99": r99}
            print(f"{path:<12}{batch:>6}{w['p50_ms']:>13.3f} /{w['p99_ms']:>8.3f}{wo['p50_ms']:>11.3f} /"
                  f"{wo['p99_ms']:>8.3f}{r50:>11.3f}{r99:>11.3f}")
    print("ratio = with meta embedding / without; the meta embedding adds one [batch, d] float input and "
          "d columns to the first layer (no online fine-tuning).")
    for c in clients.values():
        c.close()
    server.stop(0)
    out = {"results": results, "ratios": ratios, "iterations": args.iterations, "embedding_dim": args.embedding_dim}
    if args.clients:
        load = out["load"] = run_load(df, spec, args.clients, args.requests, args.embedding_dim)
        print(f"\nload test: `limaml serve` in its own process, {args.clients} clients x {args.requests} Predict "
              f"requests (batch 1) on loopback, version 2 deployed halfway")
        print(f"  {load['all']['requests']} requests in {load['seconds']:.1f} s ({load['requests_per_second']:.0f}/s), "
              f"errors {load['errors']}, answers {load['answers']}")
        print(f"  all:           p50 {load['all']['p50_ms']:.2f} ms, p99 {load['all']['p99_ms']:.2f} ms")
        d = load.get("during_reload") or {}
        if d.get("requests"):
            print(f"  during reload: p50 {d['p50_ms']:.2f} ms, p99 {d['p99_ms']:.2f} ms ({d['requests']} requests, "
                  f"{load['reload_seconds']:.2f} s from the new directory to the old version unloaded)")
        print(f"  server exit code after SIGTERM: {load['server_exit_code']}")
    if args.out:
        os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
        with open(args.out, "w") as f:
            json.dump(out, f, indent=1)
    return out


if __name__ == "__main__":
    main()
