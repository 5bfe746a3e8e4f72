"""Curvature of the pretraining data for the Laplace penalty: K-FAC, EK-FAC and diagonal Fisher.

Collecting (:mod:`~tts_adapt.curvature.hooks`, :func:`fit_curvature`) is separate from using the
result (:class:`Curvature`, saved to and loaded from one safetensors file). The normalisation of
the stored statistics is documented in :mod:`tts_adapt.curvature.fit`. Names are imported lazily
so that reading :mod:`tts_adapt.curvature.curvature_config` does not import PyTorch.
"""

from tts_adapt.registry import lazy_exports

_EXPORTS = {
    "CurvatureConfig": "curvature_config", "CurvatureMethod": "curvature_config", "FisherType": "curvature_config",
    "FitState": "fit", "fit_curvature": "fit",
    "LayerCall": "hooks", "LinearMap": "hooks", "PositionMaskError": "hooks", "UnsupportedLayerError": "hooks",
    "linear_maps": "hooks", "record_linear_maps": "hooks",
    "Curvature": "storage", "CurvatureFileError": "storage", "CurvatureLayer": "storage",
    "CurvatureMismatchError": "storage", "read_header": "storage",
    "fit_curvature_file": "run",
    "LoraPoint": "lora_params", "fit_lora_curvature": "lora_params",
}
__all__ = list(_EXPORTS)

__getattr__ = lazy_exports(__name__, _EXPORTS)
