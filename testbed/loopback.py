"""Servers on loopback: a free port to listen on, and waiting until one answers."""

import http.client
import pathlib
import socket
import time
import urllib.error
import urllib.request


def free_port():
    """Return a TCP port on loopback that nothing listens on right now."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def wait_for_http(url, process, seconds=30, log_path=None):
    """Wait until a server answers, or fail if its process exits (with what
    it logged to ``log_path``, if given)."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if process.poll() is not None:
            log = pathlib.Path(log_path).read_text(errors="replace") if log_path else ""
            raise AssertionError(f"the server exited\n{log}")
        # urllib, not requests: make run serves a step with the app's own
        # dependencies only.
        try:
            urllib.request.urlopen(url + "/pool", timeout=1).close()
            return
        except urllib.error.HTTPError:
            # It answers, if not with a success: it is up.
            return
        # Refused: nothing listens yet. Timed out or cut short: it listens,
        # but its workers are still starting, as on a busy machine they may be.
        except (OSError, http.client.HTTPException):
            time.sleep(0.1)
    raise AssertionError(f"{url} did not answer in {seconds}s")
