"""Run a command of yours beside servers of its own, which stop when it ends.

What ``python -m testbed.postgres``, ``python -m testbed.pgbouncer`` and
``python -m testbed.mariadb`` do with the servers they start.
"""

import contextlib
import os
import signal
import subprocess
import sys

from .stopping import stop_process_group


def run_with_servers(command, start):
    """Run a command beside servers that ``start`` starts; return its status.

    ``start(cleanup)`` starts them, registers how to stop them on
    ``cleanup`` (an ExitStack), and returns the environment to give the
    command and a line to print. The servers stop when the command ends, or
    when this process is stopped by a signal (kill, a closing terminal).
    """
    signal.signal(signal.SIGTERM, leave_on_signal)
    signal.signal(signal.SIGHUP, leave_on_signal)
    process = None
    with contextlib.ExitStack() as cleanup:
        try:
            env, message = start(cleanup)
            print(message, flush=True)
            # A process group of its own, so that everything the command
            # starts (a server's workers) stops with it.
            process = subprocess.Popen(
                command, env={**os.environ, **env}, process_group=0
            )
            return process.wait()
        except KeyboardInterrupt:
            return 130
        finally:
            ignore_stop_signals()
            if process is not None:
                stop_process_group(process)


def leave_on_signal(signum, frame):
    """Leave through the cleanup, as ``sys.exit`` does."""
    ignore_stop_signals()
    sys.exit(128 + signum)


def ignore_stop_signals():
    """Ignore further signals to stop, so that nothing cuts the cleanup short."""
    # One is enough: make, stopped, passes its own SIGTERM on to its
    # children, and a second signal inside the cleanup would end it there.
    for stop_signal in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(stop_signal, signal.SIG_IGN)


def run_on_throwaway_databases(command, kind, make_server):
    """Run a command with DATABASE_URL and AUDIT_DATABASE_URL naming two
    databases, messages and audit, on a server that ``make_server()``
    starts (a throwaway ``kind``), deleted when it ends; return its status."""

    def start(cleanup):
        server = make_server()
        cleanup.callback(server.destroy)
        databases = {
            "DATABASE_URL": server.create_database("messages"),
            "AUDIT_DATABASE_URL": server.create_database("audit"),
        }
        return databases, (
            f"A throwaway {kind} in {server.folder}, deleted when this stops;"
            + "".join(f" {name}={url}" for name, url in databases.items())
        )

    return run_with_servers(command, start)
