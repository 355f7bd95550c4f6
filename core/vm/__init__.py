"""Booting what sysextant built in a VM (QEMU + OVMF with Secure Boot) and reading the proof off its console."""
