"""The workbench session the TUI drives: operations, figures, save and reload (no UI code)."""
