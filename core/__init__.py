"""Sysextant engine: spec, tree index, size model, image writers, signing. Never imports Textual."""
