"""`python -m ledgerflow.cli`."""

from ledgerflow.cli import app

app()
