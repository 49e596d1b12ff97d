"""The app's front door: which HTTP requests reach Gradio at all, and how its files come back.

Bound to loopback, only this machine can connect, but any web page open in its browser can still
send requests there. So, on every request:

- the Host header must name this machine (loopback only): a page whose own name resolves to
  127.0.0.1 (DNS rebinding) is refused;
- a request from another site is refused: an Origin that is not this app's, or a browser's
  Sec-Fetch-Site saying cross-site (a link from elsewhere may still open the page);
- an upload is refused past a quota on what waits in Gradio's upload folder, so repeated uploads
  cannot fill the disk;
- a file Gradio serves is downloaded, never shown inline, unless it is audio or a plain image: an
  uploaded .html or .svg would otherwise run as a page of this app.

Refusals are plain text in words. The check of Origin and Host compares names and ports only.
"""
from __future__ import annotations

import os
from pathlib import Path
from urllib.parse import urlsplit

LOOPBACK_NAMES = ("127.0.0.1", "localhost", "::1")
INLINE_TYPES = ("audio/", "image/png", "image/jpeg", "image/gif", "image/webp")  # never run as a page
FILE_ROUTES = ("/file=", "/file/")
MB = 1024 * 1024


def is_loopback(host: str) -> bool:
    """'127.0.0.1', 'localhost', '::1' and '[::1]' (as typed for --host) are this machine only."""
    return host.strip().strip("[]").lower() in LOOPBACK_NAMES


def split_host(value: str, default_port: int | None = None) -> tuple[str, int | None]:
    """('::1', 7860) from '[::1]:7860', ('localhost', 80) from 'localhost'; ('', None) when unreadable."""
    try:
        parts = urlsplit("//" + value.strip())
        return (parts.hostname or "", parts.port or default_port)
    except ValueError:
        return "", None


class RequestGuard:
    """ASGI middleware in front of Gradio (see the module docstring)."""

    def __init__(self, app, loopback_only: bool = True, upload_dir: str | os.PathLike | None = None,
                 upload_quota: int | None = None):
        self.app = app
        self.loopback_only = loopback_only
        self.upload_dir = Path(upload_dir) if upload_dir else None
        self.upload_quota = upload_quota
        self._waiting: int | None = None  # bytes in the upload folder at the last count, plus uploads since

    async def __call__(self, scope, receive, send):
        if scope["type"] not in ("http", "websocket"):
            return await self.app(scope, receive, send)
        from starlette.datastructures import Headers

        headers = Headers(scope=scope)
        secure = scope.get("scheme") in ("https", "wss")
        host, port = split_host(headers.get("host", ""), 443 if secure else 80)
        if self.loopback_only and host not in LOOPBACK_NAMES:
            return await _refuse(scope, receive, send, 400, "Invalid host header")
        if _cross_site(scope, headers, host, port):
            return await _refuse(scope, receive, send, 403,
                                 "Refused: this request came from another web site. Open Distill's own page instead.")
        if scope["type"] == "http" and self.upload_quota and _is_upload(scope):
            refusal = await self._quota_refusal(headers)
            if refusal:
                return await _refuse(scope, receive, send, *refusal)
        if scope["type"] == "http" and any(r in scope.get("path", "") for r in FILE_ROUTES):
            send = _download_unless_inline(send)
        await self.app(scope, receive, send)

    async def _quota_refusal(self, headers) -> tuple[int, str] | None:
        length = headers.get("content-length", "")
        if not length.isdigit():
            return 411, "Uploads must say their size (Content-Length)."
        size = int(length)
        if self._waiting is None or self._waiting + size > self.upload_quota:  # count again before refusing
            import anyio

            self._waiting = await anyio.to_thread.run_sync(_folder_bytes, self.upload_dir)
        if self._waiting + size > self.upload_quota:
            return 413, (f"Distill's upload space in the workspace is full: {self._waiting / MB:.1f} MB of uploads are "
                         f"waiting and this one is {size / MB:.1f} MB (the quota is {self.upload_quota / MB:.0f} MB). "
                         f"Uploads are cleared a day after they arrive; to make room sooner, close the app and empty "
                         f"{self.upload_dir}, or start it with a larger --upload-quota-mb.")
        self._waiting += size
        return None


def _cross_site(scope, headers, host: str, port: int | None) -> bool:
    """True for a request another site made: an Origin other than this app's, or (browsers that send
    no Origin, e.g. for images) Sec-Fetch-Site saying so, except a plain link that opens the page."""
    origin = headers.get("origin")
    if origin is not None:
        try:
            o = urlsplit(origin)
            o_port = o.port or (443 if o.scheme == "https" else 80)
        except ValueError:
            return True
        return o.scheme not in ("http", "https") or (o.hostname or "", o_port) != (host, port)
    if headers.get("sec-fetch-site") in ("cross-site", "same-site"):
        return not (headers.get("sec-fetch-mode") == "navigate" and scope.get("method") in ("GET", "HEAD"))
    return False


def _is_upload(scope) -> bool:
    return scope.get("method") == "POST" and scope.get("path", "").rstrip("/").endswith("/upload")


def _folder_bytes(folder: Path | None) -> int:
    total = 0
    if folder is None or not folder.is_dir():
        return 0
    for dirpath, _, files in os.walk(folder):
        for name in files:
            try:
                total += os.lstat(os.path.join(dirpath, name)).st_size
            except OSError:  # removed meanwhile (Gradio's cleanup)
                pass
    return total


def _download_unless_inline(send):
    async def wrapped(message):
        if message["type"] == "http.response.start":
            from starlette.datastructures import MutableHeaders

            h = MutableHeaders(scope=message)
            ctype = h.get("content-type", "").split(";")[0].strip().lower()
            if not ctype.startswith(INLINE_TYPES):
                disposition = h.get("content-disposition", "")
                if disposition.startswith("inline"):  # keep the file name Gradio gave
                    disposition = "attachment" + disposition[len("inline"):]
                h["content-type"] = "application/octet-stream"
                h["content-disposition"] = disposition if disposition.startswith("attachment") else "attachment"
            h["x-content-type-options"] = "nosniff"
        await send(message)

    return wrapped


async def _refuse(scope, receive, send, status: int, text: str) -> None:
    if scope["type"] == "websocket":
        await send({"type": "websocket.close", "code": 1008, "reason": text[:120]})
        return
    from starlette.responses import PlainTextResponse

    await PlainTextResponse(text, status_code=status)(scope, receive, send)


def teach_gradio_ipv6_loopback() -> None:
    """Gradio's CORS middleware reflects any site's Origin, with credentials, unless the Host is one of
    its localhost names, a list without ::1: on [::1] every site would be let in. Add ::1 to it.
    (RequestGuard refuses those requests anyway; this keeps the refusals free of CORS headers.)"""
    from gradio import route_utils

    cls = route_utils.CustomCORSMiddleware
    if getattr(cls, "_distill_ipv6", False):
        return
    original = cls.__init__

    def __init__(self, *args, **kwargs):
        original(self, *args, **kwargs)
        if "::1" not in self.localhost_aliases:
            self.localhost_aliases.append("::1")

    cls.__init__ = __init__
    cls._distill_ipv6 = True
