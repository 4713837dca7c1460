"""Feast definitions of the meta-embedding feature view: one row per task,
(task_key, embedding float32[d], model_version) with event time `computed_at`.

Used by `limaml_tf.feature_store.EmbeddingStore` (which points the source at the published run),
and by `feast apply` in this directory (source path from $LIMAML_EMBEDDINGS_PATH).
"""

import os

from feast import Entity, FeatureView, Field, FileSource, ValueType
from feast.types import Array, Float32, String

ENTITY_KEY = "task_key"
FEATURE_VIEW = "meta_embeddings"


def definitions(source_path: str):
    """(entity, feature view) reading the offline copy (Parquet) at `source_path`."""
    task = Entity(name="task", join_keys=[ENTITY_KEY], value_type=ValueType.STRING,
                  description="a LiMAML task (a user, a user x notification type, ...)")
    source = FileSource(name="meta_embeddings_parquet", path=source_path, timestamp_field="computed_at")
    view = FeatureView(name=FEATURE_VIEW, entities=[task], source=source, online=True,
                       schema=[Field(name="embedding", dtype=Array(Float32)),
                               Field(name="model_version", dtype=String)],
                       description="LiMAML meta embeddings (Algorithm 2b), refreshed by beam_pipelines.refresh_embeddings")
    return task, view


task, meta_embeddings = definitions(os.environ.get("LIMAML_EMBEDDINGS_PATH", "data/embeddings"))
