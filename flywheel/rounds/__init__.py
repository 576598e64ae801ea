"""Flywheel rounds: the ledger of committed rounds, the round record, the promotion rule."""
