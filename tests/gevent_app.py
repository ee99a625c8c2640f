"""A step's ``wsgi.py`` app with three routes that show what gevent makes of it.

Step 4's by default; GEVENT_APP_STEP names another (step 9's, whose
Sessions belong to the app context). The step is imported unchanged: under
gunicorn's gevent worker, it is loaded before or after gevent's
monkey-patching, by the same lines.

- ``/gevent/setup``: which psycopg wait function and which kind of
  registry the worker's scoped_session keeps its Sessions in.
- ``/gevent/session``: holds the request's Session across a cooperative
  sleep; says how many requests held that same Session at once.
- ``/gevent/query``: runs a query that keeps its connection busy for 100 ms.
"""

import importlib
import os
import time
from collections import Counter

import psycopg.waiting
from sqlalchemy import text

STEP = os.environ.get("GEVENT_APP_STEP", "step04_pooling")
db = importlib.import_module(f"{STEP}.db")
app = importlib.import_module(f"{STEP}.wsgi").app

# How many requests hold each Session right now, by id(): each request
# keeps its Session alive while counted, so no two live ones share an id.
holders = Counter()


@app.get("/gevent/setup")
def setup():
    """Name the wait function psycopg chose and where the registry keeps
    Sessions: a thread-local (thread scope) or a dict (app-context scope)."""
    local = app.extensions["session"].registry.registry
    return {
        "pid": os.getpid(),
        "wait": psycopg.waiting.wait.__name__,
        "local": f"{type(local).__module__}.{type(local).__qualname__}",
    }


@app.get("/gevent/session")
def hold_session():
    """Hold the Session through a sleep; count who else held it meanwhile."""
    session = db.get_session()
    holders[id(session)] += 1
    # gevent's time.sleep once patched: other requests run meanwhile.
    time.sleep(0.2)
    held_by = holders[id(session)]
    holders[id(session)] -= 1
    if not holders[id(session)]:
        del holders[id(session)]
    return {"pid": os.getpid(), "session": id(session), "held_by": held_by}


@app.get("/gevent/query")
def query():
    """Run a query through the Session that holds its connection for 100 ms."""
    db.get_session().execute(text("SELECT pg_sleep(0.1)"))
    return {"pid": os.getpid()}
