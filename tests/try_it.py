"""What a step's README asks a reader to try, and a reader who does it.

A README's **Try it.** paragraphs (and step 4's **Try the fork.**) hold its
commands in fenced blocks: ``sh`` blocks, a command a line or over lines
that continue, and ``pycon`` blocks, what a reader types into the ``flask
shell`` that the command before opens (after ``>>>``) and what it answers.
The reader runs them in order in a copy of the repository of its own, as
README.md's commands are typed there: ``.venv/bin/...`` and ``instance/``
are the copy's.
"""

import json
import os
import re
import shlex
import shutil
import urllib.parse
from dataclasses import dataclass

import requests

from testbed import ROOT
from testbed.loopback import free_port
from testbed.terminals import Terminals

# A Try paragraph begins with its bold title; the section ends at the next
# paragraph that begins with another bold title ("**Proof.**").
TITLE = re.compile(r"^\*\*([^*\n]+)\.\*\*", re.M)
BLOCK = re.compile(r"^```(\w*)\n(.*?)^```$", re.M | re.S)


def try_it_sections(text):
    """Return a README's Try sections, in order: (title, text)."""
    titles = list(TITLE.finditer(text))
    sections = []
    for title, after in zip(titles, [*titles[1:], None], strict=True):
        if title.group(1).startswith("Try "):
            end = after.start() if after else len(text)
            sections.append((title.group(1), text[title.start() : end]))
    return sections


@dataclass
class Command:
    """A command as a reader types it, the lines typed into it, and the
    lines it answers them with."""

    text: str
    stdin: str = ""
    answers: tuple = ()


def commands(section):
    """Return the commands of a Try section's blocks, in the order written."""
    found = []
    for language, code in BLOCK.findall(section):
        if language == "pycon":
            # A session in the shell that the command before opened.
            assert found, "a pycon block needs the flask shell line before it"
            assert re.search(r"\bflask\b.*\bshell$", found[-1].text), found[-1]
            lines = code.splitlines()
            found[-1].stdin = "".join(
                line[4:] + "\n" for line in lines if line.startswith((">>> ", "... "))
            )
            found[-1].answers = tuple(
                line for line in lines if line and not line.startswith((">>>", "..."))
            )
            continue
        assert language == "sh", f"a block of {language or 'no language'}"
        lines = []
        for line in code.splitlines():
            lines.append(line)
            command = "\n".join(lines)
            if command.endswith("\\") or not is_complete(command):
                continue
            if shlex.split(command, comments=True):
                found.append(Command(command))
            lines = []
        assert not lines, f"an unfinished command: {lines}"
    return found


def is_complete(command):
    """Say whether a command's quotes are all closed."""
    try:
        shlex.split(command, comments=True)
    except ValueError:
        return False
    return True


# Code spans outside the blocks that a reader would type into a terminal.
INLINE_COMMAND = re.compile(r"`((?:(?:make|curl|sqlite3|psql)\s|\.venv/bin/)[^`]*)`")


def inline_commands(section):
    """Return the commands a Try section names in its prose, not in a block."""
    prose = BLOCK.sub("", section)
    return [" ".join(found.split()) for found in INLINE_COMMAND.findall(prose)]


# The commands that serve until they are stopped.
SERVES = re.compile(
    r"^make run\b|\bflask\b.*\brun\b|\bgunicorn\b|\buwsgi\b"
    r"|\bpython -m testbed\.(?:postgres|pgbouncer|mariadb)\b"
)
# The ports the READMEs serve on: flask run's and make run's, and the WSGI
# servers'.
README_PORTS = (5000, 8000)
# What make run serves on unless told.
MAKE_RUN_PORT = int(
    re.search(r"^PORT \?= (\d+)$", (ROOT / "Makefile").read_text(), re.M).group(1)
)
# The port a README's psql command leaves to the reader, from the first
# line of the throwaway server's command: "127.0.0.1:NNNNN/messages", or
# PgBouncer's "on port NNNNN".
PORT_PLACEHOLDER = re.compile(r"(?<=-p )(?:PORT|NNNNN)\b")
PRINTED_PORT = re.compile(r"\bon port (\d+)|@127\.0\.0\.1:(\d+)/messages\b")
# What a test's environment has and a reader's does not: the databases the
# tests hand out, pytest's variables, settings of the steps, and what make
# test's make passes on to the make run of a README.
NOT_THE_READERS = re.compile(
    r"^(?:PYTEST_|FLASK_|TEST_|MAKE)|^(?:AUDIT_)?DATABASE_URL$|^(?:PYTHONPATH|MFLAGS)$"
)


def copy_of_the_repository(folder):
    """Copy what serving the steps uses into ``folder`` (the steps, the
    AsyncSession example, the Makefile, pyproject.toml, testbed), and link
    the repository's .venv."""
    leave_out = shutil.ignore_patterns("__pycache__", "instance", "*.egg-info")
    for path in [
        *ROOT.glob("step[0-9][0-9]_*"),
        ROOT / "async_session",
        ROOT / "testbed",
    ]:
        shutil.copytree(path, folder / path.name, ignore=leave_out)
    for name in ("Makefile", "pyproject.toml"):
        shutil.copy2(ROOT / name, folder / name)
    (folder / ".venv").symlink_to(ROOT / ".venv")
    return folder


class Reader:
    """Run a README's commands in order, as a reader in several terminals.

    A command that serves is left running in a terminal of its own, and the
    reader waits until it answers; one that serves on a port already served
    stops the server there first, as the README's reader stops it. The
    others must exit 0; a python block's lines, typed into the shell, must
    raise nothing. The README's ports become free loopback ports, so that
    tests run side by side; its placeholder for a printed port becomes that
    port.
    """

    def __init__(self, folder, log_folder):
        self.folder = folder
        self.ports = {port: free_port() for port in README_PORTS}
        env = {
            name: value
            for name, value in os.environ.items()
            if not NOT_THE_READERS.search(name)
        }
        self.terminals = Terminals(folder, {**env, "PYTHONUNBUFFERED": "1"}, log_folder)
        self.serving = {}
        self.printed_port = None
        self.command = None
        self.output = ""

    def __enter__(self):
        self.terminals.__enter__()
        return self

    def __exit__(self, *exc_info):
        self.terminals.__exit__(*exc_info)

    def url(self, readme_port=MAKE_RUN_PORT):
        """Return the URL of what serves on a README's port."""
        return f"http://127.0.0.1:{self.ports[readme_port]}"

    def get(self, path, readme_port=MAKE_RUN_PORT):
        """Send a GET request, as the page or a reload would."""
        return requests.get(self.url(readme_port) + path, timeout=30)

    def post(self, path, readme_port=MAKE_RUN_PORT, **kwargs):
        """Send a POST request, as the page's form would."""
        return requests.post(self.url(readme_port) + path, timeout=30, **kwargs)

    def log(self, readme_port=MAKE_RUN_PORT):
        """Return what the command serving on a README's port has printed."""
        return self.serving[readme_port].log()

    def stop(self, readme_port):
        """Stop what serves on a README's port, as Ctrl-C would."""
        self.terminals.stop(self.serving.pop(readme_port))

    def stop_all(self):
        """Stop everything that serves."""
        for readme_port in list(self.serving):
            self.stop(readme_port)

    def type(self, command):
        """Run one of the README's commands, as a reader would type it."""
        self.command = command
        typed = self.as_typed_here(command.text)
        if not SERVES.search(" ".join(shlex.split(command.text, comments=True))):
            done = self.terminals.run(typed, stdin=command.stdin)
            self.output = done.stdout + done.stderr
            assert done.returncode == 0, (command.text, self.output)
            # The interactive shell goes on after an error, and exits 0.
            assert "Traceback" not in self.output, (command.text, self.output)
            # Its prompts, on no terminal, run into the lines it answers.
            answered = [
                re.sub(r"^(?:(?:>>>|\.\.\.) )+", "", line)
                for line in done.stdout.splitlines()
            ]
            for answer in command.answers:
                assert answer in answered, (command.text, answer, self.output)
            return
        readme_port = self.port_served_by(command.text)
        if readme_port in self.serving:
            self.stop(readme_port)
        self.serving[readme_port] = self.terminals.start(typed, self.url(readme_port))
        self.output = self.log(readme_port)
        if found := PRINTED_PORT.search(self.output):
            self.printed_port = int(found.group(1) or found.group(2))
        self.check_it_serves_the_copy(readme_port)

    def port_served_by(self, text):
        """Return the README's port that a command serves on."""
        named = [port for port in README_PORTS if re.search(rf"[\s:=]{port}\b", text)]
        if not named and re.match(r"make run\b", text):
            named = [MAKE_RUN_PORT]
        assert len(named) == 1, text
        return named[0]

    def as_typed_here(self, text):
        """Return a README's command with this reader's ports."""
        for readme_port, port in self.ports.items():
            text = re.sub(rf"(?<=[\s:=]){readme_port}\b", str(port), text)
        if re.match(r"make run\b", text):
            if "PORT=" not in text:
                text += f" PORT={self.ports[MAKE_RUN_PORT]}"
            # The repository's .venv, linked here, is installed: make must
            # not install it again from this copy.
            text = text.replace("make run", "make -o .venv/.installed run", 1)
        if PORT_PLACEHOLDER.search(text):
            assert self.printed_port is not None, f"no port printed for {text}"
            text = PORT_PLACEHOLDER.sub(str(self.printed_port), text)
        return text

    def check_it_serves_the_copy(self, readme_port):
        """Check that the app served is this copy's: its SQLite file is in
        the copy's instance folder, not the repository's."""
        url = self.get("/pool", readme_port).json()["url"]
        if url.startswith("sqlite"):
            # sqlite:///..., or the AsyncSession example's sqlite+aiosqlite.
            path = urllib.parse.unquote(url.split(":///", 1)[1])
            assert path.startswith(f"{self.folder}/instance/"), url


def engine_options(command):
    """Return the FLASK_ENGINE_OPTIONS a command sets."""
    found = re.search(r"FLASK_ENGINE_OPTIONS='([^']+)'", command.text)
    return json.loads(found.group(1))
