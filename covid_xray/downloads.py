"""One download loop: a URL (http(s) or file://) into a file, with its sha256 and progress.

First-start provisioning and `python -m covid_xray.studies.weights fetch` both use it; callers
download into a `.part` file beside the target and move it into place only once checked.
"""

from __future__ import annotations

import hashlib
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path

DOWNLOAD_TIMEOUT_S = 60
_CHUNK = 1 << 20
ProgressFn = Callable[[float, float], None]  # (done, total) in bytes


class DownloadError(RuntimeError):
    """The download failed; the message says why in words for people (no traceback)."""


def download(
    url: str,
    dest: Path,
    *,
    progress: ProgressFn | None = None,
    timeout: float = DOWNLOAD_TIMEOUT_S,
    title: str = "download",
) -> str:
    """Download `url` (http(s) or file://) to `dest`, returning the file's sha256.

    A response shorter than its Content-Length (a broken connection) is an error.

    Raises:
        DownloadError: HTTP error, network error or truncated body (`dest` may hold a part:
            the caller removes it).
    """
    from tqdm import tqdm

    digest, received = hashlib.sha256(), 0
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response, open(dest, "wb") as out:
            total = int(response.headers.get("Content-Length") or 0)
            with tqdm(total=total or None, unit="B", unit_scale=True, desc=title, leave=False) as bar:
                while chunk := response.read(_CHUNK):
                    out.write(chunk)
                    digest.update(chunk)
                    received += len(chunk)
                    bar.update(len(chunk))
                    if progress:
                        progress(received, total)
    except urllib.error.HTTPError as exc:
        raise DownloadError(f"the server answered HTTP {exc.code} ({exc.reason})") from exc
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        raise DownloadError(f"the download failed ({reason})") from exc
    if total and received != total:
        raise DownloadError(f"the download was cut short ({received} of {total} bytes)")
    return digest.hexdigest()
