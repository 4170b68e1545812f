"""Segment names -> SNOMED CT terminology (3D Slicer style) and recommended colours.

``Resources/terminology.json`` lists entries with a category / type (/ type modifier) triplet each, in the coding
form Slicer's terminology files use (``CodingSchemeDesignator`` "SCT", ``CodeValue``, ``CodeMeaning``), a
recommended colour (0-255 RGB) and ``verified`` (false = the code was not checked; see the file's description).
:func:`terminology_for` finds the entry for a segment name written in any usual way ("LV", "left ventricle",
"kidney_right", "Right Kidney"...); :func:`slicer_terminology_tag` writes the ``TerminologyEntry`` value that
``.seg.nrrd`` segment tags carry.
"""

from __future__ import annotations

import copy
import json
import re
from functools import lru_cache
from pathlib import Path
from typing import Any

TERMINOLOGY_JSON = Path(__file__).resolve().parents[2] / "Resources" / "terminology.json"
DEFAULT_CONTEXT = "Segmentation category and type - 3D Slicer General Anatomy list"
DEFAULT_ANATOMIC_CONTEXT = "Anatomic codes - DICOM master list"


def normalize_name(name: str) -> str:
    """Lower case, any run of spaces / hyphens / underscores / dots / slashes -> one underscore."""
    return re.sub(r"[\s_\-./]+", "_", str(name).strip().lower()).strip("_")


@lru_cache(maxsize=1)
def _table() -> tuple[dict[str, Any], dict[str, dict[str, Any]]]:
    doc = json.loads(TERMINOLOGY_JSON.read_text(encoding="utf-8"))
    index: dict[str, dict[str, Any]] = {}
    for entry in doc["entries"]:
        for key in [entry["name"], *entry.get("aliases", [])]:
            index.setdefault(normalize_name(key), entry)
    return doc, index


def terminology_entries() -> list[dict[str, Any]]:
    """Every entry of ``Resources/terminology.json`` (copies)."""
    return copy.deepcopy(_table()[0]["entries"])


def terminology_for(name: str) -> dict[str, Any] | None:
    """The terminology entry for a segment name (a copy, with ``context`` / ``anatomic_context`` filled in), or
    None when the name is unknown. Matching ignores case and spaces / hyphens / underscores; each entry's aliases
    count too (``LV``, ``left ventricle cavity``, ``heart_ventricle_left`` -> left_ventricle)."""
    doc, index = _table()
    entry = index.get(normalize_name(name))
    if entry is None:
        return None
    out = copy.deepcopy(entry)
    out.setdefault("context", doc.get("terminology_context", DEFAULT_CONTEXT))
    out.setdefault("anatomic_context", doc.get("anatomic_context", DEFAULT_ANATOMIC_CONTEXT))
    return out


def color_for(name: str) -> tuple[float, float, float] | None:
    """Recommended colour (r, g, b in 0..1) for a segment name, or None when the name is unknown."""
    entry = terminology_for(name)
    if entry is None or not entry.get("color"):
        return None
    r, g, b = (float(c) / 255.0 for c in entry["color"][:3])
    return (r, g, b)


def _code(coding: dict[str, Any] | None) -> str:
    if not coding:
        return "^^"
    return f"{coding.get('CodingSchemeDesignator', '')}^{coding.get('CodeValue', '')}^{coding.get('CodeMeaning', '')}"


def slicer_terminology_tag(entry: dict[str, Any]) -> str:
    """``TerminologyEntry`` value of a ``.seg.nrrd`` segment tag (without the ``TerminologyEntry:`` key), e.g.
    ``Segmentation category and type - 3D Slicer General Anatomy list~SCT^123037004^Anatomical Structure~SCT^10200004^Liver~^^~Anatomic codes - DICOM master list~^^~^^``
    (context ~ category ~ type ~ type modifier ~ anatomic context ~ anatomic region ~ region modifier)."""
    context = entry.get("context", DEFAULT_CONTEXT)
    anatomic = entry.get("anatomic_context", DEFAULT_ANATOMIC_CONTEXT)
    return "~".join([context, _code(entry.get("category")), _code(entry.get("type")),
                     _code(entry.get("typeModifier")), anatomic, _code(entry.get("anatomicRegion")),
                     _code(entry.get("anatomicRegionModifier"))])
