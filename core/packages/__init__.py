"""Package databases read offline and read-only from an OS tree (dpkg, apk, rpm sqlite), and which tree entries each package owns."""
