"""The predictor: one case's images in, its segmentation (and probabilities) on the input grid out.

Per case: preprocess exactly as in training -> sliding window (Gaussian, batched tiles and mirror
flips, mixed precision) for every network of every model group -> probabilities averaged (softmax,
or sigmoid per region) -> resampled back to the original spacing on the device -> decoded (argmax,
or regions painted in order) -> crop and transpose undone -> optional post-processing rule.
Folders of cases, with background reading and writing, are `voxseg.inference.cohort`'s job.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch import nn

from voxseg.data.io import Geometry
from voxseg.device import autocast_dtype, resolve_device
from voxseg.errors import CheckpointError, InputError
from voxseg.inference.compiled import COMPILE_CHOICES, CompiledNetwork, worth_compiling
from voxseg.inference.models import ModelGroup, load_models, load_postprocessing
from voxseg.inference.postprocess import apply_postprocessing
from voxseg.inference.restore import resample_logits_back, restore_shape
from voxseg.inference.sliding_window import count_tiles, plan_accumulation, sliding_window
from voxseg.model.outputs import OutputScheme, previous_stage_channels
from voxseg.plans import Plan
from voxseg.preprocessing.preprocess import labels_to_store_grid, preprocess_case

if TYPE_CHECKING:
    from voxseg.inference.cohort import CohortResult

CPU_FORWARD_VOXELS = 2**16


@dataclass
class CasePrediction:
    segmentation: np.ndarray  # label map on the input grid
    probabilities: np.ndarray | None = None  # (C, *input grid) float32, when asked for
    heads: dict[str, np.ndarray] = field(default_factory=dict)


class Predictor:
    def __init__(
        self,
        groups: list[ModelGroup],
        device: torch.device,
        *,
        tta: bool = True,
        step: float = 0.5,
        tile_batch: int | None = None,
        postprocessing: dict | None = None,
        precision: str = "auto",
        compile: str = "auto",
    ):
        if not groups:
            raise CheckpointError("no models to predict with", fix="pass at least one trained run folder with -m")
        self.groups, self.device = groups, device
        # Every group whose input this case needs: the groups, and before each cascade its previous stages.
        self.stages: list[ModelGroup] = _stages(groups)
        self.tta, self.step = tta, step
        self.tile_batch = tile_batch or (4 if device.type == "cuda" else 1)
        self.postprocessing = postprocessing
        self.precision = autocast_dtype(precision, device)
        self.outputs: OutputScheme = groups[0].outputs
        self.on_tiles: Callable[[int], None] | None = None  # progress callback: tiles finished
        if compile not in COMPILE_CHOICES:
            raise InputError(f"unknown compile choice {compile!r}", fix=f"use one of {', '.join(COMPILE_CHOICES)}")
        self.compile = compile
        # How many cases this predictor will see (a cohort sets it): decides `compile="auto"` once.
        self.expected_cases = 1

    @property
    def n_channels(self) -> int:
        return len(self.groups[0].plan.channel_names)

    def preprocessing(self) -> list[tuple[Plan, str]]:
        """(plan, configuration) of every stage, in `stages` order: what `preprocess` runs."""
        return [(g.plan, g.config_name) for g in self.stages]

    def preprocess(self, images: np.ndarray, geometry: Geometry) -> list[tuple[np.ndarray, dict]]:
        """The case preprocessed for every stage (`stages` order), as `predict_prepared` takes it."""
        return [preprocess_case(images, geometry, plan, config)[::2] for plan, config in self.preprocessing()]

    def _forward_batch(self, patch: Sequence[int]) -> int | None:
        """Inputs per network call: all tiles x flips on a GPU; on a CPU about 2^16 voxels.

        A CPU runs the network fastest on small batches (measured per input, 2 cores: 40x80x80
        1.03 s alone vs 1.29 s in a batch of 8; 32x64x64 0.49 vs 0.75 s; but 16x40x40 0.21 s
        alone vs 0.09 s in pairs), so the mirror copies of a tile go through one or a few at a time.
        """
        if self.device.type != "cpu":
            return None
        return max(1, CPU_FORWARD_VOXELS // math.prod(patch))

    def tile_count(self, prepared: list[tuple[np.ndarray, dict]], heads: bool = False) -> int:
        """Tiles the prediction of one preprocessed case runs (for progress: `on_tiles` counts them)."""
        total = 0
        for group, (image, _) in zip(self.stages, prepared):
            patch = group.config.patch_size
            spatial = image.shape[1:]
            planes = spatial[0] if group.config.dims == 2 and len(spatial) == 3 else 1
            per_net = planes * count_tiles(spatial[-len(patch) :], patch, self.step)
            passes = 1 + (len(group.head_names) if heads and group is self.groups[0] else 0)
            total += per_net * len(group.networks) * passes
        return total

    def forward_voxels(self, prepared: list[tuple[np.ndarray, dict]], heads: bool = False) -> int:
        """Voxels one case sends through the networks (tiles x mirrorings x patch voxels)."""
        per_tile = max(math.prod(g.config.patch_size) * (2 ** len(self._mirror_axes(g)) if self.tta else 1) for g in self.stages)
        return self.tile_count(prepared, heads) * per_tile

    def _mirror_axes(self, group: ModelGroup) -> tuple[int, ...]:
        return tuple(range(group.config.dims)) if group.mirror_axes is None else tuple(group.mirror_axes)

    def _compile_once(self, prepared: list[tuple[np.ndarray, dict]], heads: bool) -> None:
        """Compile every network when the expected work pays for it (`voxseg.inference.compiled`)."""
        choice, self.compile = self.compile, "off"  # decided once, on the first case
        if not worth_compiling(choice, self.device, self.forward_voxels(prepared, heads) * self.expected_cases):
            return
        for group in self.stages:
            # Networks without torch parameters (ONNX Runtime sessions) are not torch's to compile.
            group.networks = [
                CompiledNetwork(n) if next(n.parameters(), None) is not None and not isinstance(n, CompiledNetwork) else n
                for n in group.networks
            ]

    def _window(self, group: ModelGroup, net: nn.Module, image: torch.Tensor, head: str, channels: int) -> torch.Tensor:
        patch = group.config.patch_size
        mirror = self._mirror_axes(group) if self.tta else ()

        def fn(x: torch.Tensor) -> torch.Tensor:
            return net(x)[head][0]

        free = torch.cuda.mem_get_info(self.device)[0] if self.device.type == "cuda" else None
        where = plan_accumulation(tuple(image.shape[1:]), channels, self.device, free, patch_size=patch)
        return sliding_window(
            fn,
            image,
            patch,
            channels,
            step=self.step,
            mirror_axes=mirror,
            tile_batch=self.tile_batch,
            forward_batch=self._forward_batch(patch),
            accumulate_device="cpu" if where == "cpu" else None,
            precision=self._precision(group),
            slabs=where == "slabs",
            on_tiles=self.on_tiles,
            gaussian=group.recipe.get("gaussian", "centred"),
            accumulate_dtype=torch.float16 if group.recipe.get("accumulate") == "float16" else torch.float32,
        )

    def _precision(self, group: ModelGroup) -> torch.dtype | None:
        """Imported nnU-Net models run under nnU-Net's fp16 autocast on CUDA (ours: bf16 where supported)."""
        if group.recipe.get("autocast") == "fp16" and self.device.type == "cuda":
            return torch.float16
        return self.precision

    def _group_output(self, group: ModelGroup, image: np.ndarray, head: str, channels: int, activation) -> torch.Tensor:
        """Mean over the group's networks of activation(logits) (of the logits when `activation` is None),
        at preprocessed resolution."""
        x = torch.from_numpy(np.ascontiguousarray(image)).to(self.device)
        total = None
        for net in group.networks:
            if group.config.dims == 2 and x.ndim == 4:  # 2D configuration on a 3D volume: slice by slice along axis 0
                out = torch.stack([self._window(group, net, x[:, z], head, channels) for z in range(x.shape[1])], dim=1)
            else:
                out = self._window(group, net, x, head, channels)
            # Stays where sliding_window accumulated it (the CPU when the device could not hold it).
            out = out if activation is None else activation(out)
            total = out if total is None else total + out
        assert total is not None, "a model group holds at least one network"
        return total / len(group.networks)

    def predict_probabilities(self, prepared: list[tuple[np.ndarray, dict]]) -> torch.Tensor:
        """Probabilities (C, *original shape) on the device, averaged over every model group."""
        done: dict[int, torch.Tensor] = {}
        probs = None
        for group in self.groups:
            p = self._stage_probabilities(group, prepared, done)
            probs = p if probs is None else probs + p.to(probs.device)
        assert probs is not None, "a predictor holds at least one model group"
        return probs / len(self.groups)

    def _stage_probabilities(
        self, group: ModelGroup, prepared: list[tuple[np.ndarray, dict]], done: dict[int, torch.Tensor]
    ) -> torch.Tensor:
        """One stage's probabilities on the original grid; a cascade first runs its previous stage
        (once per case, `done` caches it) and adds that segmentation as one-hot input channels."""
        key = self.stages.index(group)
        if key in done:
            return done[key]
        image, props = prepared[key]
        if group.previous is not None:
            previous = group.previous.outputs.segmentation(self._stage_probabilities(group.previous, prepared, done))
            grid = labels_to_store_grid(previous.cpu().numpy()[None], props)
            channels = previous_stage_channels(torch.from_numpy(grid)[None], group.plan.num_classes)[0]
            image = np.concatenate([image, channels.numpy()])
        scheme = group.outputs
        if group.recipe.get("export") == "nnunet":  # nnU-Net: fold logits averaged and resampled, then softmax
            # One name for both grids, so the preprocessed-grid logits are freed before the softmax.
            logits = self._group_output(group, image, "seg", scheme.channels, None)
            logits = resample_logits_back(logits, props, order=group.recipe.get("export_order", 1))
            p = scheme.probabilities(logits)
            del logits
        else:
            p = self._group_output(group, image, "seg", scheme.channels, scheme.probabilities)
        done[key] = restore_shape(p, props, fill=scheme.background_fill)
        return done[key]

    def predict_heads(self, prepared: list[tuple[np.ndarray, dict]]) -> dict[str, np.ndarray]:
        """Extra heads of the first model group: argmax for class heads, >0.5 for single-channel heads."""
        group = self.groups[0]
        image, props = prepared[self.stages.index(group)]
        out = {}
        for name in group.head_names:
            channels = _head_channels(group.networks[0], name, image, group.config.patch_size, self.device)
            act = torch.sigmoid if channels == 1 else (lambda t: torch.softmax(t, 0))
            fill = [0.0] if channels == 1 else [1.0] + [0.0] * (channels - 1)
            p = restore_shape(self._group_output(group, image, name, channels, act), props, fill=fill)
            out[name] = (p[0] > 0.5).to(torch.uint8).cpu().numpy() if channels == 1 else p.argmax(0).to(torch.uint8).cpu().numpy()
        return out

    def segment(self, probs: torch.Tensor) -> np.ndarray:
        seg = self.outputs.segmentation(probs).cpu().numpy()
        seg = seg.astype(np.uint8 if seg.max(initial=0) < 256 else np.int16)
        return apply_postprocessing(seg, self.postprocessing) if self.postprocessing else seg

    def predict_prepared(
        self, prepared: list[tuple[np.ndarray, dict]], *, probabilities: bool = False, heads: bool = False
    ) -> CasePrediction:
        if self.compile != "off":
            self._compile_once(prepared, heads)
        probs = self.predict_probabilities(prepared)
        return CasePrediction(
            self.segment(probs),
            probs.float().cpu().numpy() if probabilities else None,
            self.predict_heads(prepared) if heads else {},
        )

    def predict_case(
        self, images: np.ndarray, geometry: Geometry, *, probabilities: bool = False, heads: bool = False
    ) -> CasePrediction:
        """Segment one case: ``images`` (C, *S) float32 on the grid described by ``geometry``."""
        return self.predict_prepared(self.preprocess(images, geometry), probabilities=probabilities, heads=heads)

    # --- Python API (`voxseg.Predictor`): models by path, arrays in memory, files --------------------

    @classmethod
    def from_run(
        cls,
        path_or_zip: str | Path | Sequence[str | Path],
        device: str | torch.device = "auto",
        folds: Sequence[str | int] | None = None,
        checkpoint: str | None = None,
        *,
        backend: str = "torch",
        tta: bool = True,
        step: float = 0.5,
        tile_batch: int | None = None,
        postprocessing: bool = True,
        precision: str = "auto",
        compile: str = "auto",
    ) -> Predictor:
        """A predictor for trained models, loaded once and used for any number of cases.

        Nothing here starts a process, so a plain script without ``if __name__ == "__main__"`` works.

        Args:
            path_or_zip: a run folder (``WORK/runs/NAME``), a model zip from ``voxseg export``, a folder from
                ``voxseg install``, or a list of them (an ensemble, averaged in probability space).
            device: ``"auto"`` (a CUDA GPU, else Apple's MPS, else the CPU), ``"cuda"``, ``"mps"``, ``"cpu"`` or a
                ``torch.device``.
            folds: folds to use, e.g. ``[0, 1]`` (None: every fold there is).
            checkpoint: ``"final"``, ``"best"`` or ``"latest"`` (None: final; for a zip the kind it holds).
            backend: ``"torch"``, or ``"onnx"`` for the ONNX networks of a zip exported with ``--onnx``.
            tta: mirroring test-time augmentation (up to 8 network passes per tile in 3D).
            step: tile step as a fraction of the patch.
            tile_batch: tiles per forward pass (None: 4 on a GPU, 1 on a CPU).
            postprocessing: apply the post-processing rule saved with a single run (``postprocessing.json``).
            precision: ``"auto"`` (bf16 where the hardware computes it natively: CUDA GPUs with bf16, CPUs
                with AVX512-BF16 or AMX; fp16 on other GPUs; else fp32), ``"fp32"``, ``"bf16"`` or ``"fp16"``.
            compile: ``"auto"`` (torch.compile on the CPU when the first prediction's network work, times
                `expected_cases`, pays for the compilation: see `voxseg.inference.compiled`), ``"on"`` or ``"off"``.

        Example:
            >>> from voxseg import Predictor
            >>> predictor = Predictor.from_run(run, device="cpu", tta=False)
            >>> predictor.n_channels, predictor.device.type
            (1, 'cpu')
        """
        paths = [Path(path_or_zip)] if isinstance(path_or_zip, (str, Path)) else [Path(p) for p in path_or_zip]
        dev = device if isinstance(device, torch.device) else resolve_device(device)
        groups = load_models(paths, None if folds is None else [str(f) for f in folds], checkpoint, dev, backend)
        return cls(
            groups,
            dev,
            tta=tta,
            step=step,
            tile_batch=tile_batch,
            postprocessing=load_postprocessing(paths) if postprocessing else None,
            precision=precision,
            compile=compile,
        )

    def _array_case(
        self,
        image: np.ndarray,
        spacing: Sequence[float],
        origin: Sequence[float] | None = None,
        direction: Sequence[float] | None = None,
    ) -> tuple[np.ndarray, Geometry]:
        """(C, *S) float32 images and their Geometry from an array given as (C, *S), or (*S) for one channel."""
        ndim = len(spacing)
        image = np.asarray(image)
        if ndim not in (2, 3) or any(not s > 0 for s in spacing):
            raise InputError(
                f"spacing {tuple(spacing)} is not 2 or 3 positive voxel sizes",
                fix="pass the voxel size per array axis, e.g. (3.0, 0.8, 0.8)",
            )
        if image.ndim == ndim:
            if self.n_channels != 1:
                raise InputError(
                    f"the image {image.shape} has no channel axis, but the model takes {self.n_channels} channels",
                    fix=f"pass an array ({self.n_channels}, *spatial) in the channel order of dataset.json",
                )
            image = image[None]
        elif image.ndim != ndim + 1 or image.shape[0] != self.n_channels:
            raise InputError(
                f"image shape {image.shape} does not fit {ndim} spacing values and {self.n_channels} channel(s)",
                fix=f"pass ({self.n_channels}, *spatial) or, for one channel, spatial, with one spacing value per spatial axis",
            )
        origin = (0.0,) * ndim if origin is None else tuple(float(v) for v in origin)
        direction = tuple(np.eye(ndim).ravel().tolist()) if direction is None else tuple(float(v) for v in direction)
        if len(origin) != ndim or len(direction) != ndim * ndim:
            raise InputError(
                f"origin needs {ndim} values and direction {ndim * ndim} (got {len(origin)} and {len(direction)})",
                fix="pass them in ITK's physical (x, y, z) order, as SimpleITK's GetOrigin()/GetDirection() return them",
            )
        return np.ascontiguousarray(image, dtype=np.float32), Geometry(tuple(float(s) for s in spacing), origin, direction)

    def predict_array(
        self,
        image: np.ndarray,
        spacing: Sequence[float],
        *,
        origin: Sequence[float] | None = None,
        direction: Sequence[float] | None = None,
        probabilities: bool = False,
        heads: bool = False,
    ) -> CasePrediction:
        """Segment one image held in memory; the result is on the image's own grid.

        Args:
            image: ``(C, *spatial)``, or ``spatial`` for a one-channel model, in numpy axis order (``(z, y, x)``
                as SimpleITK's ``GetArrayFromImage`` returns it); channels in dataset.json's order.
            spacing: voxel size per spatial axis, in the same axis order as ``image``.
            origin: ITK physical (x, y, z) order, as ``GetOrigin()`` returns it (default: zeros). Only
                passed through: predictions do not depend on it.
            direction: ITK flat direction matrix, as ``GetDirection()`` returns it (default: identity).
            probabilities: also return ``(C, *spatial)`` float32 probabilities (softmax per class, or
                sigmoid per region).
            heads: also return the extra heads' label maps (``heads``) of a multi-output model.

        Returns:
            `CasePrediction`: ``segmentation`` (``spatial`` shape, uint8, or int16 for many classes), ``probabilities``.

        Example:
            >>> import SimpleITK as sitk
            >>> itk_image = sitk.ReadImage(str(image_file))
            >>> image = sitk.GetArrayFromImage(itk_image)
            >>> result = predictor.predict_array(image, itk_image.GetSpacing()[::-1], probabilities=True)
            >>> result.segmentation.shape == image.shape, result.probabilities.shape[1:] == image.shape
            (True, True)
        """
        images, geometry = self._array_case(image, spacing, origin, direction)
        return self.predict_case(images, geometry, probabilities=probabilities, heads=heads)

    def predict_arrays(
        self, items: Iterable[tuple], *, probabilities: bool = False, heads: bool = False
    ) -> Iterator[CasePrediction]:
        """`predict_array` for many images, lazily: the next image is preprocessed in a background thread
        while the networks run on the current one.

        Args:
            items: ``(image, spacing)`` or ``(image, spacing, origin, direction)`` tuples (any iterable, e.g. a generator
                reading files one by one).
            probabilities, heads: as in `predict_array`.

        Example:
            >>> cases = [(image, (1.0, 1.0, 1.0)), (image[:, ::-1], (1.0, 1.0, 1.0))]
            >>> [r.segmentation.shape == image.shape for r in predictor.predict_arrays(cases)]
            [True, True]
        """
        from concurrent.futures import Future, ThreadPoolExecutor

        it = iter(items)
        with ThreadPoolExecutor(max_workers=1) as pool:

            def ahead() -> Future | None:
                item = next(it, None)
                return None if item is None else pool.submit(lambda: self.preprocess(*self._array_case(*item)))

            pending = ahead()
            while pending is not None:
                prepared = pending.result()
                pending = ahead()
                yield self.predict_prepared(prepared, probabilities=probabilities, heads=heads)

    def predict_files(
        self,
        inputs: str | Path | Sequence[str | Path | Sequence[str | Path]],
        output_dir: str | Path,
        *,
        save_probabilities: bool = False,
        heads: bool = False,
        skip_existing: bool = False,
        progress: bool = False,
        io_workers: int = 0,
    ) -> CohortResult:
        """Segment image files into `output_dir`, exactly as ``voxseg predict`` writes them (same geometry and
        file ending as the input, written atomically; unreadable cases are reported and skipped).

        Args:
            inputs: a folder of ``CASE_0000<ending>`` images, or a list of cases: each an image file, or a list of
                one file per channel. Outputs are named by the case id (``CASE`` of ``CASE_0000.nii.gz``, else the
                file name without its ending).
            output_dir: folder for ``CASE<ending>`` segmentations (created).
            save_probabilities: also write ``CASE.npz`` probabilities (float16).
            heads: also write the extra heads as ``CASE_<head><ending>``.
            skip_existing: skip cases whose outputs already exist.
            progress: show a progress bar.
            io_workers: 0 reads and writes in two background threads; N > 0 uses N reading and N writing
                processes (then call it under ``if __name__ == "__main__":``).

        Returns:
            `voxseg.inference.cohort.CohortResult` (``written``, ``skipped``, ``failed``, ``summary()``).

        Example:
            >>> result = predictor.predict_files(images, tmp / "api_predictions")
            >>> result.summary().startswith("2 case(s) predicted")
            True
        """
        from voxseg.data.io import file_ending
        from voxseg.data.spec import case_id_of
        from voxseg.inference.cohort import CaseInput, discover_cases, predict_cases

        if isinstance(inputs, (str, Path)):
            cases, ending = discover_cases(Path(inputs))
        else:
            cases, endings = [], set()
            for entry in inputs:
                files = [Path(entry)] if isinstance(entry, (str, Path)) else [Path(f) for f in entry]
                ending = file_ending(files[0])
                parsed = case_id_of(files[0], ending)
                cases.append(CaseInput(parsed[0] if parsed else files[0].name[: -len(ending)], files))
                endings.add(ending)
            if len(endings) != 1:
                raise InputError(
                    f"the files have {len(endings) or 'no'} file endings {sorted(endings)}",
                    fix="pass files of one format (the outputs use the inputs' file ending)",
                )
            ending = endings.pop()
        return predict_cases(
            self,
            cases,
            ending,
            Path(output_dir),
            save_probabilities=save_probabilities,
            heads=heads,
            progress=progress,
            io_workers=io_workers,
            skip_existing=skip_existing,
        )


def _stages(groups: list[ModelGroup]) -> list[ModelGroup]:
    """Groups and their previous stages, each once, a previous stage before the stage that needs it."""
    out: list[ModelGroup] = []

    def add(group: ModelGroup) -> None:
        if group.previous is not None:
            add(group.previous)
        if all(g is not group for g in out):
            out.append(group)

    for g in groups:
        add(g)
    return out


def _head_channels(net: nn.Module, name: str, image: np.ndarray, patch: Sequence[int], device: torch.device) -> int:
    with torch.inference_mode():
        x = torch.zeros((1, image.shape[0], *patch), device=device)
        return int(net(x)[name][0].shape[1])
