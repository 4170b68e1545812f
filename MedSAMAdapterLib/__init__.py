"""MedSAMAdapter: Segment Anything adapted to medical images.

Layers (each imports only the ones below it):
    cli / scene bridge / web  ->  engine  ->  models, training, evaluation  ->  torch, numpy, SimpleITK
The engine knows nothing of Slicer, VTK or Qt.
"""

__version__ = "0.1.0"
