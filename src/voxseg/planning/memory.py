"""Peak training memory of a planned U-Net, in bytes.

nnU-Net compares a sum of feature-map *elements* with a constant its own comments call arbitrary, so
users cannot tell what "8 GB" buys them and plans for bf16 or a different head count are guesses.
This model counts what a forward + backward step keeps alive, in bytes, and is calibrated against
measured peaks (``benchmarks/calibrate_memory.py``, data in ``benchmarks/calibration/``):

- activations saved for backward at the training precision (bf16 autocast: each conv stores its
  bf16 output for the norm, the norm output is kept by the in-place LeakyReLU and is the next conv's
  saved input; skips are the encoder outputs already counted; the decoder adds the transposed-conv
  output and the concatenation; each deep-supervision head stores its logits);
- the loss on every supervised output (fp32 logits, softmax, log-softmax and one-hot target, int64
  target);
- parameters, gradients and SGD momentum in fp32 plus the bf16 weight copies autocast caches;
- the backward working set (gradients of the largest maps being alive together with the saved
  activations) and a fixed allocator/context margin.

The sum of the first, second and fourth terms is multiplied by ``activation_scale`` and the fixed
margin added; both numbers are fitted by the calibration script.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field


@dataclass(frozen=True)
class MemoryCoefficients:
    activation_scale: float = 1.0
    constant_bytes: float = 0.0


# activation_scale from benchmarks/calibrate_memory.py on CPU (fp32 peak RSS of 6 topologies, fit
# within +-11%, benchmarks/calibration/cpu.json). The constant is the CPU fit (85 MB) plus 215 MB
# for cuDNN workspaces and allocator rounding, not yet checked on a GPU: run the script there.
CALIBRATED = MemoryCoefficients(activation_scale=1.37, constant_bytes=300e6)


@dataclass(frozen=True)
class MemoryEstimate:
    total_bytes: int
    breakdown: dict[str, int] = field(default_factory=dict)


def _stage_sizes(patch_size: Sequence[int], strides: Sequence[Sequence[int]]) -> list[int]:
    sizes, cur = [], list(patch_size)
    for stride in strides:
        cur = [math.ceil(c / s) for c, s in zip(cur, stride)]
        sizes.append(math.prod(cur))
    return sizes


def count_parameters(network: dict, in_channels: int, num_classes: int, deep_supervision: bool = True) -> int:
    """Weights + biases + norm affines of the plain/residual U-Net described by `network`."""
    feats = network["features"]
    kernels = network["kernel_sizes"]
    strides = network["strides"]
    resenc = network["architecture"] == "resenc_unet"
    convs_per_unit = 2 if resenc else 1
    n = 0

    def conv(cin: int, cout: int, kernel: Sequence[int]) -> int:
        return cin * cout * math.prod(kernel) + cout + 2 * cout  # + bias + norm affine

    prev = in_channels
    if resenc:  # stem
        n += conv(in_channels, feats[0], kernels[0])
        prev = feats[0]
    for s, f in enumerate(feats):
        for j in range(network["n_conv_per_stage"][s] * convs_per_unit):
            n += conv(prev if j == 0 else f, f, kernels[s])
        if resenc and (s > 0):  # 1x1 projection on the strided residual path
            n += conv(prev, f, [1] * len(kernels[s]))
        prev = f
    for s in range(len(feats) - 2, -1, -1):
        n += feats[s + 1] * feats[s] * math.prod(strides[s + 1]) + feats[s]
        for j in range(network["n_conv_per_stage_decoder"][s]):
            n += conv(2 * feats[s] if j == 0 else feats[s], feats[s], kernels[s])
        if deep_supervision or s == 0:
            n += feats[s] * num_classes + num_classes
    return n


def estimate_training_memory(
    network: dict,
    patch_size: Sequence[int],
    batch_size: int,
    in_channels: int,
    num_classes: int,
    *,
    deep_supervision: bool = True,
    precision_bytes: int = 2,
    coefficients: MemoryCoefficients = CALIBRATED,
) -> MemoryEstimate:
    """Peak bytes of one training step; `precision_bytes` 2 for bf16/fp16 autocast, 4 for fp32."""
    p, b, k = precision_bytes, batch_size, num_classes
    feats = network["features"]
    sizes = _stage_sizes(patch_size, network["strides"])
    resenc = network["architecture"] == "resenc_unet"

    inputs = b * in_channels * sizes[0] * (4 + (p if p != 4 else 0))
    encoder = 0
    for s, f in enumerate(feats):
        units = network["n_conv_per_stage"][s]
        # per conv: conv output + norm/activation output; a residual block adds its sum
        per_unit = (2 * 2 + 1) if resenc else 2
        encoder += units * per_unit * p * b * f * sizes[s]
    if resenc:
        encoder += 2 * p * b * feats[0] * sizes[0]  # stem
    decoder = heads = loss = 0
    for s in range(len(feats) - 2, -1, -1):
        e = b * feats[s] * sizes[s]
        decoder += p * e * (1 + 2 + 2 * network["n_conv_per_stage_decoder"][s])
        if deep_supervision or s == 0:
            heads += p * b * k * sizes[s]
            loss += b * sizes[s] * (4 * 4 * k + 8)
    workspace = 4 * p * b * feats[0] * sizes[0]
    n_params = count_parameters(network, in_channels, num_classes, deep_supervision)
    params = n_params * (12 + (p if p != 4 else 0))
    scaled = (inputs + encoder + decoder + heads + loss + workspace) * coefficients.activation_scale
    total = scaled + params + coefficients.constant_bytes
    breakdown = {
        "inputs": inputs,
        "encoder": encoder,
        "decoder": decoder,
        "heads": heads,
        "loss": loss,
        "workspace": workspace,
        "activation_scale": coefficients.activation_scale,
        "parameters": n_params,
        "parameter_state": params,
        "constant": int(coefficients.constant_bytes),
    }
    return MemoryEstimate(int(total), {k_: (int(v) if k_ != "activation_scale" else v) for k_, v in breakdown.items()})
