"""Apps' instance folder, kept out of the reader's repository."""

from flask import Flask


def keep_out_of_the_instance_folder(monkeypatch, tmp_path):
    """Give apps an instance folder in tmp_path instead of the repository's.

    From step 5 on, creating an app connects to its database, which creates
    the SQLite file: a test must not leave one in the reader's instance/.
    """
    monkeypatch.setattr(
        Flask, "auto_find_instance_path", lambda app: str(tmp_path / "instance")
    )
