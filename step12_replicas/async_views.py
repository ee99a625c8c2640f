"""How the app runs its async views: on threads and under gevent alike."""

import asyncio
import functools
import sys
import threading
from collections.abc import Callable
from collections.abc import Coroutine
from typing import Any

import flask


class Flask(flask.Flask):
    """A Flask app that runs each async view in an event loop of its own, on
    the request's own thread, one loop at a time on that thread."""

    def async_to_sync(
        self, func: Callable[..., Coroutine[Any, Any, Any]]
    ) -> Callable[..., Any]:
        """Return a function that runs ``func``'s coroutine to its end."""

        def run(*args: Any, **kwargs: Any) -> Any:
            coroutine = func(*args, **kwargs)
            if greenlets_share_this_thread():
                # asyncio runs one event loop at a time on a thread, and the
                # worker's greenlets share one: a view whose loop started
                # while another's still ran would be refused (asgiref's "You
                # cannot use AsyncToSync in the same thread as an async
                # event loop"). Each waits its turn, and the other greenlets,
                # sync views included, run meanwhile.
                with turn_to_run_an_event_loop():
                    return run_in_a_loop_of_its_own(coroutine)
            # A server's thread runs one request at a time and no loop: the
            # view's loop runs there, with the request's context variables,
            # as a sync view would. Flask's default (asgiref's) makes a
            # thread for each call and waits for it.
            return run_in_a_loop_of_its_own(coroutine)

        return run


def run_in_a_loop_of_its_own(coroutine: Coroutine[Any, Any, Any]) -> Any:
    """Run the coroutine to its end in a new event loop, then close it."""
    # asyncio.run() less one thing: on a process's main thread it sets a
    # SIGINT handler of Python's for the call, and under uWSGI, whose
    # workers serve on their main thread too, that handler stays in place
    # of uWSGI's own, so that its workers no longer stop on SIGINT
    # (tests/test_step09_app_context.py).
    loop = asyncio.new_event_loop()
    try:
        return loop.run_until_complete(coroutine)
    finally:
        try:
            # What the view started and left running is cancelled, as
            # asyncio.run() does, rather than destroyed while pending.
            left = asyncio.all_tasks(loop)
            for task in left:
                task.cancel()
            if left:
                loop.run_until_complete(asyncio.gather(*left, return_exceptions=True))
            loop.run_until_complete(loop.shutdown_asyncgens())
        finally:
            loop.close()


def greenlets_share_this_thread() -> bool:
    """Tell whether gevent has patched threading: whether this request is
    one greenlet of many on the worker's one thread."""
    # Checked at each call, not as the app loads: gunicorn --preload loads
    # it before its gevent worker patches anything.
    monkey = sys.modules.get("gevent.monkey")
    return monkey is not None and bool(monkey.is_module_patched("threading"))


@functools.cache
def turn_to_run_an_event_loop() -> threading.Lock:
    """Return the lock that the greenlets of this process take turns with."""
    # Made at the first async view, once gevent has patched threading: a
    # lock of gevent's, whose waiters let the other greenlets run. Not on a
    # thread of gevent's pool instead: gevent's sockets belong to the
    # thread that made them, and a pooled connection of PyMySQL's, made by
    # one greenlet, fails on another thread ("Cannot switch to a different
    # thread"; tests/test_step09_app_context.py).
    return threading.Lock()
