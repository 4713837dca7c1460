"""Online serving: the gRPC client (`client`) and a local TF Serving stand-in (`server`)."""

from limaml_tf.serving.client import (EmbeddingLookup, InMemoryEmbeddingStore, ServingClient,  # noqa: F401
                                      ServingError, request_inputs)
