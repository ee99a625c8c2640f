"""gunicorn serving an app on loopback: one server, or several standing in for hosts."""

import contextlib
import os
import pathlib
import subprocess
import sys

from . import ROOT
from .loopback import free_port
from .loopback import wait_for_http
from .stopping import stop_process
from .stopping import stop_process_group
from .stopping import stop_processes


class Gunicorn:
    """An app under gunicorn on a free loopback port.

    As a context manager, it waits until gunicorn answers, and stops it
    after the block.
    """

    def __init__(self, app, options=(), env=None, log_path=None, process_group=False):
        port = free_port()
        self.url = f"http://127.0.0.1:{port}"
        self.log_path = log_path
        # A group of its own, which stop() ends whole: the workers stop with
        # the master, even one that hangs on a read.
        self.process_group = process_group
        with (
            open(log_path, "wb")
            if log_path is not None
            else contextlib.nullcontext(subprocess.DEVNULL)
        ) as log:
            self.process = subprocess.Popen(
                [
                    *(sys.executable, "-m", "gunicorn", *options),
                    *("--bind", f"127.0.0.1:{port}", app),
                ],
                cwd=ROOT,
                env={**os.environ, **(env or {})},
                stdout=log,
                stderr=subprocess.STDOUT,
                process_group=0 if process_group else None,
            )

    def wait(self, seconds=30):
        """Wait until gunicorn answers; stop it and fail if it does not."""
        try:
            wait_for_http(self.url, self.process, seconds, self.log_path)
        except BaseException:
            self.stop()
            raise
        return self

    def __enter__(self):
        return self.wait()

    def __exit__(self, *exc_info):
        self.stop()

    def stop(self):
        """Stop gunicorn and its workers."""
        if self.process_group:
            stop_process_group(self.process)
        else:
            stop_process(self.process)

    def log(self):
        """Return what gunicorn has logged, if it logs to a file."""
        if self.log_path is None:
            return ""
        return pathlib.Path(self.log_path).read_text(errors="replace")


class Instances:
    """Gunicorn instances of step 8 on loopback, standing in for hosts."""

    def __init__(self, env, count, workers, threads, log_folder, app=None):
        options = [
            *("--preload", "--workers", str(workers), "--threads", str(threads)),
            *("--log-level", "warning"),
        ]
        self.servers = []
        try:
            for number in range(count):
                self.servers.append(
                    Gunicorn(
                        app or "step08_pgbouncer.wsgi:app",
                        options,
                        env,
                        os.path.join(log_folder, f"instance-{number}.log"),
                    )
                )
            # They start side by side; many at once: give them a minute.
            for server in self.servers:
                server.wait(seconds=60)
        except BaseException:
            self.stop()
            raise
        self.urls = [server.url for server in self.servers]

    def stop(self):
        """Stop every instance and its workers."""
        stop_processes([server.process for server in self.servers])

    def log(self):
        """Return what the instances have logged."""
        return "".join(server.log() for server in self.servers)
