"""The benchmark: every claim about cost, measured side by side in one run.

    python -m bench [--quick] [--out DIR] [--postgres-url URL]    (make bench)

In-process, each case answers ``GET /messages/<id>`` through Flask's test
client, the cases taking turns round after round. Under load, step 4 runs
under gunicorn on loopback and wrk drives it. See ``python -m bench --help``.
"""
