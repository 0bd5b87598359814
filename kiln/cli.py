"""The ``kiln`` command."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from kiln.config import Settings


def _serve(args: argparse.Namespace) -> int:
    import uvicorn

    from kiln.server import Kiln, create_app

    settings = Settings.from_env(host=args.host, port=args.port, data_dir=args.data_dir)
    app = create_app(Kiln(settings))
    print(f"kiln: serving on http://{settings.host}:{settings.port} "
          f"(data in {settings.data_dir})", file=sys.stderr, flush=True)
    uvicorn.run(app, host=settings.host, port=settings.port, loop="uvloop", http="httptools",
                log_level=settings.log_level, timeout_graceful_shutdown=30, access_log=False)
    return 0


def _settings(_args: argparse.Namespace) -> int:
    for name, value, doc in Settings.from_env().describe():
        print(f"{name} = {value!r}\n    {doc}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="kiln", description="Kiln: a self-hosted, AWS Lambda-compatible endpoint.")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    serve = commands.add_parser("serve", help="start the endpoint (every API on one port)")
    serve.add_argument("--host", help="address to listen on (default 127.0.0.1)")
    serve.add_argument("--port", type=int, help="port to listen on (default 8900)")
    serve.add_argument("--data-dir", type=Path, help="state directory "
                       "(default ~/.local/share/kiln)")
    serve.set_defaults(func=_serve)
    settings = commands.add_parser("settings", help="print every setting with its value")
    settings.set_defaults(func=_settings)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    result: int = args.func(args)
    return result


if __name__ == "__main__":
    sys.exit(main())
