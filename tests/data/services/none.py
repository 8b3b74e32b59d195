"""A module with no ModelService class at all."""


class Helper:
    pass
