"""Serving latency of the exported global block with the meta-embedding input vs the same network
without it, in-process (SavedModel signature call) and through gRPC (official stub -> local
PredictionService on loopback), batch 1 and 64. The two variants are measured interleaved in one run.

    python benchmarks/serving_latency.py [--iterations 300] [--out runs/bench/serving_latency.json]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
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


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--iterations", type=int, default=300)
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
    if args.out:
        os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
        with open(args.out, "w") as f:
            json.dump(out, f, indent=1)
    return out


if __name__ == "__main__":
    main()
