"""Version of the physlink_gym distribution."""

__version__ = "0.1.0"
