"""Load from many threads at once: through a step's test client, or over HTTP.

Both stop their threads, and wait for them, when one fails, and return
every answer as an Answer.
"""

import time
from typing import NamedTuple

import requests

from .threads import in_threads


class Answer(NamedTuple):
    """An answer to one request of a load."""

    status: int | None
    # The JSON body's "error", the body if not JSON, or why no answer came.
    error: str | None
    sent: float
    answered: float
    is_json: bool


def requests_from_threads(
    app, threads, requests_each, path="/messages", pause=0.0, clock=time.monotonic
):
    """Send GET requests through the app's test client from long-lived
    threads, as a threaded server would.

    Each thread sends up to ``requests_each`` requests, ``pause`` seconds
    apart, and stops at its first failure. Return each thread's answers,
    timed by ``clock``.
    """

    def work(number, stop):
        client = app.test_client()
        answers = []
        for _ in range(requests_each):
            if stop.is_set():
                break
            sent = clock()
            response = client.get(path)
            failed = response.status_code != 200
            answers.append(
                Answer(
                    response.status_code,
                    response.get_json().get("error") if failed else None,
                    sent,
                    clock(),
                    response.is_json,
                )
            )
            if failed:
                break
            if pause:
                time.sleep(pause)
        return answers

    return in_threads(work, threads)


def send_load(urls, clients, requests_each, path="/messages", stop=None, timeout=30):
    """Send POST requests from ``clients`` threads, spread over the servers.

    Each request opens a new HTTP connection, so that the servers' workers
    share the load. Bounded: ``clients * requests_each`` requests at most,
    each given up after ``timeout`` seconds; ``stop`` (an Event) ends it
    sooner. Return the answers.
    """

    def client(number, stop):
        answers = []
        for count in range(requests_each):
            if stop.is_set():
                break
            url = urls[(number + count) % len(urls)] + path
            sent = time.monotonic()
            try:
                response = requests.post(
                    url,
                    json={"text": f"client {number}, request {count}"},
                    timeout=timeout,
                )
            except requests.RequestException as error:
                answer = Answer(
                    None, f"no answer: {error}", sent, time.monotonic(), False
                )
            else:
                is_json = response.headers.get("Content-Type") == "application/json"
                error = response.json().get("error") if is_json else response.text
                answer = Answer(
                    response.status_code, error, sent, time.monotonic(), is_json
                )
            answers.append(answer)
        return answers

    per_client = in_threads(client, clients, stop)
    return [answer for answers in per_client for answer in answers]
