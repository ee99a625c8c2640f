"""What step 4's pid check costs a request, measured without changing the step.

Timing step 4 without its check would mean patching the step. Instead,
``PoolOwner.claim()`` is timed on its own with timeit, and multiplied by
the number of times one ``GET /messages/<id>`` calls it (get_session() and
the teardown each do).
"""

import sys
import timeit


def claims_per_request(app, path):
    """Count the calls of the app's ``PoolOwner.claim()`` in one ``GET path``."""
    claim = type(app.extensions["pool_owner"]).claim.__code__
    calls = 0

    def count(frame, event, argument):
        nonlocal calls
        if event == "call" and frame.f_code is claim:
            calls += 1

    client = app.test_client()
    # A profile function sees every Python call in this thread, the test
    # client's request included, and changes nothing in the app.
    before = sys.getprofile()
    sys.setprofile(count)
    try:
        response = client.get(path)
    finally:
        sys.setprofile(before)
    assert response.status_code == 200, response.get_json()
    return calls


def microseconds_per_claim(app, number=1_000, repeat=300):
    """Time one ``claim()`` in the process that owns the pools: a pid check.

    Many short repeats and the fastest, as for the requests: noise only ever
    adds time.
    """
    timer = timeit.Timer(app.extensions["pool_owner"].claim)
    return min(timer.repeat(repeat=repeat, number=number)) / number * 1e6


def measure(app, path, µs_per_request, quick=False):
    """Return what the pid check costs one request, and its share of it."""
    each = microseconds_per_claim(app, repeat=30 if quick else 300)
    calls = claims_per_request(app, path)
    return {
        "µs per claim()": round(each, 3),
        "claim() calls per request": calls,
        "µs per request": round(each * calls, 3),
        "share of step 4's request": round(each * calls / µs_per_request, 5),
    }
