"""The extension's model base class: here, only its table names."""

import re

from sqlalchemy.orm import declared_attr


class Model:
    """What a model of the extension's needs from its base to be mapped at
    all: a table named after its class in snake_case (``Todo``: ``todo``)."""

    @declared_attr.directive
    def __tablename__(cls):
        return re.sub(r"(?<=[a-z0-9])(?=[A-Z])", "_", cls.__name__).lower()
