"""Request checks of the local PredictionService (`limaml_tf.serving.server`): a Predict request's inputs
against the signature, decoded only once their declared shapes fit, and the client's deadline. Every
refusal is a `RequestError` carrying the gRPC status and a message naming the input and the fix."""

from __future__ import annotations

import grpc
import numpy as np
import tensorflow as tf

DEFAULT_MAX_REQUEST_BYTES = 16 << 20


class RequestError(Exception):
    def __init__(self, code: grpc.StatusCode, message: str):
        super().__init__(message)
        self.code = code


def _describe(signature_def) -> str:
    return ", ".join(f"{k}: {tf.dtypes.as_dtype(v.dtype).name}"
                     f"{[d.size for d in v.tensor_shape.dim]}" for k, v in sorted(signature_def.inputs.items()))


def request_tensors(servable, signature_name: str, request,
                    max_values: int = DEFAULT_MAX_REQUEST_BYTES) -> dict[str, tf.Tensor]:
    """Checks the request's inputs against the signature; returns them as tensors. No input is decoded
    before its declared shape fits the signature and holds at most `max_values` values."""
    where = f"signature {signature_name!r} of model {servable.name!r} version {servable.version}"
    sig = servable.signature_defs[signature_name]
    missing = sorted(set(sig.inputs) - set(request.inputs))
    unknown = sorted(set(request.inputs) - set(sig.inputs))
    if missing or unknown:
        raise RequestError(grpc.StatusCode.INVALID_ARGUMENT,
                           (f"missing input(s) {missing}" if missing else "") + ("; " if missing and unknown else "")
                           + (f"unknown input(s) {unknown}" if unknown else "") + f" for {where}; it takes: "
                           f"{_describe(sig)}")
    tensors, batch = {}, {}
    for name, info in sig.inputs.items():
        proto = request.inputs[name]
        want = tf.dtypes.as_dtype(info.dtype)
        if proto.dtype != info.dtype:
            try:
                got = tf.dtypes.as_dtype(proto.dtype).name if proto.dtype else "unset"
            except TypeError:
                got = f"<unknown enum {proto.dtype}>"
            raise RequestError(grpc.StatusCode.INVALID_ARGUMENT,
                               f"input {name!r} has dtype {got}, {where} expects {want.name}: send {want.name} values")
        shape = tf.TensorShape([None if d.size < 0 else d.size for d in info.tensor_shape.dim])
        declared = [d.size for d in proto.tensor_shape.dim]
        if proto.tensor_shape.unknown_rank or any(d < 0 for d in declared) or not shape.is_compatible_with(declared):
            raise RequestError(grpc.StatusCode.INVALID_ARGUMENT,
                               f"input {name!r} has shape {declared}, {where} expects "
                               f"{[d if d is not None else -1 for d in shape.as_list()]} (-1: any size)")
        if np.prod(declared, dtype=float) > max_values:
            raise RequestError(grpc.StatusCode.INVALID_ARGUMENT,
                               f"input {name!r} declares shape {declared}, over the server's limit of {max_values} "
                               "values per input: split the batch into smaller requests")
        try:
            value = tf.make_ndarray(proto)
        except Exception as e:  # inconsistent shape / content
            raise RequestError(grpc.StatusCode.INVALID_ARGUMENT, f"input {name!r} is not a valid TensorProto ({e}): "
                               "build it with tf.make_tensor_proto")
        if value.dtype.kind == "f" and not np.isfinite(value).all():
            raise RequestError(grpc.StatusCode.INVALID_ARGUMENT,
                               f"input {name!r} has NaN/inf values: send finite values (for an unknown task, the "
                               "cold-start meta embedding of the serving metadata)")
        tensors[name] = tf.constant(value, dtype=want)
        batch[name] = value.shape[0] if value.ndim else None
    if len(set(batch.values())) > 1:
        raise RequestError(grpc.StatusCode.INVALID_ARGUMENT,
                           f"inputs have different batch sizes {batch}: send one row per sample in every input")
    return tensors


def check_deadline(context) -> None:
    """DEADLINE_EXCEEDED, without running the model, when the client's deadline has passed (e.g. while
    the request waited for a worker thread)."""
    time_remaining = getattr(context, "time_remaining", None)
    remaining = time_remaining() if time_remaining is not None else None
    if remaining is not None and remaining <= 0:
        raise RequestError(grpc.StatusCode.DEADLINE_EXCEEDED, "the request's deadline passed before the model ran: "
                           "give it a longer deadline (timeout) or send fewer requests at once")

