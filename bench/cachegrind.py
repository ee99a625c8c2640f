"""Instructions per request, counted by valgrind's cachegrind.

A part of the benchmark that counts (bench/parity.py, bench/replicas.py)
answers ``python -m PART --send ARGUMENTS... N`` by making its app and
calling ``send_counted``; ``instructions_per_request`` runs that twice
under cachegrind, with N requests and with none, and the difference over
N is one request's count, startup and warm-up cancelling out.
"""

import gc
import os
import subprocess
import sys

# Requests that warm an app up before anything is counted.
WARM_UP = 50


def instructions_per_request(part, arguments, requests, seed="0"):
    """Count what one request of ``python -m part --send *arguments``
    executes, with Python's string hashing seeded by ``seed``."""
    counts = []
    for sent in (0, requests):
        run = subprocess.run(
            [
                # Addresses fixed too (no ASLR): Python's containers hash by
                # them, and the count would move from run to run.
                *("setarch", "--addr-no-randomize"),
                *("valgrind", "--tool=cachegrind", "--cache-sim=no"),
                "--cachegrind-out-file=/dev/null",
                *(sys.executable, "-m", part, "--send", *arguments, str(sent)),
            ],
            # One OpenBLAS thread: the parts' report imports matplotlib,
            # whose numpy starts OpenBLAS's threads, which valgrind runs (and
            # counts) while a request waits on a server: over PostgreSQL,
            # counts moved by 18% from run to run with them.
            env={**os.environ, "PYTHONHASHSEED": seed, "OPENBLAS_NUM_THREADS": "1"},
            capture_output=True,
            text=True,
            check=True,
            timeout=600,
        )
        # "==123== I   refs:      2,081,303,425"
        line = next(line for line in run.stderr.splitlines() if "I   refs:" in line)
        counts.append(int(line.rpartition(" ")[2].replace(",", "")))
    return round((counts[1] - counts[0]) / requests)


def send_counted(client, path, requests):
    """Warm an app's test client up, then send ``requests`` GETs of ``path``."""
    for _ in range(WARM_UP):
        assert client.get(path).status_code == 200
    # Each garbage collection walks the objects the process holds, modules
    # and all: without this the bare app's count moved by 3% with what the
    # process had imported. Frozen, a collection walks what the requests
    # made, and the count is the requests'.
    gc.collect()
    gc.freeze()
    for _ in range(requests):
        client.get(path)
