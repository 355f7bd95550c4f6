"""The build pipeline: extension images and the slimmed UKI, reuse, verification, the report."""
