"""The names ``flask shell`` starts with: step 10's."""

from step10_helpers.helpers import shell_names as add_models_to_shell

__all__ = ["add_models_to_shell"]
