"""L2 clipping of a device's update, all of its arrays treated as one vector."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from fedge.edge_client.arrays import Array
from fedge.edge_client.errors import PrivacyError

# Clipped updates are scaled to C * (1 - margin) so that float32 rounding of the scaled
# values (relative error <= 2**-24 per element) can never push the norm above C.
_FLOAT32_MARGIN = 1e-6


@dataclass(frozen=True)
class ClippedUpdate:
    """An update after clipping.

    Attributes
    ----------
    arrays : the clipped arrays (float32, same shapes as the input).
    norm : L2 norm of the update before clipping.
    within_clip : the adaptive-clipping bit, ``norm <= clip``.
    """

    arrays: list[Array]
    norm: float
    within_clip: bool


def l2_norm(update: Sequence[Array]) -> float:
    """L2 norm of all arrays of `update` together (computed in float64).

    Raises
    ------
    PrivacyError
        If `update` is empty, holds non-float arrays, or non-finite values.
    """
    if len(update) == 0:
        raise PrivacyError("update has no arrays to clip")
    total = 0.0
    for index, array in enumerate(update):
        values = np.asarray(array)
        if not np.issubdtype(values.dtype, np.floating):
            raise PrivacyError(f"update array {index} has dtype {values.dtype}, expected float")
        if not np.all(np.isfinite(values)):
            raise PrivacyError(f"update array {index} holds NaN or infinite values")
        flat = values.astype(np.float64, copy=False).ravel()
        total += float(np.dot(flat, flat))
    return math.sqrt(total)


def clip_update(update: Sequence[Array], clip: float) -> ClippedUpdate:
    """Scale `update` down so that its L2 norm is at most `clip`; leave it as is if already so.

    Parameters
    ----------
    update : the device's update, a list of float arrays (one per weight tensor).
    clip : the L2 clip norm C (> 0), fixed or the current adaptive one.

    Returns
    -------
    ClippedUpdate
        float32 arrays whose joint norm is <= `clip`, the original norm, and the bit
        ``norm <= clip`` that adaptive clipping reports to the server.
    """
    if not math.isfinite(clip) or clip <= 0:
        raise PrivacyError(f"clip norm must be a finite number > 0, got {clip}")
    norm = l2_norm(update)
    if norm <= clip:
        arrays = [np.asarray(a).astype(np.float32) for a in update]
        # A float64 input right at the clip could round up when cast to float32.
        if l2_norm(arrays) <= clip:
            return ClippedUpdate(arrays=arrays, norm=norm, within_clip=True)
    factor = min(1.0, clip / norm) * (1.0 - _FLOAT32_MARGIN)
    arrays = [(np.asarray(a, dtype=np.float64) * factor).astype(np.float32) for a in update]
    return ClippedUpdate(arrays=arrays, norm=norm, within_clip=norm <= clip)
