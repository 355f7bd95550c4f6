"""Built-in themes (YAML), registered by the workbench at start."""
