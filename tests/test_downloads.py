"""The one download loop (`covid_xray.downloads`) against a loopback server: bytes and sha256,
progress, and the three ways it fails (HTTP error, cut-short body, unreachable host)."""

from __future__ import annotations

import hashlib

import pytest

from covid_xray.downloads import DownloadError, download
from tests.standins import LoopbackServer

BODY = bytes(range(256)) * 5000  # 1.28 MB: more than one read chunk


@pytest.fixture(scope="module")
def server():
    with LoopbackServer({"/ok.bin": BODY}, faults={"/error.bin": 503}, truncated={"/cut.bin": BODY}) as srv:
        yield srv


def test_download_writes_the_bytes_and_returns_their_sha256(server, tmp_path):
    seen = []
    digest = download(server.url("/ok.bin"), tmp_path / "ok.part", progress=lambda d, t: seen.append((d, t)))
    assert (tmp_path / "ok.part").read_bytes() == BODY
    assert digest == hashlib.sha256(BODY).hexdigest()
    assert seen[-1] == (len(BODY), len(BODY)) and len(seen) >= 2


@pytest.mark.parametrize(
    ("path", "message"),
    [("/error.bin", "HTTP 503"), ("/cut.bin", "cut short"), ("/missing.bin", "HTTP 404")],
)
def test_download_failures_say_why(server, tmp_path, path, message):
    with pytest.raises(DownloadError, match=message):
        download(server.url(path), tmp_path / "x.part")


def test_an_unreachable_host_is_a_download_error(tmp_path):
    with pytest.raises(DownloadError, match="the download failed"):
        download("http://127.0.0.1:9/none.bin", tmp_path / "x.part", timeout=2)
