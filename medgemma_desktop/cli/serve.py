"""`medgemma-desktop serve`: the model behind an OpenAI-compatible API (for other tools, scripts and other
workstations), on this computer only unless --host says otherwise."""

from __future__ import annotations

import argparse
import sys

from medgemma_desktop.cli.backend_options import add_api_key_argument, add_model_arguments, load_engine
from medgemma_desktop.core.errors import UserFacingError


def add_parser(commands: argparse._SubParsersAction) -> None:
    serve = commands.add_parser("serve", help="serve the model as an OpenAI-compatible API (/v1/chat/completions)")
    add_model_arguments(serve, remote=False)
    serve.add_argument("--host", help="the address to listen on (default 127.0.0.1: this computer only; any other "
                                      "address requires --api-key)")
    serve.add_argument("--port", type=int, default=8080)
    add_api_key_argument(serve, "the key clients must send as 'Authorization: Bearer KEY'")
    serve.add_argument("--served-model-name", metavar="NAME",
                       help="the model's name in the API (default: the adapter's folder name, else the model's)")
    serve.add_argument("--queue", type=int, default=4, metavar="N",
                       help="requests that may wait for the model; one more is told 503 with Retry-After")
    serve.add_argument("--max-body-mb", type=int, default=64, metavar="MB", help="the largest request accepted")
    serve.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from medgemma_desktop.server.binding import checked_host

    host = checked_host(args.host, args.api_key)  # before the slow model load
    try:
        import uvicorn

        from medgemma_desktop.server.app import ServerOptions, create_app
    except ImportError as exc:
        raise UserFacingError(f"the server needs a package that is not installed ({exc.name})",
                              fix="Install it with: pip install 'medgemma-desktop[server]'") from None
    engine = load_engine(args)
    name = args.served_model_name or (engine.active_adapter or engine.folder.path.name)
    options = ServerOptions(model_id=name, api_key=args.api_key, queue_capacity=max(args.queue, 1),
                            max_body_bytes=args.max_body_mb << 20)
    print(f"serving {name} at http://{host}:{args.port}/v1 (OpenAI-compatible); Ctrl+C stops", file=sys.stderr)
    try:
        uvicorn.run(create_app(engine, options), host=host, port=args.port, log_level="info", timeout_keep_alive=5,
                    limit_concurrency=64 + options.queue_capacity)
    except KeyboardInterrupt:  # uvicorn shuts down gracefully on Ctrl+C, then passes the signal on
        pass
    finally:
        engine.close()
    return 0
