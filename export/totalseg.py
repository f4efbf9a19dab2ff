"""TotalSegmentator's wrapping of nnU-Net, as facts recorded into a bundle by ``edgeseg export --totalseg``.

TotalSegmentator does not hand an image to nnU-Net as it is. Its ``nnUNet_predict_image``
(``totalsegmentator/nnunet.py``, release :data:`RELEASE`) does this:

1. ``nib.as_closest_canonical``: the closest RAS orientation (axis flips and permutations only).
2. ``change_spacing(img, resample, order=resampling_order, dtype=np.int32)``: ``scipy.ndimage.zoom`` with
   ``mode="nearest"`` to the task spacing, the zoom being the header voxel size (float32) over that spacing, then
   truncation to int32. ``--resampling_order`` (``-ro``) defaults to **1** since release 2.16.0; 2.15.0 added
   the option with default 3, and every release before it used order 3 without an option.
3. nnU-Net's predictor on the written NIfTI: tile step 0.8 for ``total``/``total_mr`` (all resolutions),
   Gaussian weighting, no test-time mirroring, fold 0.
4. Parts of a multi-model task are merged in task order; a later part overwrites an earlier one where it found a
   structure (``np.copyto(..., where=mapped != 0)``).
5. ``change_spacing(pred, resample, img_in_shape, order=0, force_affine=img_in.affine)`` back to the input
   shape, then ``undo_canonical``.

TotalSegmentator's ``--higher_order_resampling`` (nnU-Net resamples itself, with TotalSegmentator's own cropped
logits resampling) is not reproduced. The task spacings below are TotalSegmentator's task configuration
(``map_tasks_config.py``) for the ``total_mr`` datasets; another dataset falls back to its plans' spacing.
"""
from __future__ import annotations

from edgeseg.bundle.schema import PreResample

#: the TotalSegmentator release whose wrapper these settings reproduce (and that the parity tests run)
RELEASE = "2.18.0"
#: its default input resampling order; ``LEGACY_ORDER`` reproduces releases up to 2.15.0
DEFAULT_ORDER = 1
LEGACY_ORDER = 3
#: tile step for the total / total_mr tasks at every resolution
TILE_STEP = 0.8
#: folds TotalSegmentator runs (its task configuration default)
FOLDS = ("0",)
#: total_mr dataset id -> (spacing mm used for all three axes, mode name)
TASK_SPACING = {850: (1.5, "default"), 851: (1.5, "default"), 852: (3.0, "--fast"), 853: (6.0, "--fastest")}


def dataset_id(dataset_name: str) -> int | None:
    """850 for "Dataset850_TotalSegMRI_part1_organs_1088subj"; None when the name has no DatasetNNN prefix."""
    head = dataset_name.split("_", 1)[0]
    if head.startswith("Dataset") and head[7:].isdigit():
        return int(head[7:])
    return None


def pre_resample(dataset_name: str, plans_spacing_zyx: list[float], order: int) -> PreResample:
    """The pre-resampling of a variant whose first part is ``dataset_name`` (spacing in world x, y, z mm)."""
    known = TASK_SPACING.get(dataset_id(dataset_name) or -1)
    if known:
        spacing = (known[0], known[0], known[0])
    else:  # the plans' spacing, nnU-Net's (z, y, x) turned to world (x, y, z)
        spacing = (float(plans_spacing_zyx[2]), float(plans_spacing_zyx[1]), float(plans_spacing_zyx[0]))
    return PreResample(spacing=spacing, order=int(order), cast="int32", mode="nearest", order_back=0,
                       header_float32=True)


def follows(dataset_name: str, order: int) -> str:
    """Human-readable record of whose behaviour a variant reproduces."""
    known = TASK_SPACING.get(dataset_id(dataset_name) or -1)
    task = f"total_mr {known[1]}" if known else "task spacing from the plans"
    return f"TotalSegmentator {RELEASE} ({task}, --resampling_order {order})"
