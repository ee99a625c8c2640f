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
- ``/gevent/async-query``: the same query from an async view (steps 9 and
  10, whose async views run on native threads under gevent).
- ``/gevent/async-thread``: which OS thread an async view ran on.
- ``/gevent/async-fails``: an async view that raises.
"""

import importlib
import os
import threading
import time
from collections import Counter

import psycopg.waiting
from flask import abort
from flask import request
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


@app.get("/gevent/async-query")
async def async_query():
    """Run the query of /gevent/query from an async view."""
    db.get_session().execute(text("SELECT pg_sleep(0.1)"))
    return {"pid": os.getpid()}


@app.get("/gevent/async-thread")
async def async_thread():
    """Say which OS thread the async view ran on: the worker's main thread
    (whose native id is the process's id on Linux), where gevent's hub runs
    the greenlets, or another."""
    return {"pid": os.getpid(), "native_thread": threading.get_native_id()}


@app.get("/gevent/async-fails")
async def async_fails():
    """Raise from an async view: a 404 for ?status=404, else an error."""
    if request.args.get("status") == "404":
        abort(404)
    raise RuntimeError("the view failed")
