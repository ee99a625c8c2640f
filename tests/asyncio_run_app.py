"""A step's ``wsgi.py`` app whose async views run with ``asyncio.run()`` on
the request's thread: ``async_views.py`` but for the one thing it leaves out.

Step 9's by default; DEFAULT_ASYNC_STEP names another.
"""

import asyncio
import importlib
import os

STEP = os.environ.get("DEFAULT_ASYNC_STEP", "step09_app_context")
app = importlib.import_module(f"{STEP}.wsgi").app


def with_asyncio_run(func):
    """Return a function that runs ``func``'s coroutine with asyncio.run()."""

    def run(*args, **kwargs):
        return asyncio.run(func(*args, **kwargs))

    return run


app.async_to_sync = with_asyncio_run
