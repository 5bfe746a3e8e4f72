"""A fitted curvature on disk: one safetensors file with its tensors and a JSON description.

Tensors, per layer ``<layer>`` (the module name, or ``<module>.in_proj`` / ``<module>.out_proj``
for attention), the weight seen as an (out, in) matrix:

=========  ==========================================================================
method     tensors
=========  ==========================================================================
kfac       ``<layer>.A`` (in, in), ``<layer>.G`` (out, out)
ekfac      as kfac, plus ``<layer>.QA`` (in, in) and ``<layer>.QG`` (out, out) (eigenvectors
           in columns), ``<layer>.eigA`` (in,), ``<layer>.eigG`` (out,) (their eigenvalues) and
           ``<layer>.S`` (out, in), the re-fitted scalings in that eigenbasis
diag       ``<layer>.diag`` (out, in)
lalora-*   as kfac (lalora-kfac) or diag (lalora-diag) for the layers ``<map>.lora_A`` (r, in) and
           ``<map>.lora_B`` (out, r), the LoRA factors of each linear map, plus ``<layer>.mean``
           (that factor's value at the fit: the Laplace mean, where the adaptation starts)
=========  ==========================================================================

Their normalisation is written down in :mod:`tts_adapt.curvature.fit` (and in the file's
``normalization`` field). The metadata records the base model's fingerprint over the target
modules, so that a curvature is never applied to another model. Damping / prior precision is
not stored: it is a parameter of the penalty that uses the curvature.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from tts_adapt import __version__
from tts_adapt.curvature.curvature_config import LORA_METHODS
from tts_adapt.curvature.hooks import LinearMap, UnsupportedLayerError, linear_maps
from tts_adapt.io import atomic_path

FORMAT_VERSION = 2  # 2: symmetric factors stored as their upper triangle
META_KEY = "tts_adapt.curvature"
#: The tensors of each method, per layer.
TENSORS = {
    "kfac": ("A", "G"),
    "ekfac": ("A", "G", "QA", "QG", "eigA", "eigG", "S"),
    "diag": ("diag",),
    # LaLoRA (tts_adapt.curvature.lora_params): the layers are the LoRA factors "<map>.lora_A" / "<map>.lora_B"
    "lalora-kfac": ("A", "G", "mean"),
    "lalora-diag": ("diag", "mean"),
}
#: The kinds of layer of a LaLoRA curvature: the LoRA factors A (r, in) and B (out, r) of a linear map.
LORA_FACTORS = ("lora_A", "lora_B")
#: Symmetric factors: only the upper triangle goes to disk (half the bytes).
SYMMETRIC = ("A", "G")
PACKED = ".triu"


def pack_symmetric(m: torch.Tensor) -> torch.Tensor:
    """Upper triangle (with diagonal) of a symmetric (n, n) matrix, row by row: (n (n + 1) / 2,)."""
    i, j = torch.triu_indices(m.shape[0], m.shape[0], device=m.device)
    return m[i, j]


def unpack_symmetric(packed: torch.Tensor) -> torch.Tensor:
    n = int(round(((8 * packed.numel() + 1) ** 0.5 - 1) / 2))
    i, j = torch.triu_indices(n, n, device=packed.device)
    m = packed.new_zeros(n, n)
    m[i, j] = packed
    m[j, i] = packed
    return m
#: How the stored statistics are normalised (N utterances, P real positions of the layer, g the
#: gradient of the sum over utterances of the per-utterance losses, per-utterance gradient
#: ∇W_n = Σ_t g_nt x_ntᵀ).
NORMALIZATION = {
    "A": "sum over real positions of x xᵀ / P",
    "G": "sum over real positions of g gᵀ / N",
    "diag": "sum over utterances of (∇W_n)² / N",
    "S": "sum over utterances of (QGᵀ ∇W_n QA)² / N",
}


class CurvatureMismatchError(ValueError):
    """A curvature file that was fitted on another model."""


class CurvatureFileError(ValueError):
    """A file that is not a readable curvature file."""


@dataclass(frozen=True)
class CurvatureLayer(LinearMap):
    """One weight matrix of the fit (a :class:`~tts_adapt.curvature.hooks.LinearMap`) and ``positions``, the
    real positions P it saw."""

    positions: int

    @classmethod
    def of(cls, linear_map: LinearMap, positions: int) -> "CurvatureLayer":
        return cls(**asdict(linear_map), positions=positions)


@dataclass
class Curvature:
    """Fitted curvature of the target layers of a base model (see the module doc for the tensors)."""

    method: str
    fisher: str
    layers: list[CurvatureLayer]
    tensors: dict[str, torch.Tensor]
    num_utterances: int
    fingerprint: str
    targets: list[str]
    backend: str = ""
    audio: dict = field(default_factory=dict)
    info: dict = field(default_factory=dict)

    def __post_init__(self):
        if self.method not in TENSORS:
            raise ValueError(f"unknown curvature method {self.method!r}; valid: {', '.join(TENSORS)}")
        for layer in self.layers:
            for kind in TENSORS[self.method]:
                key = f"{layer.name}.{kind}"
                if key not in self.tensors:
                    raise ValueError(f"curvature of layer {layer.name!r} lacks its {kind!r} tensor")
                expected = _tensor_shape(kind, layer)
                if tuple(self.tensors[key].shape) != expected:
                    raise ValueError(f"{key} has shape {tuple(self.tensors[key].shape)}, expected {expected}")

    # ------------------------------------------------------------------ access
    @property
    def layer_names(self) -> list[str]:
        return [layer.name for layer in self.layers]

    def layer(self, name: str) -> CurvatureLayer:
        for layer in self.layers:
            if layer.name == name:
                return layer
        raise KeyError(f"{name!r} is not a layer of this curvature; layers: {', '.join(self.layer_names)}")

    def factors(self, name: str) -> dict[str, torch.Tensor]:
        """The tensors of one layer by kind, e.g. ``{"A": (in, in), "G": (out, out)}`` for kfac."""
        self.layer(name)
        return {kind: self.tensors[f"{name}.{kind}"] for kind in TENSORS[self.method]}

    def to(self, device: torch.device | str) -> "Curvature":
        """The curvature with its tensors on ``device`` (float32): a penalty is computed where its adapter
        is, without copying the factors at every step. Files are written from the CPU either way."""
        return replace(self, tensors={k: v.to(device=device, dtype=torch.float32) for k, v in self.tensors.items()})

    # ------------------------------------------------------------------ files
    def metadata(self) -> dict:
        return {
            "format_version": FORMAT_VERSION, "method": self.method, "fisher": self.fisher,
            "fingerprint": self.fingerprint, "targets": list(self.targets), "backend": self.backend,
            "layers": [asdict(layer) for layer in self.layers], "num_utterances": self.num_utterances,
            "audio": self.audio, "info": self.info, "normalization": NORMALIZATION,
            "tts_adapt_version": __version__, "torch_version": torch.__version__,
        }

    def save(self, path: str | Path) -> None:
        """Write the curvature atomically to ``path`` (safetensors, float32)."""
        tensors = {}
        for k, v in self.tensors.items():
            v = v.detach().to("cpu", torch.float32)
            if k.rsplit(".", 1)[-1] in SYMMETRIC:
                k, v = k + PACKED, pack_symmetric(v)
            tensors[k] = v.contiguous()
        with atomic_path(path) as tmp:
            save_file(tensors, str(tmp), metadata={META_KEY: json.dumps(self.metadata(), sort_keys=True)})

    @classmethod
    def load(cls, path: str | Path, backend=None) -> "Curvature":
        """Read a curvature file; with ``backend``, refuse a file fitted on another model
        (:class:`CurvatureMismatchError`). Without a backend nothing is checked."""
        path = Path(path)
        meta = read_header(path)
        try:
            with safe_open(str(path), "pt") as fh:
                tensors = {k: fh.get_tensor(k) for k in fh.keys()}
            tensors = {(k[: -len(PACKED)] if k.endswith(PACKED) else k):
                       (unpack_symmetric(v) if k.endswith(PACKED) else v) for k, v in tensors.items()}
        except Exception as err:  # safetensors raises its own error types for foreign files
            raise CurvatureFileError(f"{path} is not a safetensors file: {err}") from None
        curvature = cls(
            method=meta["method"], fisher=meta["fisher"], layers=[CurvatureLayer(**d) for d in meta["layers"]],
            tensors=tensors, num_utterances=int(meta["num_utterances"]), fingerprint=meta["fingerprint"],
            targets=list(meta["targets"]), backend=meta.get("backend", ""), audio=meta.get("audio", {}),
            info=meta.get("info", {}))
        if backend is not None:
            curvature.check_model(backend, source=str(path))
        return curvature

    def check_model(self, backend, source: str = "the curvature") -> None:
        """Raise :class:`CurvatureMismatchError` unless ``backend`` is the model this curvature was fitted on."""
        modules = dict(backend.model.named_modules())
        differences = [f"the model has no module {name!r}" for name in self.targets if name not in modules]
        if not differences:
            try:
                maps = {m.name: m for m in linear_maps(backend.model, self.targets)}
            except UnsupportedLayerError as err:
                maps, differences = {}, [str(err)]
            for layer in self.layers if maps else []:
                m = maps.get(layer.name.rsplit(".", 1)[0] if layer.kind in LORA_FACTORS else layer.name)
                if m is None:
                    differences.append(f"the model has no layer {layer.name!r}")
                elif not _fits(layer, m):
                    differences.append(f"{layer.param} is {m.shape} in the model (as out x in), "
                                       f"{layer.shape} in the curvature")
        if differences:
            shown = "; ".join(differences[:5]) + (f"; and {len(differences) - 5} more" if len(differences) > 5 else "")
            raise CurvatureMismatchError(f"{source} was fitted on a model with different layers: {shown}")
        if backend.fingerprint(self.targets) != self.fingerprint:
            raise CurvatureMismatchError(
                f"{source} was fitted on a model with the same layers but different weights (another checkpoint "
                "or another model); fit the curvature again on this base model")


def read_header(path: str | Path) -> dict:
    """The JSON description of a curvature file (method, fisher, layers, num_utterances, fingerprint, ...)
    without reading its tensors; :class:`CurvatureFileError` for a file that is not a curvature file."""
    path = Path(path)
    if not path.is_file():
        raise CurvatureFileError(f"curvature file not found: {path}")
    try:
        with safe_open(str(path), "pt") as fh:
            meta_text = (fh.metadata() or {}).get(META_KEY)
    except Exception as err:  # safetensors raises its own error types for foreign files
        raise CurvatureFileError(f"{path} is not a safetensors file: {err}") from None
    if meta_text is None:
        raise CurvatureFileError(f"{path} is not a curvature file (no {META_KEY!r} metadata)")
    try:
        meta = json.loads(meta_text)
    except ValueError as err:
        raise CurvatureFileError(f"{path}: unreadable curvature metadata ({err})") from None
    if meta.get("format_version", 0) > FORMAT_VERSION:
        raise CurvatureFileError(f"{path} was written by a newer tts_adapt "
                                 f"({meta.get('tts_adapt_version')}); upgrade to read it")
    return meta


def _fits(layer: CurvatureLayer, m: LinearMap) -> bool:
    """Whether a layer of a curvature has the shape of the model's linear map ``m``; a LoRA factor (LaLoRA) the
    side it shares with it (A: the inputs, B: the outputs)."""
    if layer.kind == "lora_A":
        return layer.in_features == m.in_features
    if layer.kind == "lora_B":
        return layer.out_features == m.out_features
    return m.shape == layer.shape


def serves(method: str, wanted: str) -> bool:
    """Whether a curvature file of ``method`` holds what a strategy needing a ``wanted`` one reads (an EK-FAC file
    holds the K-FAC factors; a LaLoRA file's statistics are of other layers, the LoRA factors)."""
    return (method in LORA_METHODS) == (wanted in LORA_METHODS) and set(TENSORS[wanted]) <= set(TENSORS[method])


def _tensor_shape(kind: str, layer: CurvatureLayer) -> tuple[int, ...]:
    out, inp = layer.out_features, layer.in_features
    return {"A": (inp, inp), "G": (out, out), "QA": (inp, inp), "QG": (out, out), "eigA": (inp,), "eigG": (out,),
            "S": (out, inp), "diag": (out, inp), "mean": (out, inp)}[kind]
