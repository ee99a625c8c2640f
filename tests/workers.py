"""The workers of a preforking server, told apart by what /pool answers."""

import time

import requests


def worker_answers(gunicorn, served=False):
    """Ask /pool of a Gunicorn until both its workers have answered; return
    their answers by pid.

    With ``served``, send GET /messages before each question, and keep only
    the answers of workers that have served on a connection of their own.
    """
    # Each request goes to whichever worker takes it first.
    workers = {}
    for _ in range(200):
        if served:
            response = requests.get(gunicorn.url + "/messages", timeout=30)
            assert response.status_code == 200, response.text
        answer = requests.get(gunicorn.url + "/pool", timeout=30).json()
        assert answer["pid"] != gunicorn.process.pid
        if not served or answer["connects_in_this_process"] > 0:
            workers[answer["pid"]] = answer
        if len(workers) == 2:
            break
        time.sleep(0.02)
    return workers
