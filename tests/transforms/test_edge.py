"""Edge targets: analytic band on synthetic masks, agreement with the published Edge images."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from monai.data import MetaTensor
from PIL import Image

from infnet_monai.transforms.edge import EdgeTarget, EdgeTargetd

# Mean Dice between EdgeTarget(GT) and the shared doctor-label Edge images, measured: 0.9989.
MEASURED_EDGE_DICE = 0.9989


def test_edge_band_of_a_square_is_two_pixels_wide():
    mask = torch.zeros(1, 12, 12)
    mask[0, 3:9, 3:9] = 1
    edge = EdgeTarget()(mask)
    expected = torch.zeros(12, 12)
    expected[2:10, 2:10] = 1  # outer ring (4-neighbours of the square) ...
    expected[4:8, 4:8] = 0  # ... and inner ring, minus the untouched interior
    for r, c in [(2, 2), (2, 9), (9, 2), (9, 9)]:
        expected[r, c] = 0  # corners are only diagonal neighbours: not 4-connected
    assert torch.equal(edge[0], expected)
    assert edge.dtype == torch.float32


def test_edge_keeps_meta_and_handles_volumes_and_borders():
    mask = MetaTensor(torch.zeros(1, 6, 6, 3), affine=torch.diag(torch.tensor([2.0, 2.0, 5.0, 1.0])))
    mask[0, :, :3, 1] = 1  # half plane touching the image border in slice 1 only
    edge = EdgeTarget()(mask)
    assert isinstance(edge, MetaTensor) and torch.equal(edge.affine, mask.affine)
    assert edge[0, :, :, 0].sum() == 0 and edge[0, :, :, 2].sum() == 0  # in-plane only
    assert torch.equal(edge[0, :, :, 1].sum(dim=0), torch.tensor([0.0, 0, 6, 6, 0, 0]))  # no band at borders
    soft = EdgeTarget(threshold=0.5)(np.full((1, 4, 4), 0.4, dtype=np.float32))
    assert isinstance(soft, np.ndarray) and soft.sum() == 0


def test_edge_dict_keeps_loaded_edges_unless_overwrite():
    mask = torch.zeros(1, 8, 8)
    mask[0, 2:6, 2:6] = 1
    loaded = torch.full((1, 8, 8), 0.25)
    kept = EdgeTargetd("label")({"label": mask, "edge": loaded})
    assert torch.equal(kept["edge"], loaded)
    made = EdgeTargetd("label", overwrite=True)({"label": mask, "edge": loaded})
    assert torch.equal(made["edge"], EdgeTarget()(mask))
    assert torch.equal(EdgeTargetd("label")({"label": mask})["edge"], made["edge"])
    with pytest.raises(ValueError, match="spatial axes"):
        EdgeTarget()(torch.zeros(8))


def test_edge_matches_published_edge_images(semiseg_dir):
    gt_dir = semiseg_dir / "doctor-label" / "GT"
    dices = []
    for gt_path in sorted(gt_dir.glob("*.png")):
        gt = np.asarray(Image.open(gt_path))[None].astype(np.float32)
        published = np.asarray(Image.open(gt_path.parent.parent / "Edge" / gt_path.name)) > 127
        ours = EdgeTarget(threshold=127)(gt)[0] > 0
        dices.append(2 * (ours & published).sum() / (ours.sum() + published.sum()))
    assert len(dices) == 50
    assert np.mean(dices) > MEASURED_EDGE_DICE - 0.005
    assert np.min(dices) > 0.99
