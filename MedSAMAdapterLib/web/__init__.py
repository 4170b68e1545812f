"""Browser viewer on trame-slicer (``medsam-adapter serve``). Knows nothing of Qt; a thin shell over ``scene``.

Modules: ``security`` (bind / token / data-folder / upload rules), ``interaction`` (mouse gestures -> prompts,
view pixels <-> RAS), ``session`` (``WebSession``: the scene and the MedSAM tool's actions), ``finetune``
(background training runs) are pure Python or MRML only and unit-tested without a browser. ``effect`` (the
trame-slicer segmentation effect), ``app`` + ``panel`` (the page), ``routes`` (HTTP) and ``server`` (start-up)
need trame-slicer: ``pip install medsam-adapter[web]``.
"""
