"""Servers on loopback: a free port to listen on, and waiting until one answers."""

import http.client
import itertools
import os
import pathlib
import socket
import time
import urllib.error
import urllib.request

# Ports to listen on, below Linux's ephemeral range (32768 to 60999), from
# which the kernel picks the local port of every outgoing connection: a port
# picked there is free when picked, and may be a client's by the time a
# server binds it (gunicorn: "Connection in use").
LISTEN_PORTS = range(20000, 32768)

# Each process walks the range from a place of its own, so that the suite's
# workers, each starting servers at once, do not pick the same port. Their
# process ids follow one another: a large prime factor spreads their places
# thousands of ports apart.
_first = LISTEN_PORTS.start + os.getpid() * 7919 % len(LISTEN_PORTS)
_candidates = itertools.cycle(
    itertools.chain(range(_first, LISTEN_PORTS.stop), range(LISTEN_PORTS.start, _first))
)


def free_port():
    """Return a TCP port on loopback that no socket holds right now, and that
    no outgoing connection will take."""
    for port in itertools.islice(_candidates, len(LISTEN_PORTS)):
        with socket.socket() as probe:
            try:
                probe.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise RuntimeError(f"no free port on 127.0.0.1 in {LISTEN_PORTS}")


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
