"""Curvature of the pretraining data for the Laplace penalty: K-FAC, EK-FAC and diagonal Fisher.

Collecting (:mod:`~tts_adapt.curvature.hooks`, :func:`fit_curvature`) is separate from using the
result (:class:`Curvature`, saved to and loaded from one safetensors file). The normalisation of
the stored statistics is documented in :mod:`tts_adapt.curvature.fit`.
"""

from tts_adapt.curvature.fit import CurvatureMethod, FisherType, FitState, fit_curvature
from tts_adapt.curvature.hooks import (LayerCall, LinearMap, PositionMaskError, UnsupportedLayerError, linear_maps,
                                       record_linear_maps)
from tts_adapt.curvature.storage import Curvature, CurvatureFileError, CurvatureLayer, CurvatureMismatchError


def fit_curvature_file(*args, **kwargs):
    """See :func:`tts_adapt.curvature.run.fit_curvature_file` (imported on use: it pulls in the data stage)."""
    from tts_adapt.curvature.run import fit_curvature_file as fit

    return fit(*args, **kwargs)

__all__ = [
    "Curvature", "CurvatureFileError", "CurvatureLayer", "CurvatureMethod", "CurvatureMismatchError", "FisherType",
    "FitState", "LayerCall", "fit_curvature_file", "LinearMap", "PositionMaskError", "UnsupportedLayerError", "fit_curvature",
    "linear_maps", "record_linear_maps",
]
