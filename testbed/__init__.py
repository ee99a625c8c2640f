"""The processes the tests, the benchmark, the notebooks and ``make run`` start.

A throwaway PostgreSQL (postgres), PgBouncer in front of one (pgbouncer),
gunicorn and ``flask run`` serving a step (gunicorn, live_server), headless
Chromium (chromium), a reader's shell commands (terminals), and what drives
and watches them: load from threads (load, threads), a fork (fork), samples
of pg_stat_activity (watchers).
One job per module; none of it is a step's concept.
"""

import pathlib

# The repository: servers run from here, so that they import its packages
# (tests.preloaded_app, bench.nullpool_app) as the tests do.
ROOT = pathlib.Path(__file__).resolve().parent.parent
