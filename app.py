"""Start Distill's web page on this machine.

    python app.py                       # http://127.0.0.1:7860, workspace ./workspace
    python app.py --port 8000 --workspace ~/distill-work --no-browser

Binds 127.0.0.1 unless told otherwise, never makes a share link, sends no analytics, and serves
files only from the workspace (and Gradio's upload cache, which lives inside it). One app per
workspace: a second one on the same folder is refused, so start-up recovery (runs left "running"
by a crash become "interrupted", temp files of killed writers are swept) never touches a live run.
"""
from __future__ import annotations

import argparse
import os
import sys
import threading
from pathlib import Path

LOCK_NAME = ".app.lock"


def _env_float(name: str, default: float) -> float:
    try:
        return float(os.environ.get(name, default))
    except ValueError:
        return default


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description="Distill: train a small generative model on your own sounds.")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=int, default=7860, help="port (default 7860)")
    p.add_argument("--workspace", default=os.environ.get("DISTILL_WORKSPACE", "./workspace"),
                   help="folder for datasets, runs and caches (default: $DISTILL_WORKSPACE or ./workspace)")
    p.add_argument("--no-browser", action="store_true", help="do not open a browser tab")
    p.add_argument("--max-file-mb", type=float, default=_env_float("DISTILL_MAX_FILE_MB", 500),
                   help="largest single upload in MB, enforced by the server (default 500, $DISTILL_MAX_FILE_MB)")
    p.add_argument("--max-upload-mb", type=float, default=_env_float("DISTILL_MAX_UPLOAD_MB", 4096),
                   help="largest upload in all, archives unpacked, in MB (default 4096, $DISTILL_MAX_UPLOAD_MB)")
    p.add_argument("--upload-quota-mb", type=float, default=_env_float("DISTILL_UPLOAD_QUOTA_MB", 8192),
                   help="most uploads kept waiting in the workspace, in MB; they are cleared after a day "
                        "(default 8192, $DISTILL_UPLOAD_QUOTA_MB)")
    return p.parse_args(argv)


def lock_workspace(workspace: Path):
    """Hold an exclusive lock on the workspace for the life of the process (released by the OS
    even on kill -9). Returns the open lock file, or None where locks are not available."""
    try:
        import fcntl
    except ImportError:  # Windows: no advisory locks; run one app per workspace by hand
        return None
    fh = open(workspace / LOCK_NAME, "a+")
    try:
        fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        fh.close()
        raise SystemExit(f"Another Distill app is already using the workspace {workspace}. "
                         "Close it first, or start this one with --workspace pointing at another folder.")
    return fh


def host_guard(host: str, upload_dir: str | os.PathLike | None = None, upload_quota: int | None = None) -> dict:
    """Launch kwargs that put `distill.app.guard.RequestGuard` in front of the app.

    Bound to loopback (127.0.0.1, localhost, ::1), only pages from this machine can reach the app,
    except through DNS rebinding: a web page whose own name resolves to 127.0.0.1 could then call
    the API and read the answers. The guard refuses a Host header that is not this machine's
    loopback name (not when the user chose to listen on the network), refuses requests another web
    site makes (any host), caps what waits in the upload folder and never serves an uploaded page
    inline."""
    from starlette.middleware import Middleware

    from distill.app.guard import RequestGuard, is_loopback, teach_gradio_ipv6_loopback

    loopback = is_loopback(host)
    if loopback:
        teach_gradio_ipv6_loopback()
    guard = Middleware(RequestGuard, loopback_only=loopback, upload_dir=upload_dir, upload_quota=upload_quota)
    return {"app_kwargs": {"middleware": [guard]}}


def _warm_up() -> None:
    """Import the heavy parts in the background so the first click does not wait for them."""
    try:
        import distill.generate  # noqa: F401
        import distill.pipeline  # noqa: F401
        import distill.training.vqvae_train  # noqa: F401
    except Exception:
        pass


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    workspace = Path(args.workspace).expanduser().resolve()
    workspace.mkdir(parents=True, exist_ok=True)
    lock = lock_workspace(workspace)  # noqa: F841 (held open until the process ends)
    # Set before gradio is imported: no analytics, uploads and temp files inside the workspace.
    os.environ["GRADIO_ANALYTICS_ENABLED"] = "False"
    os.environ.setdefault("GRADIO_TEMP_DIR", str(workspace / "tmp"))
    # Gradio also serves its examples cache (default: relative to the current folder): keep it inside too.
    os.environ.setdefault("GRADIO_EXAMPLES_CACHE", str(workspace / "tmp" / "examples"))
    os.environ.setdefault("MPLBACKEND", "Agg")
    os.environ.setdefault("DISTILL_CACHE", str(workspace / "cache"))
    from distill.app.guard import is_loopback

    if not is_loopback(args.host):
        print(f"Warning: listening on {args.host}: other machines on the network can reach this page.", file=sys.stderr)
    # Gradio wants an IPv6 address in brackets (it builds the page's URL from it).
    server_name = f"[{args.host}]" if ":" in args.host and not args.host.startswith("[") else args.host

    from distill.runs import recover_workspace

    recovered = recover_workspace(workspace)  # nothing can be running yet: we hold the workspace lock
    if recovered.get("interrupted") or recovered.get("temp_files_removed"):
        print(f"Recovered the workspace: {recovered['interrupted']} run(s) marked interrupted, "
              f"{recovered['temp_files_removed']} stale temp file(s) removed.", flush=True)

    threading.Thread(target=_warm_up, name="distill-warmup", daemon=True).start()
    from distill.app.ui import DistillApp, build_ui, launch_kwargs
    from distill.app.uploads import MB, UploadLimits

    limits = UploadLimits(max_file_bytes=max(1, int(args.max_file_mb * MB)),
                          max_total_bytes=max(1, int(args.max_upload_mb * MB)))
    app = DistillApp(workspace, limits=limits)
    demo = build_ui(workspace, app=app)
    print(f"Distill workspace: {workspace}", flush=True)
    from distill.app.service import upload_root

    demo.launch(server_name=server_name, server_port=args.port, inbrowser=not args.no_browser, **launch_kwargs(app),
                **host_guard(args.host, upload_root(), max(1, int(args.upload_quota_mb * MB))))


if __name__ == "__main__":
    main()
