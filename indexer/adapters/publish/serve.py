"""`phylolm view`: the publish folder served read-only over HTTP on the loopback interface.

Only GET and HEAD are answered (any other method gets 405); paths are resolved inside the
folder and a path that leaves it (``..``, a symbolic link pointing out) is refused with 404;
no directory listings. The server binds to 127.0.0.1 only: it is for the person at this
machine, not a web server.
"""
from __future__ import annotations

import threading
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from indexer.errors import PhylolmError

LOOPBACK = "127.0.0.1"


class _ReadOnlyHandler(SimpleHTTPRequestHandler):
    """GET/HEAD of files inside ``directory``; everything else refused."""

    root: Path

    def __init__(self, *args, directory: str, **kwargs):
        self.root = Path(directory).resolve()
        super().__init__(*args, directory=directory, **kwargs)

    def send_head(self):
        path = Path(self.translate_path(self.path))
        try:
            real = path.resolve()
        except OSError:
            real = None
        if real is None or not real.is_relative_to(self.root):
            self.send_error(404, "not found")
            return None
        if real.is_dir():
            if (real / "index.html").is_file() and self.path.split("?")[0].endswith("/"):
                return super().send_head()
            self.send_error(404, "no directory listings")
            return None
        return super().send_head()

    def list_directory(self, path):  # never reached for folders without index.html
        self.send_error(404, "no directory listings")
        return None

    def _refuse(self):
        self.send_response(405, "read-only")
        self.send_header("Allow", "GET, HEAD")
        self.send_header("Content-Length", "0")
        self.end_headers()

    do_POST = do_PUT = do_DELETE = do_PATCH = do_OPTIONS = _refuse

    def end_headers(self):
        self.send_header("Cache-Control", "no-store")
        self.send_header("X-Content-Type-Options", "nosniff")
        super().end_headers()

    def log_message(self, format, *args):  # quiet: the command prints the URL, not every request
        pass


def make_server(directory: str | Path, port: int = 0) -> ThreadingHTTPServer:
    """A server of ``directory`` on 127.0.0.1:``port`` (0: a free port), not yet serving.
    ``server.server_address[1]`` is the port it got."""
    folder = Path(directory)
    if not folder.is_dir():
        raise PhylolmError(f"{folder} is not a folder; run `phylolm export {folder}` first")
    if not 0 <= port <= 65535:
        raise PhylolmError(f"port {port} is not between 0 and 65535")
    try:
        return ThreadingHTTPServer((LOOPBACK, port), partial(_ReadOnlyHandler, directory=str(folder.resolve())))
    except OSError as e:
        raise PhylolmError(f"cannot listen on {LOOPBACK}:{port}: {e.strerror or e}") from None


def page_url(server: ThreadingHTTPServer, page: str = "index.html") -> str:
    host, port = server.server_address[:2]
    return f"http://{host}:{port}/{page}"


def serve_in_thread(directory: str | Path, port: int = 0) -> tuple[ThreadingHTTPServer, threading.Thread]:
    """Start serving in a daemon thread (tests, the demo); ``server.shutdown()`` stops it."""
    server = make_server(directory, port)
    thread = threading.Thread(target=server.serve_forever, name="phylolm-view", daemon=True)
    thread.start()
    return server, thread
