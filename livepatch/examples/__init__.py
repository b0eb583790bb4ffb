"""Bundled demo: the spam rule engine's host types, interface and rule versions."""
