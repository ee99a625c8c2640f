"""gunicorn settings for gevent workers that preload the app: patch first.

gunicorn's gevent worker monkey-patches in each worker after fork; with
--preload the app was built in the master before that, on the unpatched
standard library. gunicorn reads this file before it loads the app, so
patching here means the app, its session registry, its pool and psycopg
are all built on gevent's threading, sockets and select.
"""

from gevent import monkey

monkey.patch_all()
