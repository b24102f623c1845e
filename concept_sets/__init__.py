"""Concept sets shipped with dissect (data files; see SOURCES.md)."""
