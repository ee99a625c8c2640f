"""The extension's commit signals: step 10's."""

from step10_helpers.helpers import before_models_committed
from step10_helpers.helpers import models_committed

__all__ = ["before_models_committed", "models_committed"]
