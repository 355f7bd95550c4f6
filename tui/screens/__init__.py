"""Workbench screens, one module per screen."""
