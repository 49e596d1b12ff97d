"""Start Distill's web page on this machine.

    python app.py                       # http://127.0.0.1:7860, workspace ./workspace
    python app.py --port 8000 --workspace ~/distill-work --no-browser

Binds 127.0.0.1 unless told otherwise, never makes a share link, sends no analytics, and serves
files only from the workspace.
"""
from __future__ import annotations

import argparse
import os
import sys
import threading
from pathlib import Path


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description="Distill: train a small generative model on your own sounds.")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=int, default=7860, help="port (default 7860)")
    p.add_argument("--workspace", default=os.environ.get("DISTILL_WORKSPACE", "./workspace"),
                   help="folder for datasets, runs and caches (default: $DISTILL_WORKSPACE or ./workspace)")
    p.add_argument("--no-browser", action="store_true", help="do not open a browser tab")
    return p.parse_args(argv)


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
    # Set before gradio is imported: no analytics, uploads and temp files inside the workspace.
    os.environ["GRADIO_ANALYTICS_ENABLED"] = "False"
    os.environ.setdefault("GRADIO_TEMP_DIR", str(workspace / "tmp"))
    os.environ.setdefault("MPLBACKEND", "Agg")
    os.environ.setdefault("DISTILL_CACHE", str(workspace / "cache"))
    if args.host not in ("127.0.0.1", "localhost", "::1"):
        print(f"Warning: listening on {args.host}: other machines on the network can reach this page.", file=sys.stderr)

    threading.Thread(target=_warm_up, name="distill-warmup", daemon=True).start()
    from distill.app.ui import DistillApp, build_ui, launch_kwargs

    app = DistillApp(workspace)
    demo = build_ui(workspace, app=app)
    print(f"Distill workspace: {workspace}", flush=True)
    demo.launch(server_name=args.host, server_port=args.port, inbrowser=not args.no_browser, **launch_kwargs(app))


if __name__ == "__main__":
    main()
