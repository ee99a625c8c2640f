"""Step 8 behind PgBouncer with NullPool, for bench/scale_out.py's comparison.

    gunicorn 'bench.nullpool_app:create_app_with_nullpool()'

Every checkout opens a new connection to PgBouncer and every return closes
it. NullPool takes none of QueuePool's settings, so the step's pool
defaults give way; BEHIND_POOLER's still apply.
"""

from sqlalchemy.pool import NullPool

import step08_pgbouncer.db
from step08_pgbouncer import create_app


def create_app_with_nullpool(test_config=None):
    """Create step 8's app with NullPool for both engines."""
    saved = step08_pgbouncer.db.POOL_DEFAULTS
    step08_pgbouncer.db.POOL_DEFAULTS = {}
    try:
        return create_app(
            {"ENGINE_OPTIONS": {"poolclass": NullPool}, **(test_config or {})}
        )
    finally:
        step08_pgbouncer.db.POOL_DEFAULTS = saved
