"""A reader's terminals: shell commands run in a folder as typed.

A command that serves runs in a terminal of its own, in the background,
until it is stopped as Ctrl-C or a closed terminal would stop it; any other
command runs to its end.
"""

import pathlib
import signal
import subprocess

from .loopback import wait_for_http
from .stopping import stop_process_group


class Background:
    """A command left running in a terminal of its own, and what it prints."""

    def __init__(self, command, process, log_path):
        self.command = command
        self.process = process
        self.log_path = log_path

    def log(self):
        """Return what the command has printed so far."""
        return pathlib.Path(self.log_path).read_text(errors="replace")


class Terminals:
    """Run shell commands in ``folder`` with the environment ``env``.

    As a context manager, it stops whatever still runs in the background
    after the block, whatever happened in it.
    """

    def __init__(self, folder, env, log_folder):
        self.folder = folder
        self.env = env
        self.log_folder = pathlib.Path(log_folder)
        self.running = []
        self.started = 0

    def run(self, command, stdin="", seconds=120):
        """Run a command to its end; return it completed (stdout, stderr)."""
        return subprocess.run(
            ["bash", "-c", command],
            cwd=self.folder,
            env=self.env,
            input=stdin,
            capture_output=True,
            text=True,
            timeout=seconds,
        )

    def start(self, command, url, seconds=90):
        """Start a command that serves, and wait until ``url`` answers."""
        self.started += 1
        log_path = self.log_folder / f"background-{self.started}.log"
        with open(log_path, "wb") as log:
            process = subprocess.Popen(
                ["bash", "-c", command],
                cwd=self.folder,
                env=self.env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                # What it starts (make, a server's keeper, its workers) in a
                # group of its own, which stopping ends whole.
                process_group=0,
            )
        background = Background(command, process, log_path)
        self.running.append(background)
        wait_for_http(url, process, seconds=seconds, log_path=log_path)
        return background

    def stop(self, background):
        """Stop a command that serves, and all it started, as Ctrl-C does."""
        # SIGINT, not SIGTERM: uWSGI's master takes SIGTERM as an order to
        # reload.
        stop_process_group(background.process, seconds=30, stop_signal=signal.SIGINT)
        self.running.remove(background)

    def __enter__(self):
        return self

    def __exit__(self, *exc_info):
        for background in list(self.running):
            self.stop(background)
