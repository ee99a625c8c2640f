"""Stopping processes politely: their stop signal first, a kill if they linger."""

import contextlib
import os
import signal
import subprocess


def stop_processes(processes, stop_signal=signal.SIGTERM, seconds=30):
    """Send each process its stop signal, then wait for them all, so that
    they stop side by side; kill any that lingers."""
    for process in processes:
        process.send_signal(stop_signal)
    for process in processes:
        try:
            process.wait(timeout=seconds)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def stop_process(process, stop_signal=signal.SIGTERM, seconds=30):
    """Send a process its stop signal and wait; kill it if it lingers."""
    stop_processes([process], stop_signal, seconds)


def stop_process_group(process, seconds=10, stop_signal=signal.SIGTERM):
    """Stop a process and everything it started, politely first.

    The process leads a group of its own (``process_group=0``).
    """
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, stop_signal)
    try:
        process.wait(timeout=seconds)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()
