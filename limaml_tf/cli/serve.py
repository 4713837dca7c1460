"""`limaml serve`: the local TF Serving stand-in (`limaml_tf.serving.server`) on a saved_models/ directory."""

from __future__ import annotations


def add_parser(sub):
    p = sub.add_parser("serve", help="local TF Serving stand-in (gRPC PredictionService) for saved_models/")
    p.add_argument("--saved-models", default="saved_models", help="directory with <name>/<version>/ exports")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8500)
    p.add_argument("--max-request-bytes", type=int, default=16 << 20,
                   help="larger Predict requests get RESOURCE_EXHAUSTED (default 16 MiB)")
    p.set_defaults(func=serve)


def serve(args) -> int:
    from limaml_tf.serving.server import ModelRepository, start_server

    repository = ModelRepository(args.saved_models)
    server, port = start_server(repository, args.port, args.host, max_request_bytes=args.max_request_bytes)
    names = sorted(repository.model_dirs)
    print(f"[serve] PredictionService on {args.host}:{port} serving {names} from {args.saved_models} (Ctrl-C stops)")
    try:
        server.wait_for_termination()
    except KeyboardInterrupt:
        server.stop(grace=2).wait()
    return 0
