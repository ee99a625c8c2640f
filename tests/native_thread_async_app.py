"""A step's ``wsgi.py`` app whose async views run, under gevent, on a native
thread of gevent's pool: the way ``async_views.py`` does not take.

Step 9's by default; DEFAULT_ASYNC_STEP names another. Each call's event
loop runs on a thread where no other runs, and the greenlet yields while it
waits; but the view's statements then run on another thread than the one
whose greenlet opened the pooled connection.
"""

import asyncio
import contextvars
import importlib
import os

import gevent

STEP = os.environ.get("DEFAULT_ASYNC_STEP", "step09_app_context")
app = importlib.import_module(f"{STEP}.wsgi").app


def on_a_native_thread(func):
    """Return a function that runs ``func``'s coroutine on gevent's pool."""

    def run(*args, **kwargs):
        context = contextvars.copy_context()
        coroutine = func(*args, **kwargs)
        return gevent.get_hub().threadpool.apply(context.run, (asyncio.run, coroutine))

    return run


app.async_to_sync = on_a_native_thread
