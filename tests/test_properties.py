"""Property-based tests (Hypothesis): random frames through the feature check / encode path raise
only FeatureError, random Predict requests get only the server's own status codes."""

from __future__ import annotations

import grpc
import numpy as np
import pandas as pd
import pytest
import tensorflow as tf
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from tensorflow.core.framework import tensor_pb2, tensor_shape_pb2, types_pb2
from tensorflow_serving.apis import predict_pb2

from limaml_tf.features import FeatureEncoder
from limaml_tf.raw_data import FeatureError
from limaml_tf.spec import Feature, FeatureSpec
from limaml_tf.tasks import split_tasks

SETTINGS = settings(max_examples=50, deadline=None, suppress_health_check=[HealthCheck.too_slow])

SPEC = FeatureSpec(
    "user", "ts", "y",
    meta_features=(Feature("segment", "categorical", vocabulary=("a", "b")), Feature("activity", "numeric")),
    other_features=(Feature("item", "categorical", num_bins=8), Feature("tags", "multi_valued", num_bins=8, max_len=2),
                    Feature("hour", "numeric", mean=12.0, std=7.0)))
ENCODER = FeatureEncoder(SPEC)

# any value a user's column might hold
WILD = st.one_of(st.none(), st.booleans(), st.integers(-10**12, 10**15), st.floats(allow_nan=True, allow_infinity=True),
                 st.text(max_size=6), st.lists(st.text(max_size=3), max_size=3), st.lists(st.integers(), max_size=2))
# values of the right kind, so that frames often pass the check and reach the encoder
GOOD = {"user": st.sampled_from(["u1", "u2", "ü3"]), "ts": st.floats(0, 1e9), "y": st.sampled_from([0, 1]),
        "segment": st.sampled_from(["a", "b", "c", ""]), "activity": st.floats(-5, 5), "item": st.text(max_size=4),
        "tags": st.one_of(st.lists(st.text(max_size=3), max_size=3), st.text(max_size=5)), "hour": st.floats(0, 24)}


@st.composite
def frames(draw):
    n = draw(st.integers(0, 6))
    missing = draw(st.sets(st.sampled_from(list(GOOD)), max_size=1)) if draw(st.integers(0, 3)) == 0 else set()
    wild = draw(st.sets(st.sampled_from(list(GOOD)), max_size=2))
    columns = {name: draw(st.lists(WILD if name in wild else good, min_size=n, max_size=n))
               for name, good in GOOD.items() if name not in missing}
    return pd.DataFrame(columns, index=range(n))


@SETTINGS
@given(frames())
def test_random_frames_raise_only_feature_errors(df):
    try:
        SPEC.validate(df)
        encoded = ENCODER({k: tf.constant(v) for k, v in SPEC.raw_arrays(df).items()})
        assert all(v.shape[0] == len(df) for v in encoded.values())
        event("encoded")
        split_tasks(df, SPEC, max_samples_per_task=4, min_samples_per_task=1)
        event("split into tasks")
    except FeatureError as e:
        event(f"FeatureError: {str(e)[:40]}")


# -- the Predict request validator --------------------------------------------------------------

class Aborted(Exception):
    def __init__(self, code, details):
        super().__init__(details)
        self.code = code


class FakeContext:
    def abort(self, code, details):
        raise Aborted(code, details)


@pytest.fixture(scope="module")
def servicer(tmp_path_factory):
    from limaml_tf.export import export_serving
    from limaml_tf.serving.repository import ModelRepository
    from limaml_tf.serving.server import PredictionServicer
    from tests.serving_helpers import tiny_model

    model, spec, df = tiny_model()
    base = str(tmp_path_factory.mktemp("saved_models"))
    export_serving(model, base, "ranker", train_df=df)
    return PredictionServicer(ModelRepository(base), max_request_bytes=1 << 16), spec, df


DTYPES = [types_pb2.DT_FLOAT, types_pb2.DT_STRING, types_pb2.DT_INT64, types_pb2.DT_DOUBLE, types_pb2.DT_BOOL,
          types_pb2.DT_INVALID, 999]


@st.composite
def tensor_protos(draw):
    dims = draw(st.one_of(st.lists(st.integers(-2, 5), max_size=3), st.just([10 ** 9]), st.just([3, 10 ** 6])))
    proto = tensor_pb2.TensorProto(dtype=draw(st.sampled_from(DTYPES)), tensor_shape=tensor_shape_pb2.TensorShapeProto(
        dim=[tensor_shape_pb2.TensorShapeProto.Dim(size=d) for d in dims],
        unknown_rank=draw(st.booleans()) and draw(st.booleans())))
    kind = draw(st.sampled_from(["float", "string", "int64", "bytes", "none"]))
    if kind == "float":
        proto.float_val.extend(draw(st.lists(st.floats(width=32), max_size=12)))
    elif kind == "string":
        proto.string_val.extend(draw(st.lists(st.binary(max_size=4), max_size=12)))
    elif kind == "int64":
        proto.int64_val.extend(draw(st.lists(st.integers(-2**63, 2**63 - 1), max_size=12)))
    elif kind == "bytes":
        proto.tensor_content = draw(st.binary(max_size=64))
    return proto


@st.composite
def requests(draw, spec, df):
    n = draw(st.integers(0, 4))
    raw = spec.raw_arrays(df.iloc[:n])
    raw["meta_embedding"] = np.asarray(draw(st.lists(st.floats(-3, 3, width=32), min_size=4 * n, max_size=4 * n)),
                                       np.float32).reshape(n, 4)
    request = predict_pb2.PredictRequest()
    request.model_spec.name = "ranker"
    for k, v in raw.items():
        request.inputs[k].CopyFrom(tf.make_tensor_proto(v))
    for _ in range(draw(st.integers(0, 3))):
        name = draw(st.sampled_from(sorted(raw) + ["bogus"]))
        action = draw(st.sampled_from(["replace", "delete", "model", "output"]))
        if action == "replace":
            request.inputs[name].CopyFrom(draw(tensor_protos()))
        elif action == "delete":
            request.inputs.pop(name, None)
        elif action == "model":
            field = draw(st.sampled_from(["name", "signature_name", "version", "version_label"]))
            if field == "version":
                request.model_spec.version.value = draw(st.integers(-1, 3))
            else:
                setattr(request.model_spec, field, draw(st.sampled_from(["ranker", "", "x", "serving_default"])))
        else:
            request.output_filter.append(draw(st.sampled_from(["probability", "score"])))
    return request


OWN_CODES = {grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.NOT_FOUND, grpc.StatusCode.RESOURCE_EXHAUSTED}


@SETTINGS
@given(data=st.data())
def test_random_requests_get_only_the_servers_own_errors(servicer, data):
    server, spec, df = servicer
    request = data.draw(requests(spec, df))
    try:
        response = server.Predict(request, FakeContext())
    except Aborted as e:
        assert e.code in OWN_CODES and str(e), (e.code, str(e))
        event(f"{e.code.name}: {str(e)[:30]}")
        return
    event("served")
    n = request.inputs["hour"].tensor_shape.dim[0].size
    assert tf.make_ndarray(response.outputs["probability"]).shape == (n,)
