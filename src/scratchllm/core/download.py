"""The one downloader: files fetched over HTTP(S) into scratchllm's cache, checked, then moved into place.

Used for GPT-2's vocabulary, Hugging Face model files and the SMS spam collection. A download goes
to a temporary file beside its destination with a progress bar; its size and SHA-256 are checked
(given by the caller, or announced by the server: the Hugging Face hub sends both on the redirect
to its storage), and only then is it renamed into place, so an interrupted or wrong download never
leaves a file where a good one is expected.
"""

from __future__ import annotations

import hashlib
import http.client
import os
import re
import tempfile
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from scratchllm.errors import ScratchLLMError


def cache_dir() -> Path:
    """scratchllm's download cache: $SCRATCHLLM_CACHE, else ~/.cache/scratchllm."""
    root = os.environ.get("SCRATCHLLM_CACHE")
    return Path(root).expanduser() if root else Path.home() / ".cache" / "scratchllm"


def sha256_file(path: str | os.PathLike[str]) -> str:
    """Hex SHA-256 of a file, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


class _RecordRedirects(urllib.request.HTTPRedirectHandler):
    """Keeps the headers of each redirect: the hub puts a file's SHA-256 (X-Linked-Etag) and size
    (X-Linked-Size) on the redirect to its storage, not on the final response."""

    def __init__(self) -> None:
        self.headers: list[Any] = []

    def redirect_request(self, req, fp, code, msg, headers, newurl):
        self.headers.append(headers)
        return super().redirect_request(req, fp, code, msg, headers, newurl)


def _header(headers_list: list[Any], name: str) -> str | None:
    for headers in headers_list:
        value = headers.get(name) if headers is not None else None
        if value:
            return value.strip().removeprefix("W/").strip('"')
    return None


def download_file(
    url: str,
    dest: str | os.PathLike[str],
    sha256: str | None = None,
    size: int | None = None,
    progress: bool = True,
    missing_ok: bool = False,
) -> Path | None:
    """Fetch `url` to `dest` with a progress bar, checking its size and SHA-256, then move it into place.

    The expected SHA-256 is `sha256` if given, else the hub's X-Linked-Etag header when it is a
    SHA-256; the expected size is `size`, else X-Linked-Size, else Content-Length. Data goes to a
    temporary file beside `dest`, so a failed or interrupted download never leaves a file there.
    missing_ok: return None when the server has no such file (HTTP 404; a missing file:// path)
    instead of raising, for files a caller can do without.
    """
    from tqdm.auto import tqdm

    dest = Path(dest)
    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp_name = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".part", dir=dest.parent)
    except OSError as exc:
        raise ScratchLLMError(f"{dest.parent}: cannot create ({exc.strerror or exc})") from None
    tmp = Path(tmp_name)
    recorder = _RecordRedirects()
    opener = urllib.request.build_opener(recorder)
    request = urllib.request.Request(url, headers={"User-Agent": "scratchllm"})
    digest = hashlib.sha256()
    received = 0
    try:
        with os.fdopen(fd, "wb") as out, opener.open(request, timeout=60) as response:
            headers = [*recorder.headers, response.headers]
            linked = _header(headers, "X-Linked-Etag")
            if sha256 is None and linked and re.fullmatch(r"[0-9a-fA-F]{64}", linked):
                sha256 = linked
            if size is None:
                length = _header(headers, "X-Linked-Size") or _header([response.headers], "Content-Length")
                size = int(length) if length and length.isdigit() else None
            with tqdm(total=size, unit="B", unit_scale=True, unit_divisor=1024, desc=dest.name,
                      disable=not progress) as bar:
                while block := response.read(1 << 20):
                    out.write(block)
                    digest.update(block)
                    received += len(block)
                    bar.update(len(block))
            out.flush()
            os.fsync(out.fileno())
        if size is not None and received != size:
            raise ScratchLLMError(f"download {url}: got {received} bytes, expected {size} (interrupted?)")
        if sha256 is not None and digest.hexdigest() != sha256.lower():
            raise ScratchLLMError(f"download {url}: SHA-256 is {digest.hexdigest()}, expected {sha256.lower()}")
        os.replace(tmp, dest)
    except (urllib.error.URLError, http.client.HTTPException, OSError, ValueError) as exc:
        reason = getattr(exc, "reason", None) or exc
        not_found = isinstance(exc, urllib.error.URLError) and (
            getattr(exc, "code", None) == 404 or isinstance(reason, FileNotFoundError))
        if missing_ok and not_found:
            return None
        raise ScratchLLMError(f"download {url}: {reason}") from None
    finally:
        tmp.unlink(missing_ok=True)
    return dest

