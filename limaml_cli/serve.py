"""`limaml serve`: the local TF Serving stand-in (`limaml_tf.serving.server`) on a saved_models/ directory."""

from __future__ import annotations

import signal
import threading

EXAMPLES = """
limaml serve --saved-models saved_models --port 8500
limaml serve --saved-models saved_models --model_config_file saved_models/models.config \\
    --model_config_file_poll_wait_seconds 60
"""


def add_parser(sub):
    from limaml_cli import add_command

    p = add_command(sub, "serve", "local TF Serving stand-in (gRPC PredictionService + ModelService)", EXAMPLES,
                    description="Local TF Serving stand-in: PredictionService (Predict, GetModelMetadata) and "
                                "ModelService (GetModelStatus, HandleReloadConfigRequest) over gRPC. SIGTERM or "
                                "Ctrl-C stops it gracefully (requests in flight finish).")
    p.add_argument("--saved-models", default="saved_models", help="directory with <name>/<version>/ exports")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8500, help="0: a free port (printed)")
    p.add_argument("--model_config_file", "--model-config-file", dest="model_config_file", default=None,
                   help="TF Serving model_config_list (default: <saved-models>/models.config when it exists, else "
                        "every model directory, latest version)")
    p.add_argument("--model_config_file_poll_wait_seconds", "--model-config-file-poll-wait-seconds",
                   dest="config_poll_wait", type=float, default=0.0,
                   help="re-read the model config this often: models / versions / labels added are loaded, "
                        "removed ones unloaded (0: read once, the default, like TF Serving)")
    p.add_argument("--file_system_poll_wait_seconds", "--file-system-poll-wait-seconds", dest="fs_poll_wait",
                   type=float, default=1.0, help="look for new version directories this often (0: never)")
    p.add_argument("--max-request-bytes", type=int, default=16 << 20,
                   help="larger Predict requests get RESOURCE_EXHAUSTED (default 16 MiB)")
    p.add_argument("--grace-seconds", type=float, default=10.0,
                   help="on SIGTERM / Ctrl-C, how long requests in flight may take to finish")
    p.set_defaults(func=serve)


def serve(args, ready=None) -> int:
    """Serves until SIGTERM or Ctrl-C, then stops gracefully: new requests are refused, those in flight
    finish (up to --grace-seconds). `ready(server)` is called once it serves (tests)."""
    from limaml_tf.serving.repository import ModelRepository
    from limaml_tf.serving.server import start_server

    repository = ModelRepository(args.saved_models, args.model_config_file)
    server, port = start_server(repository, args.port, args.host, max_request_bytes=args.max_request_bytes,
                                file_system_poll_wait=args.fs_poll_wait, config_poll_wait=args.config_poll_wait)
    stop = threading.Event()
    stopped_by = []

    def on_signal(signum, frame):
        stopped_by.append(signal.Signals(signum).name)
        stop.set()

    previous = {s: signal.signal(s, on_signal) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        models = {name: sorted(m.versions) for name, m in repository.models.items()}
        print(f"[serve] PredictionService on {args.host}:{port} serving {models} from {args.saved_models} "
              "(SIGTERM / Ctrl-C stops)", flush=True)
        if ready is not None:
            ready(server)
        while not stop.wait(0.5):  # wakes up for signals
            pass
        print(f"[serve] {stopped_by[0]}: stopping; requests in flight finish (up to {args.grace_seconds:g} s)",
              flush=True)
        server.stop(args.grace_seconds).wait()
        print("[serve] stopped", flush=True)
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
    return 0
