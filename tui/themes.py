"""Themes from YAML and the user's workbench settings.

Themes are YAML files in :mod:`sysextant.themes` (``name``, ``dark``, the Textual colour keys and a
``variables`` mapping for Sysextant's own variables such as ``ext-0`` or ``risk``), turned into
:class:`textual.theme.Theme` objects and registered at start. Settings (the chosen theme) live in
``settings.yaml`` under ``$SYSEXTANT_CONFIG_DIR``, else ``$XDG_CONFIG_HOME/sysextant``, else
``~/.config/sysextant``.
"""

from __future__ import annotations

import os
from importlib import resources
from pathlib import Path
from typing import Any

import yaml
from textual.theme import Theme

from sysextant.core.atomic import write_atomic

DEFAULT_THEME = "sysextant-dark"

#: Defaults for the variables our CSS uses, so Textual's built-in themes work too.
VARIABLE_DEFAULTS = {
    "risk": "#ff8f3f",
    "bar": "#5fafff",
    "bar-empty": "#555555 40%",
    "muted": "#888888",
    "ext-0": "#d7af5f",
    "ext-1": "#af87ff",
    "ext-2": "#5fd7d7",
    "ext-3": "#ff87af",
    "ext-4": "#87d75f",
    "ext-5": "#ffaf5f",
}

_THEME_KEYS = ("name", "primary", "secondary", "warning", "error", "success", "accent", "foreground",
               "background", "surface", "panel", "boost", "dark", "luminosity_spread", "text_alpha",
               "variables")


def theme_from_mapping(data: dict[str, Any]) -> Theme:
    """A Theme from a YAML mapping; unknown keys are an error naming the key."""
    unknown = set(data) - set(_THEME_KEYS)
    if unknown:
        raise ValueError(f"unknown theme key(s): {', '.join(sorted(unknown))}")
    if "name" not in data or "primary" not in data:
        raise ValueError("a theme needs at least 'name' and 'primary'")
    kwargs = dict(data)
    kwargs["variables"] = {str(k): str(v) for k, v in (data.get("variables") or {}).items()}
    return Theme(**kwargs)


def builtin_themes() -> list[Theme]:
    """The themes shipped in the sysextant.themes package, sorted by name."""
    out = []
    for entry in sorted(resources.files("sysextant.themes").iterdir(), key=lambda e: e.name):
        if entry.name.endswith((".yaml", ".yml")):
            out.append(theme_from_mapping(yaml.safe_load(entry.read_text(encoding="utf-8"))))
    return out


def config_dir() -> Path:
    env = os.environ.get("SYSEXTANT_CONFIG_DIR")
    if env:
        return Path(env)
    xdg = os.environ.get("XDG_CONFIG_HOME")
    return Path(xdg) / "sysextant" if xdg else Path.home() / ".config" / "sysextant"


def settings_path() -> Path:
    return config_dir() / "settings.yaml"


def load_settings() -> dict[str, Any]:
    """The saved settings, or {} when there are none or the file cannot be read."""
    try:
        data = yaml.safe_load(settings_path().read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError, UnicodeDecodeError):
        return {}
    return data if isinstance(data, dict) else {}


def save_settings(settings: dict[str, Any]) -> None:
    """Write the settings atomically (creating the folder)."""
    text = "# Sysextant workbench settings (written by the workbench)\n" + yaml.safe_dump(settings, sort_keys=True)
    write_atomic(settings_path(), text.encode("utf-8"))
