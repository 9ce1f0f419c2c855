"""Synthetic five-site abdominal CT: anatomy, tumors, scanner model, splits, storage and loading."""
