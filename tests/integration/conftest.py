"""Fixtures shared by the integration tests."""

from .mail_kit import smtp

__all__ = ["smtp"]
