"""Stand-ins for the outside world of first-start provisioning (CI has no internet).

A loopback HTTP server (127.0.0.1 only) serving files from memory or disk, with fault routes
(HTTP 500, a body cut short of its Content-Length), plus builders for the files it serves: the
dataset as Kaggle serves it (a .zip whose top folder is `Covid19-dataset/`, made from the real
images in ../shared, in a temp folder, never committed) and a synthetic CheXNet weights file in
the published Keras-2 layout.
"""

from __future__ import annotations

import http.server
import threading
import zipfile
from collections import Counter
from pathlib import Path

from covid_xray import config

HOST = "127.0.0.1"


class LoopbackServer:
    """Serves `routes` ({"/path": Path or bytes}) on 127.0.0.1; `hits` counts GETs per path.

    Special routes: `faults={"/path": 500}` answers that HTTP status; `truncated={"/path": data}`
    announces len(data) bytes and sends half of them, then closes.
    """

    def __init__(self, routes=None, faults=None, truncated=None):
        self.routes = dict(routes or {})
        self.faults = dict(faults or {})
        self.truncated = dict(truncated or {})
        self.hits: Counter = Counter()
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):  # noqa: N802 - http.server's name
                server.hits[self.path] += 1
                if self.path in server.faults:
                    self.send_error(server.faults[self.path])
                    return
                if self.path in server.truncated:
                    data = server.truncated[self.path]
                    self.send_response(200)
                    self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    self.wfile.write(data[: len(data) // 2])
                    self.close_connection = True
                    return
                body = server.routes.get(self.path)
                if body is None:
                    self.send_error(404)
                    return
                data = body.read_bytes() if isinstance(body, Path) else body
                self.send_response(200)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args):  # quiet
                pass

        self.httpd = http.server.ThreadingHTTPServer((HOST, 0), Handler)
        self.port = self.httpd.server_address[1]
        self._thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def url(self, path: str) -> str:
        return f"http://{HOST}:{self.port}{path}"

    def __enter__(self) -> LoopbackServer:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


def make_dataset_zip(data_dir: Path, path: Path, top: str = config.DATASET_FOLDER, drop: int = 0) -> Path:
    """Zip the dataset at `data_dir` the way Kaggle serves it (`<top>/train/...`, `<top>/test/...`).

    `drop` leaves out that many files (a wrong-count archive); images are stored, not recompressed.
    """
    files = sorted(p for p in data_dir.rglob("*") if p.is_file() and p.parts[-3] in config.SPLITS)
    files = files[drop:]
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_STORED) as zf:
        for file in files:
            zf.write(file, f"{top}/{file.relative_to(data_dir).as_posix()}")
    return path


def make_chexnet_weights(path: Path, seed: int = 0) -> Path:
    """A synthetic CheXNet weights file in the published Keras-2 HDF5 layout."""
    from tests.chexnet_fixtures import write_keras2_chexnet_weights

    write_keras2_chexnet_weights(path, seed=seed)
    return path
