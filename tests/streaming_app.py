"""Step 9's ``wsgi.py`` app with the streaming routes of tests/streams.py,
for a real server to serve."""

from step09_app_context.wsgi import app

from .streams import add_streams

add_streams(app)
