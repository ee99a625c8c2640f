"""Interleaved timing: every case measured in the same rounds, in turn."""

import statistics
import time
from contextlib import contextmanager

from sqlalchemy import event
from sqlalchemy.pool import Pool


@contextmanager
def counting_connects():
    """Count the DBAPI connections that every pool opens inside the block."""
    counter = {"connects": 0}

    def count(dbapi_connection, connection_record):
        counter["connects"] += 1

    # Listening on the Pool class counts the pools of engines created later,
    # inside the block, too.
    event.listen(Pool, "connect", count)
    try:
        yield counter
    finally:
        event.remove(Pool, "connect", count)


def time_per_request(clients, path, requests=50, rounds=7, baseline=None):
    """Time ``GET path`` through each client, the cases interleaved round by round.

    ``clients`` maps a case's name to a test client. Each round sends
    ``requests`` requests through every client, in an order rotated by one
    from the round before, so that a machine that drifts (another process, a
    warming cache) weighs on every case alike. Return for each case the
    median microseconds per request, the median of its round-by-round ratios
    to the ``baseline`` case (the first by default), and the connections it
    opened per request.
    """
    names = list(clients)
    baseline = baseline or names[0]
    per_round = {name: [] for name in names}
    connects = dict.fromkeys(names, 0)
    for number in range(rounds):
        shift = number % len(names)
        for name in names[shift:] + names[:shift]:
            with counting_connects() as counter:
                started = time.perf_counter()
                for _ in range(requests):
                    response = clients[name].get(path)
                    assert response.status_code == 200, (name, response.get_json())
                elapsed = time.perf_counter() - started
            per_round[name].append(elapsed / requests * 1e6)
            connects[name] += counter["connects"]
    return {
        name: {
            "µs per request": round(statistics.median(times)),
            "ratio": round(
                statistics.median(
                    time / base
                    for time, base in zip(times, per_round[baseline], strict=True)
                ),
                2,
            ),
            "connects per request": round(connects[name] / (requests * rounds), 3),
        }
        for name, times in per_round.items()
    }


class CallAsClient:
    """Let time_per_request() time any call, not only a GET.

    time_per_request() sends ``GET path`` through each client it is given,
    the cases taking turns round by round; this stand-in's ``get()`` makes
    its call instead (creating an app, a POST), and answers 200 once the
    call returned: the call checks its own result.
    """

    status_code = 200

    def __init__(self, call):
        self.call = call

    def get(self, path):
        """Make the call; ``path`` is not used."""
        self.call()
        return self
