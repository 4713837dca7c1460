"""Builds and runs `cpp/load_check.cc` against the tensorflow wheel's libtensorflow_cc: proof that
TF Serving's C++ SavedModel loader (tag "serve") can load and run an export."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile

import numpy as np
import tensorflow as tf

SOURCE = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                      "cpp", "load_check.cc")


def compiler() -> str | None:
    return os.environ.get("CXX") or shutil.which("g++") or shutil.which("clang++")


def build(output: str, source: str = SOURCE) -> str:
    """Compiles the checker to `output` (~10 s). Flags from the wheel's layout: its ABI, Eigen alignment,
    and --no-as-needed so libtensorflow_cc's session factory registration is kept."""
    cxx = compiler()
    if cxx is None:
        raise FileNotFoundError("no C++ compiler (install g++: scripts/system_deps.sh)")
    tf_dir = os.path.dirname(tf.__file__)
    cmd = [cxx, "-std=c++17", "-O0", "-D_GLIBCXX_USE_CXX11_ABI=1", "-DEIGEN_MAX_ALIGN_BYTES=64",
           f"-I{tf_dir}/include", source, "-o", output, f"-L{tf_dir}", f"-Wl,-rpath,{tf_dir}",
           "-Wl,--no-as-needed", "-l:libtensorflow_framework.so.2", "-l:libtensorflow_cc.so.2"]
    subprocess.run(cmd, check=True, capture_output=True, text=True)
    return output


def run(binary: str, export_dir: str, inputs: dict[str, np.ndarray],
        signature: str = "serving_default") -> dict[str, np.ndarray]:
    """Runs the built checker on `inputs`; returns the signature's outputs as numpy arrays."""
    with tempfile.TemporaryDirectory() as tmp:
        in_dir, out_dir = os.path.join(tmp, "in"), os.path.join(tmp, "out")
        os.makedirs(in_dir)
        os.makedirs(out_dir)
        for name, value in inputs.items():
            with open(os.path.join(in_dir, f"{name}.pb"), "wb") as f:
                f.write(tf.make_tensor_proto(value).SerializeToString())
        proc = subprocess.run([binary, export_dir, in_dir, out_dir, signature], capture_output=True, text=True)
        if proc.returncode:
            raise RuntimeError(f"C++ load check failed: {proc.stderr[-2000:]}")
        out = {}
        for fname in os.listdir(out_dir):
            proto = tf.make_tensor_proto(0)
            with open(os.path.join(out_dir, fname), "rb") as f:
                proto.ParseFromString(f.read())
            out[fname[:-3]] = tf.make_ndarray(proto)
        return out
