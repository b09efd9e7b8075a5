"""Starting the dashboard: `streamlit run` on app.py in a child process."""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
import threading
from pathlib import Path

from ..results.url import DatabaseUrl

APP = Path(__file__).resolve().parent / "app.py"


def free_port() -> int:
    """A port nothing listens on right now (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def streamlit_command(db_url: str, port: int, headless: bool = True) -> list[str]:
    return [
        sys.executable, "-m", "streamlit", "run", str(APP),
        "--server.port", str(port),
        "--server.headless", "true" if headless else "false",
        "--browser.gatherUsageStats", "false",
        "--client.toolbarMode", "minimal",  # no deploy button: this is a local, read-only tool
        "--", "--db", db_url,
    ]


def launch(db: DatabaseUrl, port: int | None = None, headless: bool = True) -> int:
    """Serve the dashboard until the server stops; returns its exit code (130 after Ctrl-C)."""
    port = port or free_port()
    print(f"tbench dashboard on http://localhost:{port} (store {db}); Ctrl-C stops it", file=sys.stderr,
          flush=True)
    process = subprocess.Popen(streamlit_command(db.full, port, headless))
    # A SIGTERM to this process (a supervisor, `kill PID`) must not leave the server orphaned.
    previous = None
    if threading.current_thread() is threading.main_thread():
        previous = signal.signal(signal.SIGTERM, lambda *_: process.terminate())
    try:
        return process.wait()
    except KeyboardInterrupt:
        # The terminal sent Ctrl-C to the server too; give it the time to shut down cleanly.
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        return 130
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


def main(argv: list[str] | None = None) -> int:
    import argparse

    parser = argparse.ArgumentParser(prog="python -m tbench.dashboard.launch", description=launch.__doc__)
    parser.add_argument("--db", default=None, help="SQLAlchemy URL or SQLite path [default: $TBENCH_DB or "
                                                   "./tbench.db]")
    parser.add_argument("--port", type=int, default=None, help="port [default: a free one]")
    args = parser.parse_args(argv)
    return launch(DatabaseUrl.resolve(args.db), args.port)


if __name__ == "__main__":
    sys.exit(main())
