"""A shim in place of Flask-SQLAlchemy, for running its own tests on step 10.

tests/test_flask_sqlalchemy_suite.py puts this folder first on the path of
a pytest run in the release's sdist: its tests import ``flask_sqlalchemy``
and get step 10 under the extension's names, and step10_plan.py says which
of them apply and how each is expected to end.
"""
