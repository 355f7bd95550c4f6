"""Workbench widgets, one module per widget."""
