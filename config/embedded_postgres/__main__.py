"""``python -m config.embedded_postgres CMD…``: run CMD on the embedded PostgreSQL.

``make run`` uses it so that web, worker, beat and the migrations share one server,
started here once and stopped when CMD (honcho) ends. With ``DATABASE_URL`` set it just
runs CMD: the real database is somebody else's to start.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys

from . import default_data_dir, ensure_running


def main(argv: list[str]) -> int:
    if not argv:
        print("usage: python -m config.embedded_postgres CMD [ARG…]", file=sys.stderr)
        return 2
    if os.environ.get("DATABASE_URL"):
        os.execvp(argv[0], argv)  # noqa: S606 (the developer's own command, from the Makefile)
    data_dir = default_data_dir()
    endpoint = ensure_running(data_dir)
    print(f"embedded PostgreSQL: data {data_dir}, socket {endpoint.socket_dir}", file=sys.stderr, flush=True)
    child = subprocess.Popen(argv, env=os.environ | {"DATABASE_URL": endpoint.url()})  # noqa: S603 (as above)

    def forward(signum: int, _frame: object) -> None:
        # Ctrl-C reaches the whole process group (honcho stops its processes itself); a
        # SIGTERM meant for `make run` is passed on. Either way the server stops only
        # after CMD has ended, when this process exits (the wheel's exit handler).
        if signum != signal.SIGINT:
            child.send_signal(signum)

    for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, forward)
    return child.wait()


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
