"""Tabular records: numeric columns cleaned, derived and standardized, fit on the training split only."""
