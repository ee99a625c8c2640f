"""Alembic's entry point: the app's migrations, on the app's own engines.

Alembic runs this file for every ``flask db`` command, inside the app
context the command runs in; migrate.py does the work, so that it is typed,
tested, and the same for every command.
"""

from alembic import context
from flask import current_app

current_app.extensions["migrate"].run(context)
