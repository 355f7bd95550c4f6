"""The OS tree: the lstat-only index, interval selections over it, and entries as they go into images."""
