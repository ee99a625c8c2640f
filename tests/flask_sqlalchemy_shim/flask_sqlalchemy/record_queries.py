"""The extension's recorded queries: step 10's."""

from step10_helpers.helpers import get_recorded_queries

__all__ = ["get_recorded_queries"]
