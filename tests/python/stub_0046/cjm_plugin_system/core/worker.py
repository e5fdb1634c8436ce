"""A stand-in for the original 0.0.46 / cjm-substrate worker, for launch tests only.

It takes the real worker's command line (--module, --class, --fd or --port, --ppid,
--adapters), serves the few endpoints the host needs to load a plugin on the inherited socket,
and answers every /execute with its own argv and environment, so a test can check what the
host launched. It imports nothing of the plugin.
"""
import argparse
import json
import os
import socket
import sys
from http.server import BaseHTTPRequestHandler, HTTPServer


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--module", required=True)
    parser.add_argument("--class", dest="class_name", required=True)
    parser.add_argument("--adapters", default="")
    parser.add_argument("--fd", type=int, default=None)
    parser.add_argument("--port", type=int, default=None)
    parser.add_argument("--ppid", type=int, default=None)
    args = parser.parse_args()

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *a):
            pass

        def reply(self, body, code=200):
            data = json.dumps(body).encode()
            self.send_response(code)
            self.send_header("content-type", "application/json")
            self.send_header("content-length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_GET(self):
            if self.path == "/health":
                self.reply({"status": "running", "pid": os.getpid(),
                            "name": args.class_name, "version": "stub"})
            elif self.path == "/config_schema":
                self.reply({"type": "object", "properties": {}})
            else:
                self.reply({})

        def do_POST(self):
            length = int(self.headers.get("content-length") or 0)
            if length:
                self.rfile.read(length)
            if self.path.startswith("/execute"):
                self.reply({"argv": sys.argv[1:], "env": dict(os.environ),
                            "worker": sys.modules["__main__"].__spec__.name})
            else:
                self.reply({"status": "ok"})

    server = HTTPServer(("127.0.0.1", 0), Handler, bind_and_activate=False)
    server.socket.close()
    if args.fd is not None:
        server.socket = socket.socket(fileno=args.fd)
    else:
        server.socket = socket.create_server(("127.0.0.1", args.port))
    server.serve_forever()


if __name__ == "__main__":
    main()
