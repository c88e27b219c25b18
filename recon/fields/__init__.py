"""Fields the volume renderer (:mod:`recon.render.volume`) draws: NeRF density and SDF fields.

Every field follows :class:`recon.fields.base.Field` and the trainer protocol
(``parameter_groups``, ``default_learning_rates``, ``checkpoint_state``, ``from_checkpoint_state``).
"""

from recon.fields.base import Field, FieldSample, plain_config
from recon.fields.density import DensityField, DensityFieldConfig, extract_field_mesh
from recon.fields.encoding import DenseGridEncoding, HashGridEncoding, select_encoding, total_variation

# --- SDF fields (recon/fields/sdf.py, written separately): add `from recon.fields.sdf import ...` here ---
from recon.fields.sdf import (
    MultiResolutionDenseGrid,
    SDFField,
    SDFFieldConfig,
    collision_loss,
    extract_sdf_mesh,
    laplace_density,
    neus_alpha,
    object_centers_from_depth,
    object_centers_from_masks,
    object_centers_from_views,
    object_mask_loss,
    sdf_density_fn,
    update_sdf_occupancy,
)

# --- end of SDF fields ---

__all__ = [
    "DenseGridEncoding",
    "DensityField",
    "DensityFieldConfig",
    "Field",
    "FieldSample",
    "HashGridEncoding",
    "extract_field_mesh",
    "plain_config",
    "select_encoding",
    "total_variation",
    # SDF fields: add their names here
    "MultiResolutionDenseGrid",
    "SDFField",
    "SDFFieldConfig",
    "collision_loss",
    "extract_sdf_mesh",
    "laplace_density",
    "neus_alpha",
    "object_centers_from_depth",
    "object_centers_from_masks",
    "object_centers_from_views",
    "object_mask_loss",
    "sdf_density_fn",
    "update_sdf_occupancy",
]
