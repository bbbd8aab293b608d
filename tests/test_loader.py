"""The patch loader: forced pattern, determinism across worker counts, resume, adaptive updates."""

from __future__ import annotations

import json
from itertools import islice
from pathlib import Path

import numpy as np
import pytest
import torch
from scipy.stats import chisquare
from test_sampling import write_synthetic_case

from voxseg.augment.config import AugmentationSettings
from voxseg.augment.pipeline import Augmenter
from voxseg.data.labels import IGNORE
from voxseg.errors import InputError
from voxseg.preprocessing.store import Store
from voxseg.sampling.case_sampler import CaseSampler
from voxseg.sampling.config import SamplingSettings
from voxseg.sampling.loader import PatchLoader, build_loader


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> Store:
    """Six cases, foreground in small blobs (some at borders), one case without foreground, one extra map."""
    root = tmp_path_factory.mktemp("store")
    rng = np.random.default_rng(0)
    for i in range(6):
        seg = np.zeros((16, 20, 18), np.int8)
        if i < 5:
            z, y, x = rng.integers(0, 16), rng.integers(0, 20), rng.integers(0, 18)
            seg[z, y, x] = 1
            seg[max(z - 1, 0), y, min(x + 1, 17)] = 2 if i % 2 else 1
        extra = {"edges": (seg > 0).astype(np.int8)[None]}
        write_synthetic_case(root, f"case{i}", seg, channels=2, extra=extra)
    return Store(root)


def take(loader: PatchLoader, n: int) -> list[tuple]:
    return [
        (b.image.clone(), b.seg.clone(), b.extra["edges"].clone(), b.case_ids, b.forced.clone(), b.weights.clone())
        for b in islice(loader, n)
    ]


def same(a: list[tuple], b: list[tuple]) -> bool:
    return len(a) == len(b) and all(
        all(torch.equal(x, y) if isinstance(x, torch.Tensor) else x == y for x, y in zip(p, q)) for p, q in zip(a, b)
    )


def make(store: Store, workers: int, *, seed: int = 7, adaptive: bool = False, **kw) -> PatchLoader:
    settings = SamplingSettings(workers=workers, prefetch=2, adaptive=adaptive, **kw)
    sampler = CaseSampler(store.case_ids(), adaptive=adaptive, blend=1.0, momentum=0.0, floor=0.05, cap=5.0)
    return PatchLoader(store, sampler, patch_size=(8, 8, 8), input_size=(10, 12, 10), batch_size=3, settings=settings, seed=seed)


def test_batches_have_the_contract_shapes_and_forced_pattern(store):
    with make(store, 0) as loader:
        for batch in islice(loader, 300):
            assert batch.image.shape == (3, 2, 10, 12, 10) and batch.image.dtype == torch.float32
            assert batch.seg.shape == (3, 1, 10, 12, 10) and batch.seg.dtype == torch.int16
            assert batch.extra["edges"].shape == batch.seg.shape
            assert batch.forced.tolist() == [False, False, True]  # 3 - round(3 * 0.67) = 1 forced
            assert torch.equal(batch.weights, torch.ones(3))
            final = batch.seg[:, 0, 1:9, 2:10, 1:9]
            for i in range(3):
                # The edges map is cropped with the same box as the labels.
                assert torch.equal(batch.extra["edges"][i, 0, 1:9, 2:10, 1:9], (final[i] > 0).to(torch.int16))
                if batch.forced[i] and batch.case_ids[i] != "case5":
                    assert (final[i] > 0).any()
        stats = loader.current_stats().to_json()
    assert stats["patches"] == 900 and stats["forced"] == 300 and stats["random"] == 600
    assert sum(stats["case_draws"].values()) == 900
    assert chisquare(list(stats["case_draws"].values())).pvalue > 0.01
    assert stats["class_patch_fraction"]["1"] > 1 / 3 * 5 / 6 * 0.9
    assert stats["case_probabilities"] == pytest.approx({c: 1 / 6 for c in store.case_ids()})


def test_same_seed_same_batches_for_any_worker_count(store):
    with make(store, 0) as a0:
        ref = take(a0, 12)
    with make(store, 2) as a2:
        assert same(take(a2, 12), ref)
    with make(store, 0, seed=8) as other:
        assert not same(take(other, 12), ref)


def augmenter(seed: int = 0) -> Augmenter:
    # Strong enough that every batch is changed: always mirrored, rotated and noised.
    settings = AugmentationSettings(mirror_p=1.0, rotation_p=1.0, noise_p=1.0)
    return Augmenter(settings, (8, 8, 8), has_ignore=False, seed=seed)


def make_augmenting(store: Store, workers: int, seed: int = 7) -> PatchLoader:
    settings = SamplingSettings(workers=workers, prefetch=2)
    return PatchLoader(
        store,
        CaseSampler(store.case_ids()),
        patch_size=(8, 8, 8),
        batch_size=3,
        settings=settings,
        seed=seed,
        augmenter=augmenter(),
    )


def test_loader_side_augmentation_delivers_final_patches_for_any_worker_count(store):
    with make_augmenting(store, 0) as a0:
        ref = take(a0, 6)
        assert a0.augmented
    with make_augmenting(store, 2) as a2:
        batch = next(iter(a2))
        assert batch.augmented and batch.image.shape == (3, 2, 8, 8, 8) and batch.seg.shape == (3, 1, 8, 8, 8)
        assert batch.seg.dtype == torch.int16 and batch.extra["edges"].shape == batch.seg.shape
    with make_augmenting(store, 2) as a2:
        assert same(take(a2, 6), ref)
    with make_augmenting(store, 0, seed=8) as other:
        assert not same(take(other, 6), ref)
    # Labels stay labels: only class values, no padding sentinel without an ignore label.
    assert set(torch.cat([b[1].flatten() for b in ref]).unique().tolist()) <= {0, 1, 2}
    # The augmentation did something: the crops alone (same seed, same positions) differ.
    with PatchLoader(
        store, CaseSampler(store.case_ids()), patch_size=(8, 8, 8), batch_size=3, settings=SamplingSettings(workers=0), seed=7
    ) as plain:
        crops = take(plain, 6)
    assert not torch.equal(crops[0][0], ref[0][0])


def test_resume_continues_the_stream(store):
    with make(store, 0) as full:
        ref = take(full, 9)
    with make(store, 2) as first:
        take(first, 5)
        state = json.loads(json.dumps(first.state_dict()))
    with make(store, 2) as resumed:
        resumed.load_state_dict(state)
        assert same(take(resumed, 4), ref[5:])
        assert resumed.current_stats().to_json()["patches"] == 27


def test_adaptive_updates_reach_prefetched_batches_deterministically(store):
    def run(workers: int) -> tuple[list, np.ndarray]:
        with make(store, workers, adaptive=True) as loader:
            out = take(loader, 4)
            loader.case_sampler.update(["case0", "case1"], [10.0, 0.1])
            loader.case_sampler.end_epoch()
            out += take(loader, 40)
            return out, loader.case_sampler.probabilities

    ref, p = run(0)
    got, _ = run(2)
    assert same(got, ref)
    late = [c for batch in ref[4:] for c in batch[3]]
    assert p[0] > p[2] > p[1]  # case0 high loss; unseen cases take the mean; case1 low loss
    assert late.count("case0") > late.count("case1")


def test_importance_weights_when_correcting_bias(store):
    settings = SamplingSettings(workers=0, correct_bias=True)
    sampler = CaseSampler(store.case_ids(), [5, 1, 1, 1, 1, 1])
    with PatchLoader(store, sampler, patch_size=(8, 8, 8), batch_size=2, settings=settings) as loader:
        for batch in islice(loader, 20):
            assert torch.allclose(batch.weights, torch.from_numpy(sampler.importance_weights(batch.case_ids)))


def test_2d_loader_from_the_3d_store_pads_labels_with_ignore(tmp_path):
    seg = np.zeros((5, 6, 7), np.int8)
    seg[:, :3] = IGNORE
    seg[4, 5, 6] = 1
    write_synthetic_case(tmp_path, "flat", seg, has_ignore=True)
    loader = build_loader(
        tmp_path,
        ["flat"],
        SamplingSettings(workers=0, oversample_foreground=0.5),
        patch_size=(8, 8),
        input_size=(10, 10),
        batch_size=2,
        has_ignore=True,
    )
    with loader:
        for batch in islice(loader, 50):
            assert batch.image.shape == (2, 1, 10, 10)
            assert (batch.seg == IGNORE).sum(dim=(1, 2, 3)).min() >= 100 - 3 * 7  # padding + unannotated rows
            assert (batch.seg[1] == 1).any()  # forced sample holds the single foreground voxel


def test_slots_are_recycled_and_worker_errors_surface(store, tmp_path):
    with make(store, 2) as loader:
        for _ in islice(loader, 60):
            pass
        assert len(loader._slots) <= 2 * 2 + 2
    # A case that disappears after the loader started: the worker's one-line error naming the file.
    for name in ("a.npy", "a_seg.npy", "a_seg_edges.npy", "a_locs.npz", "a.json"):
        src = store.root / name.replace("a", "case0", 1)
        (tmp_path / name).write_bytes(src.read_bytes())
    broken = Store(tmp_path)
    with PatchLoader(
        broken, CaseSampler(["a"]), patch_size=(4, 4, 4), batch_size=1, settings=SamplingSettings(workers=1)
    ) as loader:
        (tmp_path / "a.npy").unlink()
        with pytest.raises(InputError, match=r"a\.npy.*voxseg preprocess"):
            next(loader)


def test_stats_file_is_written(store, tmp_path):
    with make(store, 0) as loader:
        take(loader, 3)
        loader.write_stats(tmp_path / "sampling_stats.json")
    data = json.loads(Path(tmp_path / "sampling_stats.json").read_text())
    assert data["patches"] == 9 and set(data["case_probabilities"]) == set(store.case_ids())
