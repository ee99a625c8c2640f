"""Step 4 as ``gunicorn --preload`` loads it: created and queried before fork.

Many apps query at startup (settings, a cache, a schema check), so the
master holds a pooled connection when gunicorn forks its workers. Its
server backend pid goes to the file named by PRELOAD_BACKEND_PID_FILE.
"""

import os

from sqlalchemy import func
from sqlalchemy import select

from step04_pooling import create_app

app = create_app()

with app.extensions["engine"].connect() as connection:
    backend_pid = connection.execute(select(func.pg_backend_pid())).scalar_one()

with open(os.environ["PRELOAD_BACKEND_PID_FILE"], "w") as pid_file:
    pid_file.write(str(backend_pid))
