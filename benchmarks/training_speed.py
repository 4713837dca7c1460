"""Training speed of LiMAML, measured side by side in one run (issue 6).

    python -m benchmarks.training_speed            # everything (about 10-20 min on 2 busy cores)
    python -m benchmarks.training_speed --quick    # fewer configurations and repeats

(a) LiMAML step time / vanilla step time for n = 1..5, first and second order, on MovieLens-100K
    (read from --ml100k, default ../shared/data/ml-100k; skipped with a note if absent) and on
    synthetic data at MovieLens-1M scale (6,040 tasks, median 165 samples per task);
(b) the vectorized inner loop vs a per-task loop (one compiled single-task step called per task,
    gradients summed) at 64 and 256 tasks;
(c) training steps/s with 1 vs 2 replicas (MirroredStrategy over 2 logical CPU devices, fresh process),
    and steady-state tasks/s of 2 worker processes pinned to a core each (MultiWorkerMirroredStrategy, global
    batch 2x) vs 1 (batch 1x) vs 2 training apart without communication (the machine's ceiling), alternating
    in the same two processes, at several tasks per worker per step (--pinned-batches);
(e) an op-level profile (tf.profiler trace, ms per op type) of the step per configuration;
(d) peak memory of a training step (resident-set growth over two steps of a fresh process, after the
    step was traced and run twice and freed memory returned to the system) for n = 1..5 and 32 / 128 /
    512 tasks per batch, beside the graph-size bound a memory-budget `max_tasks_per_chunk` chooses from.

A "step" is one outer step of `model.train_step` (encode, inner loops, outer gradient, Adam
update) compiled with tf.function on one fixed task batch. Times are medians over repeats, and
the configurations are interleaved in every repeat so that load from other processes hits all alike.
"""

from __future__ import annotations

import argparse
import ctypes
import json
import os
import resource
import subprocess
import sys
import threading
import time

import numpy as np

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

ML100K = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "..", "shared", "data",
                      "ml-100k")
TASKS_PER_BATCH = 32


# -- data ----------------------------------------------------------------------
def movielens_100k(path: str):
    """MovieLens-100K as task-grouped interactions: task = user, label = rating >= 4, meta features =
    the user's age / gender / occupation, other features = the movie's id and genres."""
    import pandas as pd

    from limaml_tf.spec import Feature, FeatureSpec

    ratings = pd.read_csv(os.path.join(path, "u.data"), sep="\t", names=["user", "item", "rating", "timestamp"])
    users = pd.read_csv(os.path.join(path, "u.user"), sep="|", names=["user", "age", "gender", "occupation", "zip"])
    genres = [f"g{i}" for i in range(19)]
    items = pd.read_csv(os.path.join(path, "u.item"), sep="|", encoding="latin-1", header=None,
                        names=["item", "title", "release", "video", "url", *genres])
    items["genres"] = items[genres].apply(lambda r: "|".join(g for g in genres if r[g]), axis=1)
    df = ratings.merge(users, on="user").merge(items[["item", "genres"]], on="item")
    df = pd.DataFrame({"user_id": df.user.astype(str), "timestamp": df.timestamp.astype(float),
                       "label": (df.rating >= 4).astype(int), "age": df.age.astype("float32"),
                       "gender": df.gender, "occupation": df.occupation, "item_id": df.item.astype(str),
                       "genres": df.genres})
    spec = FeatureSpec("user_id", "timestamp", "label",
                       meta_features=(Feature("age", "numeric"), Feature("gender", "categorical", num_bins=4),
                                      Feature("occupation", "categorical", num_bins=32)),
                       other_features=(Feature("item_id", "categorical", num_bins=2000),
                                       Feature("genres", "multi_valued", num_bins=32, max_len=3)))
    return df, spec.fit(df)


def datasets(args):
    """name -> TaskSet (support 75 % / query 25 % of each task's most recent samples)."""
    from limaml_tf import make_synthetic, split_tasks

    out = {}
    if os.path.exists(os.path.join(args.ml100k, "u.data")):
        df, spec = movielens_100k(args.ml100k)
        out["ml-100k"] = split_tasks(df, spec, max_samples_per_task=128)
    else:
        print(f"(ML-100K not found at {args.ml100k}: skipped; pass --ml100k)")
    df, spec = make_synthetic(num_tasks=6040, num_items=3700, mean_samples_per_task=165, seed=0)
    out["synthetic ML-1M scale"] = split_tasks(df.iloc[: args.rows_1m] if args.rows_1m else df, spec.fit(df),
                                               max_samples_per_task=256)
    return out


# -- models and compiled steps --------------------------------------------------
def build(kind: str, spec, inner_steps: int = 1, first_order: bool = False, jit: bool = False, chunk=None):
    import keras

    from limaml_tf import LiMAMLModel, MLPGlobalBlock, MLPMetaBlock, VanillaModel

    blocks = (MLPMetaBlock(spec.meta_features, output_dim=8), MLPGlobalBlock(spec.other_features))
    if kind == "vanilla":
        model = VanillaModel(*blocks, spec)
    else:
        model = LiMAMLModel(*blocks, spec, inner_steps=inner_steps, inner_learning_rate=0.5, first_order=first_order,
                            jit_inner_loop=jit, max_tasks_per_chunk=chunk)
    model.compile(optimizer=keras.optimizers.Adam(1e-3))
    model.optimizer.build(model.trainable_variables)
    return model


def compiled_step(model):
    import tensorflow as tf

    return tf.function(model.train_step)


def as_tensors(bundle):
    import tensorflow as tf

    return tf.nest.map_structure(tf.constant, {k: v for k, v in bundle.items() if not k.endswith("_time")})


def first_batch(tasks, n):
    return as_tensors(next(tasks.batches(n)))


def timed(fn, arg, steps: int) -> float:
    import tensorflow as tf

    start = time.perf_counter()
    for _ in range(steps):
        out = fn(arg)
    tf.nest.flatten(out)[0].numpy()  # wait for the result
    return (time.perf_counter() - start) / steps


def interleaved(fns: dict, args: dict, repeats: int, steps: int) -> dict:
    """Median seconds per call of every fn, the fns interleaved in each repeat."""
    for name, fn in fns.items():  # trace + warm up
        timed(fn, args[name], 1)
    samples = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            samples[name].append(timed(fn, args[name], steps))
    return {name: float(np.median(v)) for name, v in samples.items()}


# -- (a) LiMAML / vanilla ------------------------------------------------------
MATMUL_OPS = ("MatMul", "_FusedMatMul", "BatchMatMul", "BatchMatMulV2", "BatchMatMulV3")


def _graph_ops(graph):
    """Every op `graph` runs: its own, and those of each function it calls, once per call (e.g. an XLA-compiled
    inner loop). Only called functions count: a graph also holds variants it never calls (a function's
    inference version once its gradient replaced it with a forward version)."""
    for op in graph.get_operations():
        if op.type in ("While", "StatelessWhile", "If", "StatelessIf", "Case", "StatelessCase"):
            raise ValueError(f"{op.name}: a {op.type} runs its branches or body a data-dependent number of times")
        yield op
        if op.type in ("PartitionedCall", "StatefulPartitionedCall"):
            yield from _graph_ops(graph._get_function(op.get_attr("f").name).graph)


def matmul_flops(fn, arg) -> int:
    """Floating-point operations of the (batched) matrix products in the traced graph of `fn(arg)`: the
    arithmetic a step cannot avoid, whatever its op overhead (2 * m * n * k per product)."""
    total = 0
    for op in _graph_ops(fn.get_concrete_function(arg).graph):
        if op.type not in MATMUL_OPS:
            continue
        a, b = op.inputs[0].shape, op.inputs[1].shape
        if not (a.is_fully_defined() and b.is_fully_defined()):
            raise ValueError(f"{op.name}: shapes {a} x {b} are not static; trace on a fixed-shape batch")
        plain = "MatMul" in op.type and "Batch" not in op.type
        trans_a, trans_b = (op.get_attr("transpose_a"), op.get_attr("transpose_b")) if plain else \
            (op.get_attr("adj_x"), op.get_attr("adj_y"))
        m, k = (a[-1], a[-2]) if trans_a else (a[-2], a[-1])
        n = b[-2] if trans_b else b[-1]
        batch = int(np.prod(np.broadcast_shapes(tuple(a[:-2]), tuple(b[:-2]))))
        total += 2 * batch * m * n * k
    return total


def bench_step_ratio(tasks_by_name: dict, args) -> dict:
    results = {}
    for name, tasks in tasks_by_name.items():
        bundle = first_batch(tasks, TASKS_PER_BATCH)
        configs = {"vanilla": ("vanilla", 0, False, False)}
        for n in args.inner_steps:
            configs[f"n={n} 2nd"] = ("limaml", n, False, False)
            configs[f"n={n} 2nd xla"] = ("limaml", n, False, True)
            configs[f"n={n} 1st"] = ("limaml", n, True, False)
        configs["n=1 1st xla"] = ("limaml", 1, True, True)
        fns = {c: compiled_step(build(*config[:1], tasks.spec, *config[1:])) for c, config in configs.items()}
        times = interleaved(fns, {c: bundle for c in fns}, args.repeats, args.steps)
        flops = {c: matmul_flops(fns[c], bundle) for c in fns if "xla" not in c}
        print(f"\n(a) {name}: {TASKS_PER_BATCH} tasks/batch, support {tasks.support_length} + query "
              f"{tasks.query_length} slots/task; vanilla step {1e3 * times['vanilla']:.1f} ms, "
              f"{flops['vanilla'] / 1e6:.0f} MFLOP of matrix products")
        print(f"    {'n':>3} {'2nd order':>12} {'2nd, XLA':>12} {'1st order':>12} {'2nd FLOPs':>12} {'1st FLOPs':>12}"
              "   (LiMAML / vanilla: step time, then matmul FLOPs; XLA: jit_inner_loop=True, what 'auto' picks "
              "from n = 2, and at n = 1 up to 32,768 task slots)")
        for n in args.inner_steps:
            print(f"    {n:>3}" + "".join(f" {times[f'n={n} {c}'] / times['vanilla']:>11.2f}x"
                                      for c in ("2nd", "2nd xla", "1st"))
                  + "".join(f" {flops[f'n={n} {c}'] / flops['vanilla']:>11.2f}x" for c in ("2nd", "1st")))
        print(f"    n=1 first order with XLA: {times['n=1 1st xla'] / times['vanilla']:.2f}x")
        results[name] = {"seconds": times, "matmul_flops": flops}
    return results


# -- (b) vectorized vs per-task loop ---------------------------------------------
def bench_vectorized(tasks, args) -> dict:
    import tensorflow as tf

    model = build("limaml", tasks.spec, 1, False)
    xla_model = build("limaml", tasks.spec, 1, False, jit=True)
    xla_model.set_weights(model.get_weights())
    def dense_gradients(m):  # embedding tables' gradients are IndexedSlices: dense, to sum them
        return tf.function(lambda b: [tf.convert_to_tensor(g) for g in m.compute_gradients(b)[1]])
    per_task, vectorized, vectorized_xla = dense_gradients(model), dense_gradients(model), dense_gradients(xla_model)
    results = {}
    print(f"\n(b) outer gradient of a batch, LiMAML n=1 second order, support {tasks.support_length} + query "
          f"{tasks.query_length} slots/task")
    for t in args.task_counts:
        bundle = first_batch(tasks, t)
        singles = [tf.nest.map_structure(lambda a: a[i:i + 1], bundle) for i in range(t)]

        def loop(_):
            grads = None
            for single in singles:  # one compiled single-task step per task
                g = per_task(single)
                grads = g if grads is None else [a + b for a, b in zip(grads, g)]
            return [g / t for g in grads]

        # same gradient (tasks all have a query sample here, so the mean over tasks is the same)
        ref, got = vectorized(bundle), loop(None)
        err = max(float(tf.reduce_max(tf.abs(a - b))) for a, b in zip(ref, got))
        times = interleaved({"vectorized": vectorized, "xla": vectorized_xla, "loop": loop},
                            {"vectorized": bundle, "xla": bundle, "loop": None}, max(2, args.repeats // 2), 1)
        results[t] = times
        print(f"    {t:>4} tasks: per-task loop {1e3 * times['loop']:7.1f} ms; vectorized "
              f"{1e3 * times['vectorized']:7.1f} ms = {times['loop'] / times['vectorized']:.1f}x faster "
              f"(max |grad diff| {err:.1e}); vectorized + XLA {1e3 * times['xla']:7.1f} ms = "
              f"{times['loop'] / times['xla']:.1f}x faster")
    return results


# -- (e) op-level profile -----------------------------------------------------------
def op_times(fn, arg, steps: int = 5) -> dict:
    """Milliseconds per call by TF op type (summed over threads) from a tf.profiler trace of `steps` calls."""
    import collections
    import glob
    import tempfile

    import tensorflow as tf
    from tensorflow.tsl.profiler.protobuf import xplane_pb2

    timed(fn, arg, 2)  # traced and warm
    with tempfile.TemporaryDirectory() as logdir:
        tf.profiler.experimental.start(logdir)
        timed(fn, arg, steps)
        tf.profiler.experimental.stop()
        space = xplane_pb2.XSpace()
        with open(glob.glob(f"{logdir}/**/*.xplane.pb", recursive=True)[0], "rb") as f:
            space.ParseFromString(f.read())
    out = collections.Counter()
    for plane in space.planes:
        for line in plane.lines:
            if not line.name.startswith("tf_Compute"):  # the executor's threads
                continue
            for event in line.events:
                name = plane.event_metadata[event.metadata_id].name  # "op name:op type" for an op
                if ":" in name and not name.startswith("ExecutorState"):
                    out[name.rsplit(":", 1)[1]] += event.duration_ps / 1e9 / steps
    return out


def bench_profile(tasks, args) -> dict:
    bundle = first_batch(tasks, TASKS_PER_BATCH)
    configs = {"vanilla": ("vanilla", 0, False, False)}
    for n in args.profile_steps:
        configs[f"n={n} 2nd"] = ("limaml", n, False, False)
    configs["n=1 2nd xla"] = ("limaml", 1, False, True)
    configs["n=5 2nd xla"] = ("limaml", 5, False, True)
    print(f"\n(e) op-level profile of a training step (tf.profiler; {TASKS_PER_BATCH} tasks, synthetic ML-1M scale): "
          "ms per step by op type, summed over threads; top ops")
    results = {}
    for label, config in configs.items():
        ops = op_times(compiled_step(build(*config[:1], tasks.spec, *config[1:])), bundle)
        total = sum(ops.values())
        results[label] = dict(ops)
        print(f"    {label:<12} {total:6.1f} ms: " + ", ".join(
            f"{op} {ms:.1f} ({100 * ms / total:.0f}%)" for op, ms in ops.most_common(args.top_ops)), flush=True)
    return results


# -- (c) replicas, (d) memory: fresh processes -----------------------------------
def _worker(argv):
    """Runs in a fresh process: --replicas R (steps/s of fit) or --memory CONFIG (peak RSS growth)."""
    p = argparse.ArgumentParser()
    p.add_argument("--replicas", type=int)
    p.add_argument("--memory", help="kind,n,first_order(0/1),tasks per batch[,max_tasks_per_chunk]")
    p.add_argument("--estimate", action="store_true", help="also the step_memory estimate (2 more traces)")
    p.add_argument("--tasks", type=int, default=6040)
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--batch", type=int, default=TASKS_PER_BATCH, help="tasks per worker per step (--pin)")
    p.add_argument("--global-input", action="store_true", help="--pin: every worker reads the global batches "
                                                               "and keeps its share (tf.data DATA auto-shard)")
    p.add_argument("--pin", type=int, help="pinned to this core, 1 TF thread, TF_CONFIG of 2 workers: tasks/s "
                                           "of fit, worker 0 alone vs both (MultiWorkerMirroredStrategy)")
    p.add_argument("--repeats", type=int, default=3, help="--pin: alternations of the two phases")
    a = p.parse_args(argv)
    if a.pin is not None:
        os.sched_setaffinity(0, {a.pin})  # before TensorFlow starts its thread pools
    import tensorflow as tf

    from limaml_tf import make_synthetic, split_tasks
    from limaml_tf.training import logical_cpus

    df, spec = make_synthetic(num_tasks=a.tasks, num_items=3700, mean_samples_per_task=165, seed=0)
    tasks = split_tasks(df, spec.fit(df), max_samples_per_task=256)
    if a.pin is not None:
        tf.config.threading.set_intra_op_parallelism_threads(1)
        tf.config.threading.set_inter_op_parallelism_threads(1)
        print(json.dumps(_pinned_phases(tasks, a)))
        return
    if a.replicas:
        strategies = {1: tf.distribute.get_strategy(), 2: tf.distribute.MirroredStrategy(logical_cpus(2))}
        out = {}
        for r in (1, 2, 1, 2):  # interleaved: the second pass of each is the measurement
            with strategies[r].scope():
                model = build("limaml", tasks.spec, 1, False)
            ds = tasks.dataset(TASKS_PER_BATCH, repeat=True)
            model.fit(ds, epochs=1, steps_per_epoch=2, verbose=0)  # trace + warm up
            start = time.perf_counter()
            model.fit(ds, epochs=1, steps_per_epoch=a.steps, verbose=0)
            out[r] = a.steps / (time.perf_counter() - start)
        print(json.dumps(out))
        return
    kind, n, order, batch, *chunk = a.memory.split(",")
    model = build(kind, tasks.spec, int(n), order == "1", chunk=chunk[0] if chunk else None)
    fn = compiled_step(model)
    bundle = first_batch(tasks, int(batch))
    timed(fn, bundle, 2)  # traced (tracing and graph optimization take memory of their own) and warm
    ctypes.CDLL("libc.so.6").malloc_trim(0)  # memory freed by then goes back to the system
    base = _rss()
    peak = [base]
    done = threading.Event()

    def sample():
        while not done.is_set():
            peak[0] = max(peak[0], _rss())
            time.sleep(0.002)

    thread = threading.Thread(target=sample)
    thread.start()
    timed(fn, bundle, 2)
    done.set()
    thread.join()
    out = {"peak_rss_growth_mb": (peak[0] - base) / 2**20,
           "max_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}
    encoded = model.encode_bundle(bundle)
    out["tasks_per_chunk"] = model.tasks_per_chunk(encoded) or int(batch)
    if a.estimate:
        out["estimate"] = model.step_memory(encoded)._asdict()
    print(json.dumps(out))


def steady_tasks_per_s(model, strategy, tasks, batch: int, steps: int, global_input: bool = False) -> float:
    """Tasks/s of `fit` with `batch` tasks per worker per step, in steady state: from the end of the 3rd
    step to the end of the last (excludes tracing and the set-up of fit and its input iterator).

    Each worker reads its own shard of the tasks (`distribute_datasets_from_function`: one input pipeline
    per worker, what file sharding gives at scale); `global_input`: every worker reads the global batches
    and keeps its share (tf.data's DATA auto-shard of an in-memory dataset: each worker does the whole
    input work)."""
    import keras
    import tensorflow as tf

    workers = strategy.num_replicas_in_sync
    if workers == 1 or global_input:
        ds = tasks.dataset(batch * workers, repeat=True)
    else:
        ds = strategy.distribute_datasets_from_function(
            lambda ctx: tasks.subset(slice(ctx.input_pipeline_id, None, ctx.num_input_pipelines)).dataset(
                ctx.get_per_replica_batch_size(batch * workers), repeat=True))
    ends = []
    clock = keras.callbacks.LambdaCallback(on_train_batch_end=lambda *_, **__: ends.append(time.perf_counter()))
    model.fit(ds, epochs=1, steps_per_epoch=steps + 3, verbose=0, callbacks=[clock])
    return (len(ends) - 3) * batch * workers / (ends[-1] - ends[2])


def _rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _run_worker(*argv) -> dict:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [os.getcwd(), os.environ.get("PYTHONPATH")]))}
    out = subprocess.run([sys.executable, "-m", "benchmarks.training_speed", "--worker", *argv], env=env,
                         capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _pinned_phases(tasks, a) -> dict:
    """In a pinned worker of a 2-worker cluster: `a.repeats` times, worker 0 trains a plain (not distributed)
    copy of the model alone while worker 1 waits, then both train the MultiWorkerMirroredStrategy model,
    then both train their plain copy at once without communicating (the ceiling the machine allows: on a
    shared machine two busy cores get less than twice one). Steady tasks/s of each phase, measured by
    worker 0 (the last one summed over both). Alternating within the same processes puts the settings
    under the same machine load."""
    import tensorflow as tf

    strategy = tf.distribute.MultiWorkerMirroredStrategy()
    with strategy.scope():
        model = build("limaml", tasks.spec, 1, False)
    alone = build("limaml", tasks.spec, 1, False)
    chief = strategy.cluster_resolver.task_id == 0

    def barrier():
        strategy.reduce("SUM", strategy.run(lambda: tf.ones([])), axis=None).numpy()

    def total(rate):  # summed over the workers
        return float(strategy.reduce("SUM", strategy.run(lambda: tf.constant(rate)), axis=None))

    out = {"1": [], "2": [], "2 apart": [], "load": []}
    for _ in range(a.repeats):
        barrier()
        if chief:
            out["1"].append(steady_tasks_per_s(alone, tf.distribute.get_strategy(), tasks, a.batch, a.steps))
        barrier()
        out["2"].append(steady_tasks_per_s(model, strategy, tasks, a.batch, a.steps, a.global_input))
        barrier()  # the ceiling: both train a plain model at once, no communication
        out["2 apart"].append(total(steady_tasks_per_s(alone, tf.distribute.get_strategy(), tasks, a.batch, a.steps)))
        out["load"].append(os.getloadavg()[0])
    return out


def _pinned_workers(batch: int, args) -> dict:
    """Tasks/s of 1 and of 2 worker processes pinned to a core each (see `_pinned_phases`)."""
    from limaml_tf.training import multi_worker_config

    ports = [_free_port() for _ in range(2)]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [os.getcwd(), os.environ.get("PYTHONPATH")]))}
    procs = [subprocess.Popen(
        [sys.executable, "-m", "benchmarks.training_speed", "--worker", "--pin", str(i), "--tasks",
         str(args.replica_tasks), "--steps", str(args.pinned_steps), "--batch", str(batch),
         "--repeats", str(args.pinned_repeats)],
        env={**env, "TF_CONFIG": multi_worker_config(ports, i)}, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
        text=True) for i in range(2)]
    outs = [p.communicate()[0] for p in procs]
    if any(p.returncode for p in procs):
        raise RuntimeError(f"a pinned worker failed (exit codes {[p.returncode for p in procs]})")
    return json.loads(outs[0].strip().splitlines()[-1])


def bench_replicas(args) -> dict:
    steps = _run_worker("--replicas", "2", "--tasks", str(args.replica_tasks), "--steps", str(args.steps * 3))
    print(f"\n(c) LiMAML n=1 fit on synthetic ML-1M-scale tasks, {TASKS_PER_BATCH} tasks per global batch: "
          f"1 replica {steps['1']:.2f} steps/s, 2 replicas (MirroredStrategy, 2 logical CPUs in one process) "
          f"{steps['2']:.2f} steps/s -> {steps['2'] / steps['1']:.2f}x")
    print("    worker processes pinned to a core each, 1 TF thread; worker 0 alone (a plain model) vs both "
          "(MultiWorkerMirroredStrategy, loopback), alternating; tasks/s of fit in steady state")
    out = {"replicas steps/s": steps}
    for batch in args.pinned_batches:
        got = _pinned_workers(batch, args)
        ratios = [two / one for one, two in zip(got["1"], got["2"])]
        ceiling = [apart / one for one, apart in zip(got["1"], got["2 apart"])]
        print(f"    {batch:>4} tasks per worker per step: 1 worker {np.median(got['1']):.0f} tasks/s, 2 workers "
              f"{np.median(got['2']):.0f} tasks/s -> {np.median(ratios):.2f}x (per alternation: "
              f"{', '.join(f'{r:.2f}' for r in ratios)}); 2 workers apart, no communication: "
              f"{np.median(ceiling):.2f}x ({', '.join(f'{r:.2f}' for r in ceiling)}); load average "
              f"{min(got['load']):.1f}-{max(got['load']):.1f}", flush=True)
        out[f"pinned {batch}"] = got
    return out


def bench_memory(args) -> dict:
    """Peak RSS growth of a step, fresh process per configuration, with the graph-size bound of
    `LiMAMLModel.step_memory` (the estimate a memory-budget `max_tasks_per_chunk` chooses from)."""
    print("\n(d) peak memory of a training step, MB of resident-set growth over 2 steps once traced and warm "
          "(fresh process each; synthetic ML-1M-scale tasks of 192 + 64 slots); [graph-size bound of the chunk, MB]")
    configs = [("vanilla", "vanilla,0,0")] + [(f"n={n} 2nd order", f"limaml,{n},0") for n in args.memory_steps]
    out, estimates = {}, {}
    print(f"    {'':<16}" + "".join(f"{t:>10} tasks{'':>9}" for t in args.memory_batches))
    for label, config in configs:
        row = []
        for t in args.memory_batches:
            first = t == args.memory_batches[0] and not label.startswith("vanilla")
            got = _run_worker("--memory", f"{config},{t}", "--tasks", str(args.replica_tasks),
                              *(["--estimate"] if first else []))
            estimates.setdefault(label, got.get("estimate"))
            out[(label, t)] = got
            bound = estimates[label] and (estimates[label]["fixed"] + estimates[label]["per_task"] * t) / 2**20
            row.append(f"{got['peak_rss_growth_mb']:>12.1f}" + (f" [{bound:6.0f}]" if bound else f"{'':>9}"))
        print(f"    {label:<16}" + "".join(row), flush=True)
    ref = {t: out[("vanilla", t)]["peak_rss_growth_mb"] for t in args.memory_batches}
    print("    ratio to vanilla: " + "; ".join(
        f"{label} " + "/".join(f"{out[(label, t)]['peak_rss_growth_mb'] / ref[t]:.1f}x" for t in args.memory_batches)
        for label, _ in configs[1:]))
    n, t, budget = max(args.memory_steps), max(args.memory_batches), args.memory_budget
    got = _run_worker("--memory", f"limaml,{n},0,{t},{budget}", "--tasks", str(args.replica_tasks))
    print(f"    n={n}, {t} tasks, max_tasks_per_chunk={budget!r}: chunks of {got['tasks_per_chunk']} tasks, "
          f"peak growth {got['peak_rss_growth_mb']:.1f} MB (unchunked {out[(f'n={n} 2nd order', t)]['peak_rss_growth_mb']:.1f} MB)")
    out[("budget", budget)] = got
    return {f"{k[0]} {k[1]}": v for k, v in out.items()}


def main(argv=None):
    if argv and argv[0] == "--worker":
        return _worker(argv[1:])
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="n in {1, 5}, 3 repeats")
    p.add_argument("--ml100k", default=os.path.normpath(ML100K))
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--steps", type=int, default=3, help="steps per timing")
    p.add_argument("--rows-1m", type=int, default=0, help=argparse.SUPPRESS)
    p.add_argument("--replica-tasks", type=int, default=1024, help="tasks generated for (c) and (d)")
    p.add_argument("--only", default="abcde", help="which parts to run, e.g. 'ab'")
    p.add_argument("--top-ops", type=int, default=6, help="op types shown per configuration in (e)")
    p.add_argument("--memory-budget", default="256MB", help="the max_tasks_per_chunk budget shown in (d)")
    p.add_argument("--pinned-repeats", type=int, default=3, help="alternations of 1 and 2 pinned workers in (c)")
    p.add_argument("--pinned-steps", type=int, default=20, help="timed steps per phase in (c)")
    p.add_argument("--pinned-batches", type=int, nargs="+", default=[32, 128, 256],
                   help="tasks per worker per step in (c)")
    p.add_argument("--json", help="also write the figures here")
    args = p.parse_args(argv)
    args.inner_steps = [1, 5] if args.quick else [1, 2, 3, 4, 5]
    args.task_counts = [64, 256]
    args.memory_steps = [1, 5] if args.quick else [1, 2, 3, 4, 5]
    args.memory_batches = [32, 128, 512]
    args.profile_steps = [1, 2, 3, 5] if not args.quick else [1, 5]
    if args.quick:
        args.repeats = min(args.repeats, 3)

    import tensorflow as tf

    print(f"TensorFlow {tf.__version__}, {os.cpu_count()} CPU cores, load average {os.getloadavg()[0]:.1f}")
    results = {}
    tasks = datasets(args) if set(args.only) & set("abe") else {}
    if "a" in args.only:
        results["a"] = bench_step_ratio(tasks, args)
    if "b" in args.only:
        results["b"] = bench_vectorized(tasks["synthetic ML-1M scale"], args)
    if "c" in args.only:
        results["c"] = bench_replicas(args)
    if "d" in args.only:
        results["d"] = bench_memory(args)
    if "e" in args.only:
        results["e"] = bench_profile(tasks["synthetic ML-1M scale"], args)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1, default=str)
    return results


if __name__ == "__main__":
    main(sys.argv[1:])
