"""Ensembling probabilities of folds in memory and of configurations from CASE.npz files."""

from __future__ import annotations

import numpy as np
import pytest

from voxseg.data.io import Geometry, read_image
from voxseg.errors import InputError
from voxseg.inference.ensemble import (
    ensemble_files,
    ensemble_folders,
    load_probabilities,
    probabilities_to_segmentation,
    save_probabilities,
)

GEOMETRY = Geometry((2.0, 1.0, 1.5), (1.0, 2.0, 3.0), (1, 0, 0, 0, 1, 0, 0, 0, 1))


def test_region_segmentation_follows_class_order():
    p = np.zeros((2, 1, 3), np.float32)
    p[0] = [[0.9, 0.9, 0.1]]  # whole tumour
    p[1] = [[0.9, 0.2, 0.1]]  # core, painted after whole
    assert probabilities_to_segmentation(p, (1, 2)).tolist() == [[2, 1, 0]]
    assert probabilities_to_segmentation(p).tolist() == [[0, 0, 0]]


def test_ensemble_files_and_folders(tmp_path):
    rng = np.random.default_rng(0)
    probs = [rng.dirichlet(np.ones(3), size=(4, 5, 6)).transpose(3, 0, 1, 2).astype(np.float32) for _ in range(2)]
    for i, p in enumerate(probs):
        save_probabilities(tmp_path / f"cfg{i}" / "case1.npz", p, GEOMETRY)
    save_probabilities(tmp_path / "cfg0" / "only_here.npz", probs[0], GEOMETRY)
    loaded, g, order = load_probabilities(tmp_path / "cfg1" / "case1.npz")
    assert g == GEOMETRY and order is None and np.allclose(loaded, probs[1], atol=1e-3)  # float16 on disk

    written = ensemble_folders([tmp_path / "cfg0", tmp_path / "cfg1"], tmp_path / "ens", ".nrrd", save_probabilities=True)
    assert [p.name for p in written] == ["case1.nrrd"]
    seg, geometry = read_image(written[0])
    expected = ((probs[0].astype(np.float16).astype(np.float32) + probs[1].astype(np.float16).astype(np.float32)) / 2).argmax(0)
    assert (seg == expected).all() and geometry.differs_from(GEOMETRY) == []
    assert (tmp_path / "ens" / "case1.npz").is_file()


def test_ensemble_rejects_bad_inputs(tmp_path):
    save_probabilities(tmp_path / "a.npz", np.ones((2, 3, 3, 3), np.float32) / 2, GEOMETRY)
    save_probabilities(tmp_path / "b.npz", np.ones((3, 3, 3, 3), np.float32) / 3, GEOMETRY)
    with pytest.raises(InputError, match="differs"):
        ensemble_files([tmp_path / "a.npz", tmp_path / "b.npz"], tmp_path / "x.nrrd")
    (tmp_path / "c.npz").write_bytes(b"not a zip")
    with pytest.raises(InputError, match="probability file"):
        load_probabilities(tmp_path / "c.npz")
    with pytest.raises(InputError):
        ensemble_folders([tmp_path], tmp_path / "o", ".nrrd")
