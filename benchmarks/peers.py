"""LiMAML's outer gradient vs the PyTorch meta-learning styles, side by side in one run (issue 12).

    pip install -e ".[bench]"               # adds torch==2.13.0 (CPU)
    python -m benchmarks.peers [--quick] [--threads 2]

The same network (the benchmark's MLP meta and global blocks, weights copied from the Keras model),
the same encoded task batch (synthetic ML-1M-scale tasks, support 192 + query 64 slots) and the same
inner loop (n SGD steps with rate α on the support loss, second order), three ways:

  ours        `LiMAMLModel.encoded_gradients`, compiled with tf.function (inner loop vectorized over tasks),
              without and with XLA (`jit_inner_loop=True`; "auto" picks it from n = 2, and at n = 1 up to 32,768 task slots);
  l2l-style   learn2learn's loop written out in plain torch: per task, clone the meta parameters, n steps
              of `torch.autograd.grad(create_graph=True)` on the task's real samples (no padding),
              query loss `.backward()`;
  torch.func  `functional_call`-style pure forward, `torch.func.grad` for the inner steps, `vmap` over the
              padded tasks, `grad` of the mean query loss.

Each computes the outer gradient (meta and global blocks) of one batch from encoded features: no
optimizer update, no feature encoding. Their gradients are checked against each other first (max
difference relative to the largest entry). Times are medians of interleaved repeats; all three use the
same thread counts (torch.set_num_threads / set_num_interop_threads, TF intra / inter op threads).
"""

from __future__ import annotations

import argparse
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

ALPHA = 0.5  # the inner learning rate of benchmarks.training_speed


# -- the Keras blocks as pure torch functions of {variable path: tensor} ---------------------------
class TorchNet:
    """The forward pass of an `MLPMetaBlock` + `MLPGlobalBlock` model in torch, parameters passed in."""

    def __init__(self, model):
        from limaml_tf.blocks import MLPGlobalBlock, MLPMetaBlock

        if not (isinstance(model.meta_block, MLPMetaBlock) and isinstance(model.global_block, MLPGlobalBlock)
                and not model.global_block.dropout):
            raise TypeError("TorchNet mirrors MLPMetaBlock + MLPGlobalBlock (no dropout) only")
        self.meta_block, self.global_block = model.meta_block, model.global_block

    def params(self):
        """(meta, global) parameter dicts: copies of the Keras weights, keyed by variable path."""
        import torch

        def copy(block):
            return {v.path: torch.tensor(v.numpy(), requires_grad=True) for v in block.trainable_variables}
        return copy(self.meta_block), copy(self.global_block)

    @staticmethod
    def _features(layer, p, x):
        import torch
        import torch.nn.functional as F

        parts = []
        for f in layer.features:
            v = x[f.name]
            if f.kind == "numeric":
                parts.append(v.reshape(-1, 1))
                continue
            e = F.embedding(v, p[layer.embeddings[f.name].embeddings.path])
            if f.kind == "multi_valued":
                mask = (v > 0).to(e.dtype)[..., None]
                e = (e * mask).sum(-2) / mask.sum(-2).clamp_min(1.0)
            parts.append(e)
        return torch.cat(parts, -1)

    @staticmethod
    def _dense(layer, p, h):
        import torch

        out = h @ p[layer.kernel.path] + p[layer.bias.path]
        act = layer.get_config()["activation"]
        return {"relu": torch.relu, "tanh": torch.tanh, "linear": lambda a: a}[act](out)

    def logits(self, meta_p, global_p, x):
        """Logits [N] of samples x ({feature: [N, ...]} encoded) under the given parameters."""
        import torch

        h = self._features(self.meta_block.inputs_layer, meta_p, x)
        for layer in [*self.meta_block.hidden, self.meta_block.out]:
            h = self._dense(layer, meta_p, h)
        g = torch.cat([self._features(self.global_block.inputs_layer, global_p, x), h], -1)
        for layer in [*self.global_block.hidden, self.global_block.logit]:
            g = self._dense(layer, global_p, g)
        return g.reshape(-1)


def as_torch(encoded) -> dict:
    """An encoded task bundle (TF tensors) as torch tensors: the three methods read the same numbers."""
    import torch

    sets = {name: {k: torch.from_numpy(v.numpy()) for k, v in encoded[name].items()} for name in ("support", "query")}
    return {**sets, **{k: torch.from_numpy(encoded[k].numpy()) for k in
                       ("support_label", "support_mask", "query_label", "query_mask")}}


def _masked_loss(logits, labels, mask):
    import torch.nn.functional as F

    loss = F.binary_cross_entropy_with_logits(logits, labels, reduction="none")
    return (loss * mask).sum(-1) / mask.sum(-1).clamp_min(1.0)


def l2l_gradients(net, params, batch, steps, lr):
    """learn2learn's MAML loop in plain torch: per task a clone, `autograd.grad(create_graph=True)`."""
    import torch
    import torch.nn.functional as F

    meta, glob = params
    for p in [*meta.values(), *glob.values()]:
        p.grad = None
    n_support, n_query = batch["support_mask"].sum(1).long(), batch["query_mask"].sum(1).long()
    normalizer = max(int((n_query > 0).sum()), 1)

    def real(name, t, n):  # padded slots come last: a per-task loop simply slices them off
        return {k: v[t, :n] for k, v in batch[name].items()}, batch[f"{name}_label"][t, :n]

    for t in range(len(n_query)):
        if n_query[t] == 0:
            continue
        learner = {k: v.clone() for k, v in meta.items()}  # learn2learn's maml.clone()
        s_x, s_y = real("support", t, n_support[t])
        for _ in range(steps if n_support[t] else 0):
            loss = F.binary_cross_entropy_with_logits(net.logits(learner, glob, s_x), s_y)
            grads = torch.autograd.grad(loss, list(learner.values()), create_graph=True)
            learner = {k: w - lr * g for (k, w), g in zip(learner.items(), grads)}
        q_x, q_y = real("query", t, n_query[t])
        (F.binary_cross_entropy_with_logits(net.logits(learner, glob, q_x), q_y) / normalizer).backward()
    return {k: p.grad for k, p in [*meta.items(), *glob.items()]}


def func_gradients(net, params, batch, steps, lr):
    """torch.func: `grad` for the inner steps, `vmap` over the padded tasks, `grad` of the outer loss."""
    import torch
    from torch.func import grad, vmap

    meta, glob = ({k: v.detach() for k, v in p.items()} for p in params)
    has_query = (batch["query_mask"].sum(1) > 0).to(torch.float32)
    normalizer = has_query.sum().clamp_min(1.0)

    def task_loss(meta_p, global_p, s_x, s_y, s_m, q_x, q_y, q_m):
        support_loss = lambda p: _masked_loss(net.logits(p, global_p, s_x), s_y, s_m)  # noqa: E731
        for _ in range(steps):
            g = grad(support_loss)(meta_p)
            meta_p = {k: w - lr * g[k] for k, w in meta_p.items()}
        return _masked_loss(net.logits(meta_p, global_p, q_x), q_y, q_m)

    def outer(meta_p, global_p):
        per_task = vmap(task_loss, in_dims=(None, None, 0, 0, 0, 0, 0, 0))(
            meta_p, global_p, batch["support"], batch["support_label"], batch["support_mask"],
            batch["query"], batch["query_label"], batch["query_mask"])
        return (per_task * has_query).sum() / normalizer

    g_meta, g_glob = grad(outer, argnums=(0, 1))(meta, glob)
    return {**g_meta, **g_glob}


def tf_gradients(model):
    """Ours, compiled: encoded bundle -> {variable path: dense gradient}."""
    import tensorflow as tf

    fn = tf.function(lambda enc: model.encoded_gradients(enc)[1])

    def run(encoded):
        return {v.path: tf.convert_to_tensor(g) for v, g in zip(model.trainable_variables, fn(encoded))}
    return run


def max_differences(model, encoded, steps, lr=ALPHA) -> dict:
    """Max |difference| / max |gradient| between the three methods' gradients on one batch, same weights."""
    import numpy as np

    net, batch = TorchNet(model), as_torch(encoded)
    got = {"ours": {k: g.numpy() for k, g in tf_gradients(model)(encoded).items()},
           "l2l": {k: g.numpy() for k, g in l2l_gradients(net, net.params(), batch, steps, lr).items()},
           "torch.func": {k: g.numpy() for k, g in func_gradients(net, net.params(), batch, steps, lr).items()}}

    def diff(a, b):
        return max(float(np.abs(a[k] - b[k]).max() / (np.abs(b[k]).max() + 1e-12)) for k in b)
    return {"l2l vs ours": diff(got["l2l"], got["ours"]), "torch.func vs ours": diff(got["torch.func"], got["ours"]),
            "l2l vs torch.func": diff(got["l2l"], got["torch.func"])}


# -- the benchmark --------------------------------------------------------------------------------
def set_threads(threads: int):
    import tensorflow as tf
    import torch

    torch.set_num_threads(threads)
    torch.set_num_interop_threads(threads)
    tf.config.threading.set_intra_op_parallelism_threads(threads)
    tf.config.threading.set_inter_op_parallelism_threads(threads)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="2 repeats, 32 and 256 tasks")
    p.add_argument("--threads", type=int, default=1,
                   help="intra- and inter-op threads of both (default 1: on a shared machine torch's OpenMP "
                        "threads stall when the cores are oversubscribed)")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--tasks", type=int, nargs="+", default=[32, 256])
    p.add_argument("--inner-steps", type=int, nargs="+", default=[1, 5])
    args = p.parse_args(argv)
    try:
        import torch
    except ImportError:
        print("torch is not installed: pip install -e \".[bench]\" (torch==2.13.0, CPU) to run this benchmark")
        return {}
    set_threads(args.threads)  # before TF runs any op
    import tensorflow as tf

    from benchmarks.training_speed import build, first_batch, interleaved
    from limaml_tf import make_synthetic, split_tasks

    repeats = 2 if args.quick else args.repeats
    print(f"TensorFlow {tf.__version__}, torch {torch.__version__}, {os.cpu_count()} CPU cores, {args.threads} "
          f"intra-op + {args.threads} inter-op threads each, load average {os.getloadavg()[0]:.1f}")
    df, spec = make_synthetic(num_tasks=max(args.tasks), num_items=3700, mean_samples_per_task=165, seed=0)
    tasks = split_tasks(df, spec.fit(df), max_samples_per_task=256)
    print(f"outer gradient of one batch, second order, α = {ALPHA}, support {tasks.support_length} + query "
          f"{tasks.query_length} slots/task; time of l2l-style and of torch.func / time of ours (higher: ours faster)")
    results = {}
    for n in args.inner_steps:
        model = build("limaml", tasks.spec, n)
        net = TorchNet(model)
        check = max_differences(model, model.encode_bundle(first_batch(tasks, 8)), n)
        print(f"  n={n}: gradients agree on 8 tasks, max relative difference "
              + ", ".join(f"{k} {v:.1e}" for k, v in check.items()))
        ours = tf_gradients(model)
        xla = build("limaml", tasks.spec, n, jit=True)  # jit_inner_loop=True (what "auto" picks where it measured faster)
        xla.set_weights(model.get_weights())
        ours_xla = tf_gradients(xla)
        for t in args.tasks:
            encoded = model.encode_bundle(first_batch(tasks, t))
            batch, params = as_torch(encoded), net.params()
            fns = {"ours": lambda _: ours(encoded), "ours xla": lambda _: ours_xla(encoded),
                   "l2l": lambda _: l2l_gradients(net, params, batch, n, ALPHA),
                   "torch.func": lambda _: func_gradients(net, params, batch, n, ALPHA)}
            times = interleaved(fns, dict.fromkeys(fns), repeats, 1)
            results[(n, t)] = {**times, "check": check}
            line = f"  n={n} {t:>4} tasks: l2l-style {1e3 * times['l2l']:8.1f} ms, torch.func {1e3 * times['torch.func']:7.1f} ms"
            for name in ("ours", "ours xla"):
                line += (f" | {name} {1e3 * times[name]:6.1f} ms: l2l {times['l2l'] / times[name]:5.1f}x, "
                         f"torch.func {times['torch.func'] / times[name]:4.1f}x")
            print(line, flush=True)
    return {f"n={n} tasks={t}": v for (n, t), v in results.items()}


if __name__ == "__main__":
    main(sys.argv[1:])
