"""The environment of a server that preloads tests/preloaded_app.py."""

import os


def preloaded_environment(databases, pid_file, step="step04_pooling"):
    """Return the environment of a server that preloads tests/preloaded_app.py:
    the step, its databases, and where the master's server pid goes."""
    return {
        **os.environ,
        **databases,
        "PRELOAD_STEP": step,
        "PRELOAD_BACKEND_PID_FILE": str(pid_file),
    }
