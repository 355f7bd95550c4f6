"""What a spec does to the UKI before anything is built: the exact plan, the compressed-size estimate, the forecast against the firmware limit."""
