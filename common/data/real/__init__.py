"""Real CT (NIfTI, DICOM) imported into the dataset format: sources.py reads, importer.py writes."""
