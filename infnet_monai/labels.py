"""What the values of a mask mean: infection (0/1) or infection patterns (0/1/2), with names,
coded concepts and display colours, and the sidecar JSON that names them for a viewer.

Codes (scheme, value, meaning) are DICOM's own from PS3.16 CID 6102/6104 (chest CT findings,
abnormal opacity): ``(DCM, 112001, Opacity)`` for the infection (ground glass and consolidation
alike), ``(DCM, 112120, Ground glass opacity)``. Consolidation has no code in those tables; it
carries a local code of this package (``99INFNET``, the private scheme prefix DICOM reserves) so
that no wrong standard code is stored. Used by the label sidecar and the DICOM SEG segments."""

from __future__ import annotations

import json
import os
from pathlib import Path

from monai.config import KeysCollection
from monai.transforms import MapTransform
from monai.utils import MetaKeys

from infnet_monai.naming import case_name
from infnet_monai.utils import atomic_output

__all__ = ["INFECTION_LABELS", "PATTERN_LABELS", "PATTERN_FOLDERS", "class_folder", "labels_of", "class_names",
           "sidecar_path", "write_label_sidecar", "LabelSidecard"]

# value -> (name, coded concept (scheme, value, meaning) or None, display colour RGB)
INFECTION_LABELS = {
    0: ("background", None, (0, 0, 0)),
    1: ("infection", ("DCM", "112001", "Opacity"), (255, 0, 0)),
}
PATTERN_LABELS = {
    0: ("background", None, (0, 0, 0)),
    1: ("ground-glass opacity", ("DCM", "112120", "Ground glass opacity"), (255, 200, 0)),
    2: ("consolidation", ("99INFNET", "consolidation", "Consolidation"), (220, 30, 30)),
}

# the folder of each class's slice maps (``infnet-monai predict-slices --classes patterns``)
PATTERN_FOLDERS = {1: "GGO", 2: "Consolidation"}


def class_folder(value: int) -> str:
    """Folder name of class ``value``'s slice maps: ``GGO``, ``Consolidation``, else ``class_<value>``."""
    return PATTERN_FOLDERS.get(int(value), f"class_{int(value)}")


def labels_of(classes: str) -> dict[int, tuple[str, str | None, tuple[int, int, int]]]:
    """The label table of ``classes`` (``"infection"`` or ``"patterns"``)."""
    tables = {"infection": INFECTION_LABELS, "patterns": PATTERN_LABELS}
    if classes not in tables:
        raise ValueError(f"classes must be one of {', '.join(tables)}, got {classes!r}")
    return tables[classes]


def class_names(classes: str) -> dict[int, str] | None:
    """Label value -> name of the classes a burden report counts one by one (``"patterns"``),
    None for the binary infection mask."""
    if classes == "infection":
        return None
    return {value: name for value, (name, _, _) in labels_of(classes).items() if value > 0}


def sidecar_path(mask_path: str | os.PathLike) -> Path:
    """``<mask name without .nii.gz/.nii>.json`` beside the mask."""
    return Path(mask_path).with_name(f"{case_name(mask_path)}.json")


def write_label_sidecar(mask_path: str | os.PathLike, classes: str, overwrite: bool = True) -> Path:
    """:func:`sidecar_path` of the mask: ``{"labels": [{"value", "name", "code": [scheme, value,
    meaning] or null, "color"}, ...]}`` (atomic). Returns its path."""
    mask_path = Path(mask_path)
    path = sidecar_path(mask_path)
    table = [
        {"value": value, "name": name, "code": list(code) if code else None, "color": list(colour)}
        for value, (name, code, colour) in labels_of(classes).items()
    ]
    with atomic_output(path, overwrite=overwrite) as tmp:
        tmp.write_text(json.dumps({"mask": mask_path.name, "labels": table}, indent=2) + "\n", encoding="utf-8")
    return path


class LabelSidecard(MapTransform):
    """Write the label sidecar (:func:`write_label_sidecar`) beside each saved labelmap of
    ``keys``: after ``SaveImaged(..., savepath_in_metadict=True)``, which records the written
    path in the meta (``saved_to``). A binary infection mask (``classes="infection"``) gets none,
    as in ``infnet-monai segment``."""

    def __init__(self, keys: KeysCollection, classes: str = "patterns", allow_missing_keys: bool = False) -> None:
        super().__init__(keys, allow_missing_keys)
        labels_of(classes)  # a known choice
        self.classes = classes

    def __call__(self, data):
        d = dict(data)
        if self.classes == "infection":
            return d
        for key in self.key_iterator(d):
            saved = getattr(d[key], "meta", {}).get(MetaKeys.SAVED_TO)
            if saved is None:
                raise ValueError(
                    f"{key}: no saved path in its meta; save it with SaveImaged(savepath_in_metadict=True) first"
                )
            write_label_sidecar(saved, self.classes)
        return d
