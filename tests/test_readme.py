"""What the README quotes and promises is what the repository holds."""

import re

import pytest

from .support import ROOT
from .support import STEPS

README = (ROOT / "README.md").read_text()

# A quoted block names its source on its first line: "# step03_teardown/db.py".
QUOTED_BLOCK = re.compile(r"```python\n# (step\d\d_\w+/[\w/]+\.py)\n(.*?)```", re.S)
QUOTES = QUOTED_BLOCK.findall(README)


def test_the_readme_quotes_every_step():
    assert {path.split("/")[0] for path, _ in QUOTES} == set(STEPS)


@pytest.mark.parametrize(("path", "code"), QUOTES, ids=[path for path, _ in QUOTES])
def test_quoted_code_is_what_the_step_contains(path, code):
    assert code in (ROOT / path).read_text()


def test_the_readme_sets_up_with_two_make_commands():
    block = re.search(r"## Two commands\n.*?```sh\n(.*?)```", README, re.S).group(1)
    commands = [line.split("#")[0].strip() for line in block.splitlines()]
    assert commands == ["make run", "make test"]
    makefile = (ROOT / "Makefile").read_text()
    for target in ("run", "test"):
        assert re.search(rf"^{target}: ", makefile, re.M)


@pytest.mark.parametrize("step", STEPS)
def test_the_readme_names_each_steps_concept_tests(step):
    assert f"tests/test_{step}.py" in README
    assert (ROOT / "tests" / f"test_{step}.py").is_file()


def test_every_test_the_readme_names_exists():
    test_sources = "".join(path.read_text() for path in (ROOT / "tests").glob("*.py"))
    named = set(re.findall(r"(?:`|::)(test_\w+)", README))
    assert named
    for name in named:
        assert f"def {name}(" in test_sources, name
