"""Entry points (`python -m experiments.<name>`) and the run-directory machinery they share."""
