"""A stand-in for the ``firecracker`` binary (none is installable here), to test that the
monitor passes the API through: it records each request to ``$FAKE_FC_LOG`` and answers like
Firecracker; ``SendCtrlAltDel`` makes it exit, as a guest reboot ends Firecracker."""

import argparse
import json
import os
import socketserver
import sys
from http.server import BaseHTTPRequestHandler

args = argparse.ArgumentParser()
args.add_argument("--api-sock", required=True)
args.add_argument("--id", required=True)
options = args.parse_args()


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def _answer(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
        with open(os.environ["FAKE_FC_LOG"], "a") as log:
            log.write(json.dumps([self.command, self.path, body.decode()]) + "\n")
        if self.command == "GET" and self.path == "/":
            self._send(200, {"app_name": "Firecracker", "id": options.id,
                             "state": "Not started", "vmm_version": "1.16.0"})
        elif self.path == "/machine-config" and self.command == "PUT":
            self._send(204, None)
        elif self.path == "/actions" and b"SendCtrlAltDel" in body:
            self._send(204, None)
            self.server.shutdown_request(self.request)
            os._exit(0)
        else:
            self._send(400, {"fault_message": f"fake: {self.command} {self.path}"})

    do_GET = do_PUT = do_PATCH = _answer

    def _send(self, status: int, value: object) -> None:
        self.send_response(status)
        data = b"" if value is None else json.dumps(value).encode()
        if data:
            self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        if data:  # the client may be gone once it has read an empty answer's headers
            self.wfile.write(data)

    def address_string(self) -> str:
        return "unix"

    def log_message(self, *_args: object) -> None:
        pass


socketserver.UnixStreamServer.allow_reuse_address = True
with socketserver.UnixStreamServer(options.api_sock, Handler) as server:
    sys.stdout.flush()
    server.serve_forever()
