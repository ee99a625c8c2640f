"""The app for a WSGI server: ``gunicorn --preload <step package>.wsgi:app``."""

from sqlalchemy import text

from . import create_app

app = create_app()

# Fail fast: check the database as the server starts, as many apps do,
# rather than at the first request. The check leaves a connection in the
# pool, so a server that preloads the app (gunicorn --preload) forks its
# workers while the pool holds it.
with app.extensions["engine"].connect() as connection:
    connection.execute(text("SELECT 1"))
