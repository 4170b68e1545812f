"""The "MedSAM" Segment Editor effect (registered by ``SegmentEditorMedSAM.py``)."""
