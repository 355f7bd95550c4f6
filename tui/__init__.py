"""Sysextant front ends: the command line and the Textual workbench over sysextant.core."""
