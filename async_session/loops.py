"""Where the app's coroutines run: the event loops of each ASYNC_PATTERN.

An AsyncEngine's pooled connections belong to the event loop that opened
them (SQLAlchemy's "Using multiple asyncio event loops"). Flask runs each
``async def`` view on an event loop made for that call, so each pattern
answers one question: which loop runs a call, and which engine's pool
does that loop use. docs/async.md says what each one costs.
"""

import asyncio
import contextvars
import os
import selectors
import sys
import threading
from collections.abc import Callable
from collections.abc import Coroutine
from typing import Any
from typing import TypeVar

from asgiref.sync import async_to_sync
from sqlalchemy import URL
from sqlalchemy.ext.asyncio import AsyncEngine

T = TypeVar("T")
# What the runners run: a function that returns a new coroutine.
CoroutineFunction = Callable[[], Coroutine[Any, Any, T]]
EngineFactory = Callable[[], AsyncEngine]


def gevent_patched() -> bool:
    """Say whether gevent has patched threading: greenlets share an OS thread."""
    if "gevent" not in sys.modules:
        return False
    import gevent.monkey  # type: ignore[import-untyped]

    return bool(gevent.monkey.is_module_patched("threading"))


def new_event_loop() -> asyncio.AbstractEventLoop:
    """Return a new event loop that waits on the OS, even under gevent."""
    if gevent_patched():
        import gevent.monkey

        # Patched, selectors.DefaultSelector is gevent's, which would make
        # the loop's native thread run a gevent hub of its own to wait.
        selector: selectors.BaseSelector = gevent.monkey.get_original(
            "selectors", "DefaultSelector"
        )()
        return asyncio.SelectorEventLoop(selector)
    return asyncio.new_event_loop()


def run_on_a_native_thread(function: Callable[[], T]) -> T:
    """Call a function on a native thread of gevent's hub threadpool, with
    this greenlet's context variables; the greenlet yields while it waits."""
    import gevent

    # asyncio allows one running loop per OS thread, and a worker's greenlets
    # all share one: two async views at once would raise "Cannot run the
    # event loop while another loop is running".
    context = contextvars.copy_context()
    result: T = gevent.get_hub().threadpool.apply(context.run, (function,))
    return result


class Runner:
    """Run the app's coroutines from its sync code, and give each the engine
    of the loop it runs on."""

    # Whether the loop that ran a call is still there once the call is over,
    # so that teardown can close the app context's AsyncSession on it.
    loop_outlives_the_call = False

    def __init__(self, make_engine: EngineFactory, url: URL) -> None:
        self.make_engine = make_engine
        # The engines' URL, for /pool: a loop-per-thread app has no engine
        # before its first request.
        self.url = url
        self.pid = os.getpid()
        self._lock = threading.Lock()

    def run(self, function: CoroutineFunction[T]) -> T:
        """Run a coroutine to completion and return its result."""
        raise NotImplementedError

    def engine(self) -> AsyncEngine:
        """Return the engine of the running event loop."""
        raise NotImplementedError

    def engines(self) -> list[AsyncEngine]:
        """Return every engine this process has made so far."""
        raise NotImplementedError

    def event_loops(self) -> int:
        """Return how many long-lived event loops this process keeps."""
        return 0

    def claim(self) -> None:
        """Start afresh in a forked child: its parent's loops and pools are
        not its own."""
        # A pid check, not a fork hook: uWSGI forks its workers in C, where
        # os.register_at_fork's hooks never run.
        if self.pid == os.getpid():
            return
        with self._lock:
            if self.pid != os.getpid():
                self.forget_the_parents()
                self.pid = os.getpid()

    def forget_the_parents(self) -> None:
        """Drop what the parent process made, without closing it for them."""
        for engine in self.engines():
            # close=False: closing would end the parent's connections.
            engine.sync_engine.dispose(close=False)

    def close(self) -> None:
        """Close every pooled connection and stop every loop (tests, shutdown)."""
        for engine in self.engines():
            # On a loop: an async driver's connection closes with an await.
            self.run(engine.dispose)


class PerCallLoop(Runner):
    """A new event loop for each call, and one engine for every loop."""

    def __init__(self, make_engine: EngineFactory, url: URL, flasks_own: bool) -> None:
        super().__init__(make_engine, url)
        self._engine = make_engine()
        # "pooled" runs calls as Flask does by default: asgiref's
        # async_to_sync, a new loop in a new thread per call.
        self.flasks_own = flasks_own

    def run(self, function: CoroutineFunction[T]) -> T:
        self.claim()
        if self.flasks_own:
            return async_to_sync(function)()
        if gevent_patched():
            return run_on_a_native_thread(lambda: self.run_here(function))
        return self.run_here(function)

    def run_here(self, function: CoroutineFunction[T]) -> T:
        """Run a coroutine on a new event loop in this thread, then close it."""
        # As asyncio.run() does, less its SIGINT handler: set on a process's
        # main thread, where uWSGI's workers serve too, it would stay in
        # place of uWSGI's, whose workers then no longer stop on SIGINT.
        loop = new_event_loop()
        try:
            return loop.run_until_complete(function())
        finally:
            try:
                left = asyncio.all_tasks(loop)
                for task in left:
                    task.cancel()
                if left:
                    loop.run_until_complete(
                        asyncio.gather(*left, return_exceptions=True)
                    )
                loop.run_until_complete(loop.shutdown_asyncgens())
            finally:
                loop.close()

    def engine(self) -> AsyncEngine:
        return self._engine

    def engines(self) -> list[AsyncEngine]:
        return [self._engine]


class LoopPerThread(Runner):
    """A long-lived event loop for each OS thread, and an engine for each loop."""

    def __init__(self, make_engine: EngineFactory, url: URL) -> None:
        super().__init__(make_engine, url)
        # By native thread id: under gevent, threading.get_ident() names a
        # greenlet, and threading.local may be a greenlet's.
        self._loops: dict[int, tuple[asyncio.AbstractEventLoop, AsyncEngine]] = {}

    @property
    def loop_outlives_the_call(self) -> bool:  # type: ignore[override]
        # Teardown runs on the request's thread, whose loop ran the view,
        # except under gevent, where the view ran on whichever of the hub
        # threadpool's threads was free.
        return not gevent_patched()

    def run(self, function: CoroutineFunction[T]) -> T:
        self.claim()
        if gevent_patched():
            return run_on_a_native_thread(lambda: self.run_here(function))
        return self.run_here(function)

    def run_here(self, function: CoroutineFunction[T]) -> T:
        """Run a coroutine on this thread's event loop."""
        loop, _ = self._this_threads()
        return loop.run_until_complete(function())

    def _this_threads(self) -> tuple[asyncio.AbstractEventLoop, AsyncEngine]:
        thread = threading.get_native_id()
        if thread not in self._loops:
            # Only this thread adds its own key: no lock needed.
            self._loops[thread] = (new_event_loop(), self.make_engine())
        return self._loops[thread]

    def engine(self) -> AsyncEngine:
        loop, engine = self._this_threads()
        if loop is not asyncio.get_running_loop():
            raise RuntimeError("this thread's engine is for its own event loop")
        return engine

    def engines(self) -> list[AsyncEngine]:
        return [engine for _, engine in list(self._loops.values())]

    def event_loops(self) -> int:
        return len(self._loops)

    def forget_the_parents(self) -> None:
        super().forget_the_parents()
        # The parent's threads did not come along with the fork.
        self._loops = {}

    def close(self) -> None:
        # Each engine on its own loop, which runs nothing between calls.
        for loop, engine in list(self._loops.values()):
            loop.run_until_complete(engine.dispose())
            loop.close()
        self._loops = {}


class OneLoop(Runner):
    """One long-lived event loop per process, on a native thread of its own,
    running every call, with one engine."""

    loop_outlives_the_call = True

    def __init__(self, make_engine: EngineFactory, url: URL) -> None:
        super().__init__(make_engine, url)
        self._engine = make_engine()
        self._loop: asyncio.AbstractEventLoop | None = None

    def run(self, function: CoroutineFunction[T]) -> T:
        self.claim()
        loop = self._running_loop()
        # The request's context variables, so that the view finds the app
        # and request contexts: a task takes its loop thread's otherwise.
        context = contextvars.copy_context()
        if gevent_patched():
            return wait_in_greenlet(loop, function, context)
        return wait_in_thread(loop, function, context)

    def _running_loop(self) -> asyncio.AbstractEventLoop:
        if self._loop is None:
            with self._lock:
                if self._loop is None:
                    loop = new_event_loop()
                    start_native_thread(lambda: run_until_stopped(loop))
                    self._loop = loop
        return self._loop

    def engine(self) -> AsyncEngine:
        return self._engine

    def engines(self) -> list[AsyncEngine]:
        return [self._engine]

    def event_loops(self) -> int:
        return 0 if self._loop is None else 1

    def forget_the_parents(self) -> None:
        super().forget_the_parents()
        # The loop's thread did not come along with the fork: a new loop,
        # on a thread of this process, the first time one is needed.
        self._loop = None

    def close(self) -> None:
        super().close()
        if self._loop is not None:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._loop = None


def run_until_stopped(loop: asyncio.AbstractEventLoop) -> None:
    """Run a loop until something stops it, then close it."""
    try:
        loop.run_forever()
    finally:
        loop.close()


def start_native_thread(function: Callable[[], object]) -> None:
    """Call a function on a new native thread, even under gevent."""
    if gevent_patched():
        import gevent.monkey

        # Patched, a threading.Thread is a greenlet of this OS thread.
        gevent.monkey.get_original("_thread", "start_new_thread")(function, ())
    else:
        threading.Thread(target=function, daemon=True).start()


def submit(
    loop: asyncio.AbstractEventLoop,
    function: CoroutineFunction[T],
    context: contextvars.Context,
    when_done: Callable[["asyncio.Task[T]"], object],
) -> None:
    """Start a coroutine on another thread's loop, in ``context``."""

    def start() -> None:
        task = loop.create_task(function(), context=context)
        task.add_done_callback(when_done)

    loop.call_soon_threadsafe(start)


def wait_in_thread(
    loop: asyncio.AbstractEventLoop,
    function: CoroutineFunction[T],
    context: contextvars.Context,
) -> T:
    """Run a coroutine on the loop, blocking this thread until it is done."""
    done = threading.Event()
    tasks: list[asyncio.Task[T]] = []

    def when_done(task: "asyncio.Task[T]") -> None:
        tasks.append(task)
        done.set()

    submit(loop, function, context, when_done)
    done.wait()
    return tasks[0].result()


def wait_in_greenlet(
    loop: asyncio.AbstractEventLoop,
    function: CoroutineFunction[T],
    context: contextvars.Context,
) -> T:
    """Run a coroutine on the loop; this greenlet yields until it is done."""
    import gevent
    from gevent.hub import Waiter  # type: ignore[import-untyped]

    # gevent's objects are for one thread's greenlets (Event, AsyncResult,
    # a patched threading.Event): the loop's thread may not set one. An
    # async watcher may be sent from any thread; it wakes this greenlet
    # through the hub, which runs the other greenlets meanwhile.
    hub = gevent.get_hub()
    watcher = hub.loop.async_()
    waiter = Waiter(hub)
    tasks: list[asyncio.Task[T]] = []

    def when_done(task: "asyncio.Task[T]") -> None:
        tasks.append(task)
        watcher.send()

    # Started before the coroutine is, so that no send() comes too early.
    watcher.start(waiter.switch, None)
    try:
        submit(loop, function, context, when_done)
        waiter.get()
    finally:
        watcher.stop()
        watcher.close()
    return tasks[0].result()
