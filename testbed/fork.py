"""A function run in a child process made by fork(), as a preloading server
makes its workers."""

import json
import os
import select
import signal
import traceback
import warnings


def in_forked_child(function, seconds=60):
    """Run ``function`` in a forked child process and return its result.

    The result travels back as JSON through a pipe (a tuple comes back as a
    list); the child then leaves at once, without running the parent's
    cleanup (pytest's, or a notebook kernel's). A child that has sent
    nothing within ``seconds`` is killed.
    """
    read_end, write_end = os.pipe()
    with warnings.catch_warnings():
        # Python 3.12+ warns when a process with threads forks, as a Jupyter
        # kernel always has: the child only runs ``function`` and leaves.
        warnings.filterwarnings("ignore", "This process .* is multi-threaded")
        pid = os.fork()
    if pid == 0:
        try:
            report = {"result": function()}
        except BaseException:
            report = {"error": traceback.format_exc()}
        try:
            os.write(write_end, json.dumps(report).encode())
        finally:
            os._exit(0)
    os.close(write_end)
    with os.fdopen(read_end) as reader:
        if not select.select([reader], [], [], seconds)[0]:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            raise AssertionError(f"the forked child sent nothing within {seconds} s")
        report = json.loads(reader.read())
    os.waitpid(pid, 0)
    assert "error" not in report, f"in the forked child: {report['error']}"
    return report["result"]
