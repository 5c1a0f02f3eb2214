"""The widgets' headless logic, by concern, without napari or Qt: the docks in
:mod:`napari_deepblur._qt` read their controls and layers into a request, run its job in a
thread worker and add the layer data tuples it returns; everything in between is here and
is tested without a viewer.

- :mod:`.state`: the run state of a dock (:class:`RunStateMachine`);
- :mod:`.requests`: the Identify and Deblur jobs (:func:`iter_identify_layers`,
  :func:`iter_deblur_layers`) and their requests;
- :mod:`.calibrate`: the "Calibrate from beads" job;
- :mod:`.channels`: the channel axis of a layer, and no job across channels;
- :mod:`.estimates`: which blur estimates the Deblur dock offers for an image, and the
  model to deblur one with;
- :mod:`.layers`: checks of the layers chosen, and the layers we add;
- :mod:`.tables`: the coefficient table and the summary of an estimate;
- :mod:`.messages`: every exception as one sentence for a notification.

The PSF layers' metadata and the optics known for a layer are
:mod:`napari_deepblur.formats`' (re-exported here for the docks).
"""

from ..formats import (
    PSF_FORMAT,
    KnownOptics,
    channel_wavelengths_nm,
    is_psf_metadata,
    known_optics,
    psf_file_path,
    psf_metadata,
)
from .channels import channel_count, check_not_across_channels, layer_axes
from .estimates import (
    OTHER_IMAGE_LABEL,
    estimate_model,
    foreign_estimate_warning,
    model_to_follow,
    optics_differences,
    order_estimates,
)
from .layers import (
    AUXILIARY_LAYERS,
    DEBLUR_MIN_PX,
    IDENTIFY_MIN_PX,
    PSF_COLORMAP,
    LayerDataTuple,
    beside_image,
    check_layer,
    estimate_from_psf_layer,
    estimate_layers,
    estimate_source,
    is_auxiliary_layer,
    is_psf_of,
    kernel_map_layer_data,
    layer_geometry,
    matched_contrast_limits,
    plane_index,
    psf_layer_data,
    psf_map_layer_data,
    rename_sources,
    renamed_source,
    weight_map_layers_data,
)
from .messages import UserError, guarded, user_message
from .requests import (
    IDENTIFY_STACK_MODES,
    DeblurRequest,
    DeblurResult,
    IdentifyRequest,
    IdentifyResult,
    deblur_layers,
    fc_text,
    identify_layers,
    is_field_model,
    iter_deblur_layers,
    iter_identify_layers,
)
from .state import RunState, RunStateMachine
from .tables import (
    BAR_WIDTH,
    KERNEL_MAP_GRID,
    UNCERTAIN_MARK,
    UNCERTAIN_TOOLTIP,
    coefficient_columns,
    coefficient_rows,
    coefficient_text,
    field_summary,
    is_field_estimate,
    is_uncertain,
    magnitude_bar,
    rms_radius,
    summary_text,
)

__all__ = [
    "AUXILIARY_LAYERS",
    "BAR_WIDTH",
    "DEBLUR_MIN_PX",
    "IDENTIFY_MIN_PX",
    "IDENTIFY_STACK_MODES",
    "KERNEL_MAP_GRID",
    "OTHER_IMAGE_LABEL",
    "PSF_COLORMAP",
    "PSF_FORMAT",
    "UNCERTAIN_MARK",
    "UNCERTAIN_TOOLTIP",
    "DeblurRequest",
    "DeblurResult",
    "IdentifyRequest",
    "IdentifyResult",
    "KnownOptics",
    "LayerDataTuple",
    "RunState",
    "RunStateMachine",
    "UserError",
    "beside_image",
    "channel_count",
    "check_not_across_channels",
    "check_layer",
    "coefficient_columns",
    "coefficient_rows",
    "coefficient_text",
    "deblur_layers",
    "estimate_from_psf_layer",
    "estimate_layers",
    "estimate_model",
    "estimate_source",
    "fc_text",
    "foreign_estimate_warning",
    "field_summary",
    "guarded",
    "identify_layers",
    "is_auxiliary_layer",
    "is_field_estimate",
    "is_field_model",
    "is_psf_metadata",
    "is_psf_of",
    "is_uncertain",
    "iter_deblur_layers",
    "iter_identify_layers",
    "kernel_map_layer_data",
    "channel_wavelengths_nm",
    "known_optics",
    "layer_axes",
    "layer_geometry",
    "magnitude_bar",
    "matched_contrast_limits",
    "model_to_follow",
    "optics_differences",
    "psf_file_path",
    "rename_sources",
    "renamed_source",
    "order_estimates",
    "plane_index",
    "psf_layer_data",
    "psf_map_layer_data",
    "psf_metadata",
    "rms_radius",
    "summary_text",
    "user_message",
    "weight_map_layers_data",
]
