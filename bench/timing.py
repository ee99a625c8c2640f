"""Interleaved timing: every case measured in the same rounds, in turn."""

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


def time_per_request(clients, path, requests=10, rounds=300, baseline=None):
    """Time ``GET path`` through each client, the cases interleaved round by round.

    ``clients`` maps a case's name to a test client. Each round sends
    ``requests`` requests through every client, in an order rotated by one
    from the round before, so that a machine that drifts (another process, a
    warming cache) weighs on every case alike; the rounds are short, so that
    every case meets every phase of the drift. Every request is timed on
    its own. Noise only ever adds time (a core taken by another process, a
    cache gone cold), so a case's cost is its fastest request: on a busy
    machine the median wanders, the minimum stays. Return for each case
    that minimum in microseconds, its ratio to the ``baseline`` case's (the
    first by default), and the connections it opened per request.

    The fastest request leaves out what only some requests pay: a garbage
    collection, a cold cache. So each case's cost is also given as a run of
    requests pays it: each round's mean per request, and the mean of the
    fastest third of the rounds, the busiest rounds left out.
    """
    names = list(clients)
    baseline = baseline or names[0]
    fastest = dict.fromkeys(names, float("inf"))
    round_means = {name: [] for name in names}
    connects = dict.fromkeys(names, 0)
    clock = time.perf_counter
    for number in range(rounds):
        shift = number % len(names)
        for name in names[shift:] + names[:shift]:
            client = clients[name]
            total = 0.0
            with counting_connects() as counter:
                for _ in range(requests):
                    started = clock()
                    response = client.get(path)
                    elapsed = clock() - started
                    assert response.status_code == 200, (name, response.get_json())
                    fastest[name] = min(fastest[name], elapsed)
                    total += elapsed
            round_means[name].append(total / requests)
            connects[name] += counter["connects"]
    over_rounds = {name: best_third(means) for name, means in round_means.items()}
    return {
        name: {
            "µs per request": round(fastest[name] * 1e6),
            "ratio": round(fastest[name] / fastest[baseline], 2),
            "µs per request, best third of rounds": round(over_rounds[name] * 1e6, 1),
            "connects per request": round(connects[name] / (requests * rounds), 3),
        }
        for name in names
    }


def best_third(values):
    """Return the mean of the smallest third of the values (one at least)."""
    smallest = sorted(values)[: max(1, len(values) // 3)]
    return sum(smallest) / len(smallest)


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
