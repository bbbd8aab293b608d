"""ONNX: a fold's network exported for ONNX Runtime, and run behind the torch network's interface.

`export_onnx` writes the network with deep supervision off as a graph from ``image`` (batch, channels,
*spatial) to one output per head (``seg`` first): the full-resolution logits, the only outputs
prediction uses. Batch and spatial axes are dynamic. It uses torch's TorchScript-based exporter
(``dynamo=False``): it exports a U-Net in about a second where the torch.export-based one takes ~10 s
here and needs onnxscript, and it exists in every torch voxseg supports. Each export is checked
against torch on a random input before it is accepted.

`OnnxNetwork` wraps an ONNX Runtime session as an `nn.Module` whose forward returns
``{head: [logits]}`` like voxseg's networks, so the predictor's sliding window, mirroring, fold
averaging, resampling and export run unchanged (`voxseg predict --backend onnx`). ONNX Runtime's
CPU provider is used, or its CUDA provider when predicting on a CUDA device with an onnxruntime
build that has it.
"""

from __future__ import annotations

import inspect
import tempfile
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from voxseg.errors import CheckpointError, InputError

OPSET = 17  # supported by ONNX Runtime >= 1.14 and by torch's exporter in every supported torch
AXES = ("z", "y", "x")
_INSTALL = "install the optional extra: pip install 'voxseg[onnx]'"


def onnxruntime() -> Any:
    """The onnxruntime module, or one line saying how to install it."""
    try:
        import onnxruntime as ort
    except ImportError:
        raise InputError("ONNX Runtime is not installed", fix=_INSTALL) from None
    return ort


class _FullResolution(nn.Module):
    """Forward returns the full-resolution output of each head as a tuple, in `names` order."""

    def __init__(self, network: nn.Module, names: list[str]):
        super().__init__()
        self.network, self.names = network, names

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        out = self.network(x)
        return tuple(out[n][0] for n in self.names)


def export_onnx(meta: dict, state: dict, *, opset: int = OPSET, source: Path | None = None) -> tuple[bytes, float]:
    """A checkpoint's network as ONNX bytes, and the largest absolute logit difference to torch on
    a random batch of two patches.

    Args:
        meta: the checkpoint's meta (plan, configuration, network spec, builder).
        state: the network's weights (``checkpoint["trainer"]["network"]``).
        opset: the ONNX opset to write.
        source: the checkpoint file, named in errors.

    Example:
        >>> from voxseg.model.checkpoint import load_checkpoint
        >>> ckpt = load_checkpoint(run / "fold_all" / "checkpoint_final.pt")
        >>> data, diff = export_onnx(ckpt["meta"], ckpt["trainer"]["network"])
        >>> diff < 1e-3
        True
    """
    from voxseg.model.checkpoint import network_from_meta, network_spec
    from voxseg.plans import Plan

    ort = onnxruntime()
    network = network_from_meta(meta)
    network.load_state_dict(state)
    network.eval()
    patch = Plan.from_json(meta["plan"]).configuration(meta["config_name"]).patch_size
    x = torch.randn((2, network_spec(meta).in_channels, *patch), generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        reference = network(x)
    names = ["seg", *(k for k in reference if k != "seg")]
    spatial = {2 + i: a for i, a in enumerate(AXES[-len(patch) :])}
    dynamic = {n: {0: "batch", **spatial} for n in ["image", *names]}
    legacy: dict[str, Any] = {"dynamo": False} if "dynamo" in inspect.signature(torch.onnx.export).parameters else {}
    with tempfile.TemporaryDirectory(prefix="voxseg-onnx-") as tmp:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # the exporter's deprecation and instance-norm training-mode notes
                torch.onnx.export(
                    _FullResolution(network, names),
                    (x,),
                    Path(tmp) / "network.onnx",
                    input_names=["image"],
                    output_names=names,
                    dynamic_axes=dynamic,
                    opset_version=opset,
                    do_constant_folding=True,
                    **legacy,
                )
        except Exception as e:  # an operation without an ONNX equivalent, a network branching on shapes, ...
            raise CheckpointError(
                f"cannot export the network to ONNX ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})",
                path=source,
                fix="export without --onnx and predict with the torch backend",
            ) from None
        data = (Path(tmp) / "network.onnx").read_bytes()
    session = ort.InferenceSession(data, providers=["CPUExecutionProvider"])
    outputs = session.run(names, {"image": x.numpy()})
    diff = max(float(np.abs(o - reference[n][0].numpy()).max()) for n, o in zip(names, outputs))
    scale = max(float(reference[n][0].abs().max()) for n in names)
    if not diff <= 1e-3 * max(scale, 1.0):
        raise CheckpointError(
            f"the ONNX network disagrees with torch (largest logit difference {diff:.3g})",
            path=source,
            fix="export without --onnx and predict with the torch backend",
        )
    return data, diff


class OnnxNetwork(nn.Module):
    """An ONNX Runtime session with the interface of voxseg's networks: ``forward(x) -> {head: [logits]}``.

    Inputs and outputs are torch tensors on the caller's device (copied through host memory).

    Args:
        model: the ONNX file's bytes, or its path.
        device: where the predictor computes: ``cuda`` uses ONNX Runtime's CUDA provider when the
            installed onnxruntime has it, anything else the CPU provider.

    Example:
        >>> from voxseg.model.checkpoint import load_checkpoint
        >>> ckpt = load_checkpoint(run / "fold_all" / "checkpoint_final.pt")
        >>> data, _ = export_onnx(ckpt["meta"], ckpt["trainer"]["network"])
        >>> net = OnnxNetwork(data, torch.device("cpu"))
        >>> out = net(torch.zeros(1, 1, 16, 32, 32))
        >>> list(out), tuple(out["seg"][0].shape)
        (['seg'], (1, 3, 16, 32, 32))
    """

    def __init__(self, model: bytes | str | Path, device: torch.device):
        super().__init__()
        ort = onnxruntime()
        options = ort.SessionOptions()
        options.intra_op_num_threads = torch.get_num_threads()  # the thread count torch would use (OMP_NUM_THREADS)
        options.inter_op_num_threads = 1
        providers: list[Any] = ["CPUExecutionProvider"]
        if device.type == "cuda":
            if "CUDAExecutionProvider" not in ort.get_available_providers():
                warnings.warn(
                    "onnxruntime has no CUDA provider: the ONNX networks run on the CPU "
                    "(install onnxruntime-gpu to run them on the GPU)",
                    stacklevel=2,
                )
            else:
                providers = [("CUDAExecutionProvider", {"device_id": device.index or 0}), "CPUExecutionProvider"]
        self.session = ort.InferenceSession(
            model if isinstance(model, bytes) else str(model), sess_options=options, providers=providers
        )
        self.input_name = self.session.get_inputs()[0].name
        self.output_names = [o.name for o in self.session.get_outputs()]

    def forward(self, x: torch.Tensor) -> dict[str, list[torch.Tensor]]:
        outputs = self.session.run(self.output_names, {self.input_name: x.detach().float().cpu().numpy()})
        return {name: [torch.from_numpy(o).to(x.device)] for name, o in zip(self.output_names, outputs)}
