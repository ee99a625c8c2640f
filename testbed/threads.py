"""Work in threads that are always joined: when it ends, fails or runs out of time."""

import threading
import time


def in_threads(work, count, stop=None, seconds=None):
    """Run ``work(number, stop)`` in ``count`` threads at once; return what
    each returned, in the order of ``number``, 0 to ``count - 1``.

    ``stop`` is an Event (a new one unless given) for ``work`` to check
    between requests. The first exception in a thread sets it, and so does
    one in this thread as it waits (a test's timeout), and so do
    ``seconds`` running out: the other threads end after their current
    request, rather than run on and keep the run from ending. Every thread
    is joined before this returns; then a thread's exception is raised here.
    """
    stop = threading.Event() if stop is None else stop
    results = [None] * count
    errors = []
    finished = [threading.Event() for _ in range(count)]

    def run(number):
        try:
            results[number] = work(number, stop)
        except BaseException as error:
            errors.append(error)
            stop.set()
        finally:
            finished[number].set()

    threads = [threading.Thread(target=run, args=(number,)) for number in range(count)]
    deadline = None if seconds is None else time.monotonic() + seconds
    started = []
    try:
        for thread in threads:
            started.append(thread)
            thread.start()
        # Wait on events, not join(): on Python 3.11 a join() that an
        # interruption cuts short marks the thread as ended while it still
        # runs, and every later join() returns at once (python/cpython#90882).
        for event in finished:
            event.wait(
                None if deadline is None else max(0, deadline - time.monotonic())
            )
    finally:
        # Done, out of time, failed, or interrupted here (Ctrl-C): no thread
        # outlives the call.
        stop.set()
        for thread in started:
            join_once_started(thread)
    if errors:
        raise errors[0]
    return results


def join_once_started(thread, seconds=1):
    """Join a thread whose start() was called, waiting a moment for it to start.

    An interruption (a test's timeout) that lands inside start() makes
    start() raise while the new thread starts all the same: for a moment it
    cannot be joined yet, and would outlive the caller if left. A thread
    that never began is given up on after ``seconds``.
    """
    deadline = time.monotonic() + seconds
    while True:
        try:
            thread.join()
            return
        except RuntimeError:
            # "cannot join thread before it is started"
            if time.monotonic() > deadline:
                return
            time.sleep(0.001)


def run_in_new_thread(function):
    """Run ``function`` in a new thread, wait for it, and return its result."""
    [result] = in_threads(lambda number, stop: function(), 1)
    return result
