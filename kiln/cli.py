"""The ``kiln`` command: run the endpoint (``serve``) and manage functions on a running one.

Function commands (create, update, invoke, list, logs, delete) talk to Kiln over the Lambda
REST API, the same wire boto3 uses, at ``--endpoint`` (default ``$KILN_ENDPOINT``, else
http://127.0.0.1:8900).  Exit codes: 0 success, 1 the function failed, 2 usage error, 3 the API
refused the request or Kiln could not be reached.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import functools
import json
import os
import signal
import sys
import time
import zipfile
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any, cast

from kiln.client import DEFAULT_ENDPOINT, ApiError, ConnectionFailed, KilnClient, zip_directory
from kiln.config import Settings

EXIT_OK = 0
EXIT_FUNCTION_ERROR = 1
EXIT_USAGE = 2
EXIT_API_ERROR = 3
DEFAULT_ROLE = "arn:aws:iam::000000000000:role/kiln"
LOG_POLL_SECONDS = 0.5
#: How long create/update wait for a function to leave Pending / InProgress.
READY_WAIT_SECONDS = 60.0


class UsageError(Exception):
    """Bad command-line input (exit 2)."""


# -- serve / settings -----------------------------------------------------------------------------


def _serve(args: argparse.Namespace) -> int:
    import uvicorn

    from kiln.gateway._ws_protocol import ApiGatewayWebSocketProtocol
    from kiln.gateway.alb import parse_targets
    from kiln.http_protocol import KilnHttpProtocol
    from kiln.invoke.api import InvokeApp
    from kiln.server import Kiln, create_app

    settings = Settings.from_env(host=args.host, port=args.port, data_dir=args.data_dir,
                                 alb_targets=" ".join(args.alb_target or ()) or None)
    try:
        parse_targets(settings.alb_targets)
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    app = create_app(Kiln(settings))
    # The data plane is answered by Kiln's subclass of uvicorn's httptools protocol (Invoke
    # by the InvokeApp behind the gateway dispatch, without ASGI).
    assert isinstance(app.app, InvokeApp)
    http = functools.partial(KilnHttpProtocol, invoke=app.app, gateway=app)
    print(f"kiln: serving on http://{settings.host}:{settings.port} "
          f"(data in {settings.data_dir})", file=sys.stderr, flush=True)
    config = uvicorn.Config(app, host=settings.host, port=settings.port, loop="uvloop",
                            http=cast(type[asyncio.Protocol], http),
                            ws=ApiGatewayWebSocketProtocol,
                            log_level=settings.log_level,
                            timeout_graceful_shutdown=30, access_log=False)

    class Server(uvicorn.Server):
        @contextlib.contextmanager
        def capture_signals(self) -> Iterator[None]:
            # uvicorn re-raises SIGINT/SIGTERM after its graceful shutdown, so a clean stop
            # would exit -15; Kiln finishes in-flight work and exits 0 instead.
            previous = {sig: signal.signal(sig, self.handle_exit)
                        for sig in (signal.SIGINT, signal.SIGTERM)}
            try:
                yield
            finally:
                for sig, handler in previous.items():
                    signal.signal(sig, handler)

    Server(config).run()
    return 0


def _microvm_build_image(args: argparse.Namespace) -> int:
    from kiln.runtime.runtimes import RuntimeCatalog
    from kiln.vmm.guest.image import ImageError, build_image, images_dir

    started = time.monotonic()

    def progress(step: str) -> None:
        print(f"kiln microvm build-image: {time.monotonic() - started:6.1f}s {step}",
              file=sys.stderr, flush=True)

    settings = Settings.from_env(data_dir=args.data_dir)
    try:
        # The node nodejs*.x runs on here, so the guest's is the same.
        image = build_image(images_dir(settings.data_dir), progress,
                            node=RuntimeCatalog(settings).node())
    except ImageError as exc:
        print(f"kiln microvm build-image: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    progress(f"ready: {image.path}")
    print(image.path)
    return EXIT_OK


def _vmm_run(args: argparse.Namespace) -> int:
    from kiln.vmm.monitor import run

    return run(args)


def _vmm_sweep(args: argparse.Namespace) -> int:
    from kiln.vmm.launch import sweep

    for vm_id in sweep(str(args.base_dir)):
        print(vm_id)
    return EXIT_OK


def _settings(_args: argparse.Namespace) -> int:
    for name, value, doc in Settings.from_env().describe():
        print(f"{name} = {value!r}\n    {doc}")
    return 0


# -- helpers for the function commands ----------------------------------------------------------


def _client(args: argparse.Namespace) -> KilnClient:
    endpoint = args.endpoint or os.environ.get("KILN_ENDPOINT") or DEFAULT_ENDPOINT
    try:
        return KilnClient(endpoint)
    except ValueError as exc:
        raise UsageError(f"--endpoint: {exc}") from None


def _code(args: argparse.Namespace) -> bytes | None:
    """The zip to upload: a directory zipped here (modes kept), a zip file as is, or None."""
    if args.dir is not None:
        if not args.dir.is_dir():
            raise UsageError(f"--dir {args.dir}: not a directory")
        return zip_directory(args.dir)
    if args.zip is not None:
        try:
            data: bytes = args.zip.read_bytes()
        except OSError as exc:
            raise UsageError(f"--zip {args.zip}: {exc.strerror or exc}") from None
        if not zipfile.is_zipfile(args.zip):
            raise UsageError(f"--zip {args.zip}: not a zip file")
        return data
    return None


def _environment(items: list[str]) -> dict[str, str]:
    variables: dict[str, str] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise UsageError(f"--env {item!r}: expected KEY=VALUE")
        variables[key] = value
    return variables


def _configuration(args: argparse.Namespace) -> dict[str, Any]:
    """The configuration fields named on the command line (only those given)."""
    config: dict[str, Any] = {}
    for flag, field in (("runtime", "Runtime"), ("handler", "Handler"), ("role", "Role"),
                        ("timeout", "Timeout"), ("memory", "MemorySize"),
                        ("description", "Description")):
        value = getattr(args, flag, None)
        if value is not None:
            config[field] = value
    if args.env is not None:
        config["Environment"] = {"Variables": _environment(args.env)}
    return config


def _wait_until_ready(client: KilnClient, name: str) -> dict[str, Any]:
    """Poll until the function is neither Pending nor InProgress (boto3's waiters do the same)."""
    deadline = time.monotonic() + READY_WAIT_SECONDS
    while True:
        config = client.get_configuration(name)
        busy = config.get("State") == "Pending" or config.get("LastUpdateStatus") == "InProgress"
        if not busy or time.monotonic() > deadline:
            return config
        time.sleep(0.2)


def _describe(verb: str, config: dict[str, Any]) -> None:
    print(f"{verb} {config.get('FunctionName')}: {config.get('Runtime')}, handler "
          f"{config.get('Handler')}, {config.get('MemorySize')} MB, "
          f"{config.get('Timeout')} s timeout, code {config.get('CodeSize')} bytes")
    print(f"  {config.get('FunctionArn')}")
    reason = config.get("StateReason") or config.get("LastUpdateStatusReason")
    if config.get("State") == "Failed" or config.get("LastUpdateStatus") == "Failed":
        print(f"  warning: {reason or 'the function is in a Failed state'}", file=sys.stderr)


# -- function commands ---------------------------------------------------------------------------


def _create(args: argparse.Namespace) -> int:
    client = _client(args)
    code = _code(args)
    assert code is not None, "argparse requires --dir or --zip"
    body: dict[str, Any] = {
        "FunctionName": args.name,
        "PackageType": "Zip",
        "Code": {"ZipFile": base64.b64encode(code).decode()},
        **_configuration(args),
    }
    client.create_function(body)
    _describe("created", _wait_until_ready(client, args.name))
    return EXIT_OK


def _update(args: argparse.Namespace) -> int:
    client = _client(args)
    code = _code(args)
    config = _configuration(args)
    if code is None and not config:
        raise UsageError("nothing to update: give --dir or --zip and/or configuration flags "
                         "(see kiln update --help)")
    if code is not None:
        client.update_code(args.name, code)
        _wait_until_ready(client, args.name)
    if config:
        client.update_configuration(args.name, config)
    _describe("updated", _wait_until_ready(client, args.name))
    return EXIT_OK


def _read_payload(args: argparse.Namespace) -> bytes:
    sources = [s for s in (args.payload is not None, args.payload_file is not None,
                           args.stdin is not None) if s]
    if len(sources) > 1:
        raise UsageError("give the payload once: --payload, --payload-file or -")
    if args.stdin == "-" or args.payload == "-" or args.payload_file == Path("-"):
        payload: bytes = sys.stdin.buffer.read()
    elif args.payload is not None:
        payload = args.payload.encode()
    elif args.payload_file is not None:
        try:
            payload = args.payload_file.read_bytes()
        except OSError as exc:
            raise UsageError(f"--payload-file {args.payload_file}: "
                             f"{exc.strerror or exc}") from None
    else:
        payload = b"{}"
    if payload.strip():
        try:
            json.loads(payload)
        except (ValueError, UnicodeDecodeError) as exc:
            raise UsageError(f"the payload is not valid JSON: {exc}") from None
    return payload


def _invoke(args: argparse.Namespace) -> int:
    payload = _read_payload(args)
    client = _client(args)
    if args.event:
        queued = client.invoke(args.name, payload, "Event")
        print(f"queued (HTTP {queued.status}), request id {queued.request_id}", file=sys.stderr)
        return EXIT_OK
    result = client.invoke(args.name, payload, log_tail=not args.quiet)
    report: list[str] = []
    if result.log_result and not args.quiet:
        lines = _readable(result.log_result).splitlines()
        report = [line for line in lines if line.startswith("REPORT ")]
        for line in lines:
            if not line.startswith("REPORT "):
                print(line, file=sys.stderr)
        sys.stderr.flush()
    body = result.payload
    sys.stdout.buffer.write(body if body.endswith(b"\n") else body + b"\n")
    sys.stdout.flush()
    for line in report:
        print(line.rstrip("\t"), file=sys.stderr)
    if result.function_error:
        print(f"kiln: function error ({result.function_error}): {_error_summary(body)}",
              file=sys.stderr)
        return EXIT_FUNCTION_ERROR
    return EXIT_OK


def _readable(text: str) -> str:
    """Log text for people: a log event's inner line breaks (\\r, as Lambda stores them) shown as
    line breaks."""
    return text.replace("\r\n", "\n").replace("\r", "\n")


def _error_summary(body: bytes) -> str:
    try:
        error = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        return body.decode("utf-8", errors="replace")[:200]
    if not isinstance(error, dict):
        return str(error)[:200]
    return f"{error.get('errorType', 'Error')}: {error.get('errorMessage', '')}"


def _last_modified(value: str) -> str:
    try:
        parsed = datetime.strptime(value, "%Y-%m-%dT%H:%M:%S.%f%z")
    except ValueError:
        return value
    return parsed.strftime("%Y-%m-%d %H:%M:%S %Z").replace("UTC+00:00", "UTC")


def _list(args: argparse.Namespace) -> int:
    functions = sorted(_client(args).list_functions(), key=lambda f: str(f.get("FunctionName")))
    if not functions:
        print("no functions", file=sys.stderr)
        return EXIT_OK
    rows = [("NAME", "RUNTIME", "MEMORY", "TIMEOUT", "LAST MODIFIED")]
    for config in functions:
        rows.append((str(config.get("FunctionName", "")), str(config.get("Runtime", "-")),
                     f"{config.get('MemorySize', '?')} MB", f"{config.get('Timeout', '?')} s",
                     _last_modified(str(config.get("LastModified", "")))))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        print("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True))
              .rstrip())
    return EXIT_OK


def _logs(args: argparse.Namespace) -> int:
    client = _client(args)
    offset = 0
    try:
        while True:
            text, next_offset = client.read_logs(args.name, offset)
            if next_offset < offset:  # the log was removed and started again
                offset = 0
                continue
            if text:
                sys.stdout.write(_readable(text))
                sys.stdout.flush()
            offset = next_offset
            if not text:
                if not args.follow:
                    return EXIT_OK
                time.sleep(LOG_POLL_SECONDS)
    except KeyboardInterrupt:
        return EXIT_OK


def _delete(args: argparse.Namespace) -> int:
    _client(args).delete_function(args.name)
    print(f"deleted {args.name}")
    return EXIT_OK


# -- the parser ---------------------------------------------------------------------------------


def _command(commands: Any, name: str, help_text: str, description: str,
             epilog: str = "", parents: list[argparse.ArgumentParser] | None = None
             ) -> argparse.ArgumentParser:
    parser: argparse.ArgumentParser = commands.add_parser(
        name, help=help_text, description=description, epilog=epilog, parents=parents or [],
        formatter_class=argparse.RawDescriptionHelpFormatter)
    return parser


def _add_code_flags(parser: argparse.ArgumentParser, required: bool) -> None:
    group = parser.add_mutually_exclusive_group(required=required)
    group.add_argument("--dir", type=Path, metavar="DIR",
                       help="zip this directory's contents (file modes kept, so an executable "
                            "'bootstrap' stays executable)")
    group.add_argument("--zip", type=Path, metavar="FILE", help="upload this zip file as is")


def _add_config_flags(parser: argparse.ArgumentParser, creating: bool) -> None:
    parser.add_argument("--runtime", required=creating, metavar="RUNTIME",
                        help="python3.x, nodejs20.x/nodejs22.x, provided.al2023, ...")
    parser.add_argument("--handler", required=creating, metavar="HANDLER",
                        help="module.function, e.g. app.handler")
    parser.add_argument("--timeout", type=int, metavar="SECONDS",
                        help="timeout in seconds, 1-900" + (" (default 3)" if creating else ""))
    parser.add_argument("--memory", type=int, metavar="MB",
                        help="memory size in MB, 128-10240" + (" (default 128)" if creating
                                                                else ""))
    parser.add_argument("--env", action="append", metavar="KEY=VALUE",
                        help="an environment variable; repeat for more"
                             + ("" if creating else " (replaces ALL existing variables)"))
    parser.add_argument("--role", default=DEFAULT_ROLE if creating else None, metavar="ARN",
                        help="execution role ARN (stored, not enforced)"
                             + (f"; default {DEFAULT_ROLE}" if creating else ""))
    parser.add_argument("--description", metavar="TEXT", help="a description")


def _add_vmm(commands: Any) -> None:
    from kiln.vmm.monitor import build_parser as monitor_parser

    vmm = commands.add_parser("vmm", help="microVM monitors speaking Firecracker's API")
    sub = vmm.add_subparsers(dest="vmm_command", metavar="SUBCOMMAND", required=True)
    run = sub.add_parser("run", help="run one microVM monitor (as python -m kiln.vmm)")
    monitor_parser(run).set_defaults(func=_vmm_run)
    sweep = sub.add_parser("sweep", help="kill monitors left under BASE_DIR and remove their "
                                         "sockets, directories and cgroups; prints their ids")
    sweep.add_argument("base_dir", type=Path, metavar="BASE_DIR")
    sweep.set_defaults(func=_vmm_sweep)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="kiln", description="Kiln: a self-hosted, AWS Lambda-compatible endpoint.",
        epilog="Function commands reach the endpoint given by --endpoint, $KILN_ENDPOINT or "
               f"{DEFAULT_ENDPOINT}.\nExit codes: 0 ok, 1 function error, 2 usage error, "
               "3 API error or Kiln unreachable.\nRun 'kiln COMMAND --help' for a command's "
               "options.",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--endpoint", metavar="URL", help="Kiln's URL (function commands)")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    serve = commands.add_parser("serve", help="start the endpoint (every API on one port)")
    serve.add_argument("--host", help="address to listen on (default 127.0.0.1)")
    serve.add_argument("--port", type=int, help="port to listen on (default 8900)")
    serve.add_argument("--data-dir", type=Path, help="state directory "
                       "(default ~/.local/share/kiln)")
    serve.add_argument("--alb-target", action="append", metavar="PORT=FUNCTION[,multi]",
                       help="an ALB-style listener on PORT for FUNCTION (repeatable; options "
                       "',multi' and ',health=/PATH'; see `kiln settings`: alb_targets)")
    serve.set_defaults(func=_serve)
    settings = commands.add_parser("settings", help="print every setting with its value")
    settings.set_defaults(func=_settings)
    _add_vmm(commands)
    microvm = commands.add_parser("microvm", help="microVM sandbox backend tools")
    microvm_commands = microvm.add_subparsers(dest="microvm_command", metavar="COMMAND",
                                              required=True)
    build_image = microvm_commands.add_parser(
        "build-image", help="build the guest image (kernel, initramfs, root) from Debian "
                            "packages; cached under the data dir, rebuilt when inputs change")
    build_image.add_argument("--data-dir", type=Path, help="state directory "
                             "(default ~/.local/share/kiln)")
    build_image.set_defaults(func=_microvm_build_image)

    remote = argparse.ArgumentParser(add_help=False)
    remote.add_argument("--endpoint", metavar="URL", default=argparse.SUPPRESS,
                        help=f"Kiln's URL (default $KILN_ENDPOINT or {DEFAULT_ENDPOINT})")

    create = _command(
        commands, "create", "create a function from a directory or a zip",
        "Create a function (CreateFunction). The code comes from a directory, zipped here with "
        "its\nfile modes, or from a zip file.",
        "examples:\n"
        "  kiln create hello --runtime python3.11 --handler app.handler --dir ./hello\n"
        "  kiln create api --runtime nodejs20.x --handler index.handler --zip api.zip \\\n"
        "      --timeout 30 --memory 512 --env STAGE=dev --env DEBUG=1", [remote])
    create.add_argument("name", metavar="NAME", help="function name")
    _add_code_flags(create, required=True)
    _add_config_flags(create, creating=True)
    create.set_defaults(func=_create)

    update = _command(
        commands, "update", "update a function's code and/or configuration",
        "Update a function: new code (UpdateFunctionCode) from --dir or --zip, and/or the\n"
        "configuration flags given (UpdateFunctionConfiguration). Flags not given keep their\n"
        "current values; --env replaces the whole set of environment variables.",
        "examples:\n"
        "  kiln update hello --dir ./hello\n"
        "  kiln update hello --timeout 10 --env GREETING=hi", [remote])
    update.add_argument("name", metavar="NAME", help="function name or ARN")
    _add_code_flags(update, required=False)
    _add_config_flags(update, creating=False)
    update.set_defaults(func=_update)

    invoke = _command(
        commands, "invoke", "invoke a function and print its result",
        "Invoke a function synchronously (Invoke, LogType Tail). The function's log lines go to\n"
        "stderr, then the result body to stdout, then the REPORT line to stderr.\n"
        "Exit status: 0 success, 1 the function failed (the error body is still printed),\n"
        "3 the invoke was refused (e.g. ResourceNotFoundException).",
        "examples:\n"
        "  kiln invoke hello --payload '{\"name\": \"kiln\"}'\n"
        "  kiln invoke hello --payload-file event.json\n"
        "  echo '{}' | kiln invoke hello -\n"
        "  kiln invoke hello --event            # asynchronous; prints the request id", [remote])
    invoke.add_argument("name", metavar="NAME", help="function name or ARN (name:qualifier ok)")
    invoke.add_argument("stdin", nargs="?", choices=["-"], metavar="-",
                        help="read the payload from stdin")
    invoke.add_argument("--payload", metavar="JSON",
                        help="the event as JSON text ('-' reads stdin); default {}")
    invoke.add_argument("--payload-file", type=Path, metavar="FILE",
                        help="read the event from FILE ('-' reads stdin)")
    invoke.add_argument("--event", action="store_true",
                        help="invoke asynchronously (InvocationType Event) and return at once")
    invoke.add_argument("-q", "--quiet", action="store_true",
                        help="print only the result (no logs, no REPORT line)")
    invoke.set_defaults(func=_invoke)

    listing = _command(
        commands, "list", "list functions",
        "List every function (all pages of ListFunctions) as a table: name, runtime, memory,\n"
        "timeout, last modified.", parents=[remote])
    listing.set_defaults(func=_list)

    logs = _command(
        commands, "logs", "print a function's logs (--follow to keep watching)",
        "Print the stored log of a function: for each invocation START, the function's output,\n"
        "END and the REPORT line, as Lambda writes them.",
        "examples:\n"
        "  kiln logs hello\n"
        "  kiln logs hello --follow     # keep printing new lines until Ctrl-C", [remote])
    logs.add_argument("name", metavar="NAME", help="function name or ARN")
    logs.add_argument("-f", "--follow", action="store_true",
                      help=f"keep polling for new lines (every {LOG_POLL_SECONDS} s)")
    logs.set_defaults(func=_logs)

    delete = _command(commands, "delete", "delete a function",
                      "Delete a function (DeleteFunction) and its code.", parents=[remote])
    delete.add_argument("name", metavar="NAME", help="function name or ARN")
    delete.set_defaults(func=_delete)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        result: int = args.func(args)
    except UsageError as exc:
        print(f"kiln {args.command}: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except ApiError as exc:
        print(f"kiln {args.command}: {exc.code}: {exc.message}", file=sys.stderr)
        return EXIT_API_ERROR
    except ConnectionFailed as exc:
        print(f"kiln {args.command}: {exc}", file=sys.stderr)
        return EXIT_API_ERROR
    except BrokenPipeError:
        # The reader went away (e.g. `kiln logs fn | head`): not an error.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return EXIT_OK
    return result


if __name__ == "__main__":
    sys.exit(main())
