"""Slicer-only helpers of the MedSAMAdapter module (Qt and ``slicer.util`` allowed here, unlike MedSAMAdapterLib):
``install`` (Python dependencies, asking first) and ``finetune`` (training in a background process)."""
