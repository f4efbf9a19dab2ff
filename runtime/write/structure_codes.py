"""What each segmented structure *is*, in SNOMED CT, for the DICOM-SEG's Segment Description (PACS and viewers read
these codes, not the label names).

A structure name (as in a bundle's labels, e.g. the 50 TotalSegmentator total_mr structures) maps to a
:class:`StructureCode`: the Segmented Property Category (CID 7150), the Segmented Property Type, and, where the
structure has a side, a Segmented Property Type Modifier for laterality (SCT 7771000 "Left" / 24028007 "Right").

Source of the codes (facts; the table is ours): TotalSegmentator 2.18.0's ``resources/
totalsegmentator_snomed_mapping.csv`` (Apache-2.0), for 46 of the 50 total_mr structures. The four that file does
not list (total_mr's merged lungs, vertebrae and discs) take codes that the same file uses elsewhere -- Lung
39607008 (its lung rows' anatomic region) and Vertebra 51282000 (its ``vertebrae_lumbar`` row) -- and, for the
discs, SNOMED CT 360499006 "Intervertebral disc structure". One meaning is corrected from that file's
"Gluteus minius muscle" (code unchanged). ``hip_left``/``hip_right`` (the hip bones) keep that file's code
29836001 "Hip".

A name not in the table gets the generic :data:`GENERIC` code (category and type "Anatomical Structure"), so any
bundle still writes a valid SEG.
"""
from __future__ import annotations

from dataclasses import dataclass

#: (scheme, value, meaning) of one coded concept
Coded = tuple[str, str, str]

ANATOMICAL_STRUCTURE: Coded = ("SCT", "123037004", "Anatomical Structure")
LEFT: Coded = ("SCT", "7771000", "Left")
RIGHT: Coded = ("SCT", "24028007", "Right")


@dataclass(frozen=True)
class StructureCode:
    """Segmented property category, type and (for a sided structure) type modifier of one structure."""

    category: Coded
    type: Coded
    laterality: Coded | None = None


def _sct(value: str, meaning: str, laterality: Coded | None = None) -> StructureCode:
    return StructureCode(ANATOMICAL_STRUCTURE, ("SCT", value, meaning), laterality)


#: a structure whose name is not in :data:`STRUCTURE_CODES`
GENERIC = StructureCode(ANATOMICAL_STRUCTURE, ANATOMICAL_STRUCTURE)

#: structure name -> its codes (the 50 TotalSegmentator total_mr structures)
STRUCTURE_CODES: dict[str, StructureCode] = {
    "spleen": _sct("78961009", "Spleen"),
    "kidney_right": _sct("64033007", "Kidney", RIGHT),
    "kidney_left": _sct("64033007", "Kidney", LEFT),
    "gallbladder": _sct("28231008", "Gallbladder"),
    "liver": _sct("10200004", "Liver"),
    "stomach": _sct("69695003", "Stomach"),
    "pancreas": _sct("15776009", "Pancreas"),
    "adrenal_gland_right": _sct("23451007", "Adrenal gland", RIGHT),
    "adrenal_gland_left": _sct("23451007", "Adrenal gland", LEFT),
    "lung_left": _sct("39607008", "Lung", LEFT),
    "lung_right": _sct("39607008", "Lung", RIGHT),
    "esophagus": _sct("32849002", "Esophagus"),
    "small_bowel": _sct("30315005", "Small Intestine"),
    "duodenum": _sct("38848004", "Duodenum"),
    "colon": _sct("71854001", "Colon"),
    "urinary_bladder": _sct("89837001", "Urinary bladder"),
    "prostate": _sct("41216001", "Prostate"),
    "sacrum": _sct("54735007", "Sacrum"),
    "vertebrae": _sct("51282000", "Vertebra"),
    "intervertebral_discs": _sct("360499006", "Intervertebral disc"),
    "spinal_cord": _sct("2748008", "Spinal cord"),
    "heart": _sct("80891009", "Heart"),
    "aorta": _sct("15825003", "Aorta"),
    "inferior_vena_cava": _sct("64131007", "Inferior vena cava"),
    "portal_vein_and_splenic_vein": _sct("110765007", "Portal vein and splenic vein"),
    "iliac_artery_left": _sct("73634005", "Common iliac artery", LEFT),
    "iliac_artery_right": _sct("73634005", "Common iliac artery", RIGHT),
    "iliac_vena_left": _sct("46027005", "Common iliac vein", LEFT),
    "iliac_vena_right": _sct("46027005", "Common iliac vein", RIGHT),
    "humerus_left": _sct("85050009", "Humerus", LEFT),
    "humerus_right": _sct("85050009", "Humerus", RIGHT),
    "scapula_left": _sct("79601000", "Scapula", LEFT),
    "scapula_right": _sct("79601000", "Scapula", RIGHT),
    "clavicula_left": _sct("51299004", "Clavicle", LEFT),
    "clavicula_right": _sct("51299004", "Clavicle", RIGHT),
    "femur_left": _sct("71341001", "Femur", LEFT),
    "femur_right": _sct("71341001", "Femur", RIGHT),
    "hip_left": _sct("29836001", "Hip", LEFT),
    "hip_right": _sct("29836001", "Hip", RIGHT),
    "gluteus_maximus_left": _sct("181674001", "Gluteus maximus muscle", LEFT),
    "gluteus_maximus_right": _sct("181674001", "Gluteus maximus muscle", RIGHT),
    "gluteus_medius_left": _sct("78333006", "Gluteus medius muscle", LEFT),
    "gluteus_medius_right": _sct("78333006", "Gluteus medius muscle", RIGHT),
    "gluteus_minimus_left": _sct("75297007", "Gluteus minimus muscle", LEFT),
    "gluteus_minimus_right": _sct("75297007", "Gluteus minimus muscle", RIGHT),
    "autochthon_left": _sct("244849004", "Deep muscle of back", LEFT),
    "autochthon_right": _sct("244849004", "Deep muscle of back", RIGHT),
    "iliopsoas_left": _sct("68455001", "Iliopsoas muscle", LEFT),
    "iliopsoas_right": _sct("68455001", "Iliopsoas muscle", RIGHT),
    "brain": _sct("12738006", "Brain"),
}


def structure_code(name: str) -> StructureCode:
    """The codes of structure ``name`` (case-insensitive); :data:`GENERIC` for a name not in the table."""
    return STRUCTURE_CODES.get(name.strip().lower(), GENERIC)
