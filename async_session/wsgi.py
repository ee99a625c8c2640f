"""The app for a WSGI server: ``gunicorn async_session.wsgi:app``."""

from sqlalchemy import text

from . import create_app
from . import db

app = create_app()


async def check_the_database() -> None:
    """Run SELECT 1 on the app context's AsyncSession, and close it."""
    await db.get_session().execute(text("SELECT 1"))
    await db.close_session()


# Fail fast: check the database as the server starts, as the steps do.
# Under gunicorn --preload or uWSGI, the master does, on a loop and pool of
# its own, before it forks the workers: each must start their own
# (loops.Runner.claim).
with app.app_context():
    app.extensions["async_runner"].run(check_the_database)
