"""Step 8 behind PgBouncer with NullPool, for bench/scale_out.py's comparison.

    gunicorn 'bench.nullpool_app:create_app_with_nullpool()'

Every checkout opens a new connection to PgBouncer and every return closes
it. NullPool takes none of QueuePool's sizes or its timeout: None removes
those of the step's pool defaults. BEHIND_POOLER's defaults still apply.
"""

from sqlalchemy.pool import NullPool

from step08_pgbouncer import create_app

# The step's own option: None removes one of its pool defaults.
NULLPOOL_OPTIONS = {
    "poolclass": NullPool,
    "pool_size": None,
    "max_overflow": None,
    "pool_timeout": None,
}


def create_app_with_nullpool(test_config=None):
    """Create step 8's app with NullPool for both engines."""
    return create_app({"ENGINE_OPTIONS": NULLPOOL_OPTIONS, **(test_config or {})})
