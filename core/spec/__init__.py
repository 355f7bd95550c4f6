"""The spec: its model (dataclasses, defaults, choices), the YAML reader with located problems, the comment-keeping editor, and where a build writes."""
