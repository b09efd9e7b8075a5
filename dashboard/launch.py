"""Starting the dashboard: `streamlit run` on app.py in a child process."""

from __future__ import annotations

import errno
import signal
import socket
import subprocess
import sys
import threading
from pathlib import Path

from ..core.errors import UsageError
from ..results.url import DatabaseUrl

APP = Path(__file__).resolve().parent / "app.py"

# Only this machine can reach the dashboard unless --host says otherwise: a store can hold
# host names, commands and paths that are nobody else's business.
DEFAULT_HOST = "127.0.0.1"


def _family(host: str) -> socket.AddressFamily:
    return socket.AF_INET6 if ":" in host else socket.AF_INET


def free_port(host: str = DEFAULT_HOST) -> int:
    """A port nothing listens on right now (the OS picks it)."""
    with socket.socket(_family(host), socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def check_address(host: str, port: int) -> None:
    """A port in range that this process could listen on, on an address of this machine."""
    if not 1 <= port <= 65535:
        raise UsageError(f"port {port} is out of range; allowed: 1..65535")
    try:
        with socket.socket(_family(host), socket.SOCK_STREAM) as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind((host, port))
    except socket.gaierror:
        raise UsageError(f"host '{host}' is not an address of this machine (e.g. 127.0.0.1, 0.0.0.0)") from None
    except OSError as exc:
        if exc.errno == errno.EADDRINUSE:
            raise UsageError(f"port {port} is in use on {host}; pick another --port or leave it out") from None
        raise UsageError(f"cannot listen on {host}:{port}: {exc.strerror}") from None


def streamlit_command(db_url: str, port: int, headless: bool = True, host: str = DEFAULT_HOST) -> list[str]:
    return [
        sys.executable, "-m", "streamlit", "run", str(APP),
        "--server.address", host,
        "--server.port", str(port),
        "--server.headless", "true" if headless else "false",
        "--browser.gatherUsageStats", "false",
        "--client.toolbarMode", "minimal",  # no deploy button: this is a local, read-only tool
        "--", "--db", db_url,
    ]


def launch(db: DatabaseUrl, port: int | None = None, headless: bool = True, host: str = DEFAULT_HOST) -> int:
    """Serve the dashboard until the server stops; returns its exit code (130 after Ctrl-C)."""
    if port is None:
        port = free_port(host)
    else:
        check_address(host, port)
    shown = f"[{host}]" if ":" in host else host
    print(f"tbench dashboard on http://{shown}:{port} (store {db}); Ctrl-C stops it", file=sys.stderr,
          flush=True)
    process = subprocess.Popen(streamlit_command(db.full, port, headless, host))
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
    parser.add_argument("--host", default=DEFAULT_HOST, help=f"address to listen on [default: {DEFAULT_HOST}]")
    args = parser.parse_args(argv)
    try:
        return launch(DatabaseUrl.resolve(args.db), args.port, host=args.host)
    except UsageError as exc:
        parser.error(str(exc))


if __name__ == "__main__":
    sys.exit(main())
