"""`robot-rl lake serve`: the read-only web page over the lake (``robot_rl.serve``)."""

from __future__ import annotations

import argparse
import signal
from collections.abc import Callable

DEFAULT_PORT = 8765


def cmd_serve(a: argparse.Namespace) -> int:
    from werkzeug.serving import make_server

    from robot_rl.serve import create_app, default_cache_dir, is_local_host

    if not is_local_host(a.host) and not a.allow_remote:
        raise ValueError(
            f"refusing to serve the lake on {a.host!r}: anyone who can reach that address could read it; "
            "bind to 127.0.0.1 (the default), or pass --allow-remote to serve it on the network"
        )
    cache = a.cache or default_cache_dir()
    app = create_app(a.lake, cache)
    server = make_server(a.host, a.port, app, threaded=True)
    host = f"[{a.host}]" if ":" in a.host else a.host
    print(f"serving lake {a.lake} at http://{host}:{server.server_port}/ (read-only; videos cached in {cache})")
    print("press Ctrl-C to stop", flush=True)
    # Ctrl-C must stop the server even when this process inherited SIGINT ignored or blocked (a parent's
    # disposition and signal mask survive exec; a test run once left the server deaf to SIGINT)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
    print("stopped")
    return 0


def add_serve_parser(cmds: argparse._SubParsersAction, lake_arg: Callable[[argparse.ArgumentParser], None]) -> None:  # type: ignore[type-arg]
    help = "a read-only web page over the lake: log, episodes with thumbnails and videos, diffs"
    p = cmds.add_parser("serve", help=help, description=help)
    lake_arg(p)
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default: 127.0.0.1, this machine only)")
    p.add_argument("--port", type=int, default=DEFAULT_PORT, help=f"port (default: {DEFAULT_PORT}; 0: any free port)")
    p.add_argument(
        "--allow-remote",
        action="store_true",
        help="allow a --host other than 127.0.0.1, ::1 or localhost (the page has no authentication)",
    )
    p.add_argument(
        "--cache",
        default=None,
        help="where encoded videos and thumbnails are kept (default: $XDG_CACHE_HOME/robot-rl/serve)",
    )
    p.set_defaults(func=cmd_serve)
