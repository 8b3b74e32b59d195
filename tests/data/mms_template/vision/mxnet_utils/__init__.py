"""The archive's own MXNet helpers, as the template ships them beside its services."""
