"""voxseg: self-configuring medical image segmentation (nnU-Net's data semantics, faster).

The Python API (docs/python-api.md)::

    import voxseg
    voxseg.plan(dataset, work); voxseg.preprocess(work); voxseg.train(work, "3d_fullres", 0)
    predictor = voxseg.Predictor.from_run("MODEL.zip")       # or a run folder
    result = predictor.predict_array(image, spacing)

Every name is imported on first use (PEP 562), so ``import voxseg`` loads neither torch nor any stage.
"""

import importlib

__version__ = "0.1.0"

_LAZY = {
    "plan": "voxseg.api",
    "preprocess": "voxseg.api",
    "train": "voxseg.api",
    "evaluate": "voxseg.api",
    "load_settings": "voxseg.api",
    "predict": "voxseg.inference.cohort",
    "Settings": "voxseg.training.settings",
    "Trainer": "voxseg.training.trainer",
    "Predictor": "voxseg.inference.predictor",
    "export_model": "voxseg.inference.package",
    "install_model": "voxseg.inference.package",
}

__all__ = [
    "__version__",
    "plan",
    "preprocess",
    "train",
    "evaluate",
    "load_settings",
    "predict",
    "Settings",
    "Trainer",
    "Predictor",
    "export_model",
    "install_model",
]  # literal for static tools; tests/test_api.py checks it lists _LAZY


def __getattr__(name: str) -> object:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'voxseg' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_LAZY})
