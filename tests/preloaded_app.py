"""A step as a preloading server loads it: created and queried before fork.

Many apps query at startup (settings, a cache, a schema check), so the
master holds a pooled connection when the server (``gunicorn --preload``,
uWSGI without ``--lazy-apps``) forks its workers. The step is
PRELOAD_STEP (step 4 unless set); the server pid of the master's connection
goes to the file named by PRELOAD_BACKEND_PID_FILE.
"""

import importlib
import os

from sqlalchemy import func
from sqlalchemy import select

step = importlib.import_module(os.environ.get("PRELOAD_STEP", "step04_pooling"))
app = step.create_app()

with app.extensions["engine"].connect() as connection:
    backend_pid = connection.execute(select(func.pg_backend_pid())).scalar_one()

with open(os.environ["PRELOAD_BACKEND_PID_FILE"], "w") as pid_file:
    pid_file.write(str(backend_pid))
