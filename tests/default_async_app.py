"""A step's ``wsgi.py`` app without its ``async_views.py``: Flask's own way
of running async views, asgiref's async_to_sync, a thread and an event loop
made for each call.

Step 9's by default; DEFAULT_ASYNC_STEP names another. The failing variant
of the tests that serve the steps' async views under gevent.
"""

import functools
import importlib
import os

import flask

STEP = os.environ.get("DEFAULT_ASYNC_STEP", "step09_app_context")
app = importlib.import_module(f"{STEP}.wsgi").app
# The method of flask.Flask itself, over the step's override.
app.async_to_sync = functools.partial(flask.Flask.async_to_sync, app)
