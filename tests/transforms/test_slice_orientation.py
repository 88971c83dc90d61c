"""A 2D slice image and a CT volume's axial slice reach the network in the same layout.

A slice image is read as displayed (rows top to bottom); a volume slice is oriented to the
radiological display (rows anterior → posterior, columns patient right → left). COVID-SemiSeg
itself stores its slices transposed (spine on the right, or on the left when also mirrored), so
the shipped model trains with all eight flips and 90° rotations (``augment="ct"``); this test
checks the readers, which must not add a transposition of their own: a model trained on
display-layout images must see volume slices laid out the same way.
"""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image

from infnet_monai.transforms.chain import ct_preprocessing
from infnet_monai.transforms.train2d import slice_validation_transforms

from infnet_monai.data.phantoms import affine_for, chest_phantom, save_nifti


def test_display_png_and_volume_slice_give_the_same_network_input(tmp_path):
    size, k = 64, 1
    vol = chest_phantom((size, size, 3), (5.0, 5.0, 5.0), seed=3)  # RAS: x → right, y → anterior
    path = save_nifti(tmp_path / "ct.nii.gz", vol, affine_for((5.0, 5.0, 5.0), "RAS"))
    volume_input = ct_preprocessing(lung_crop=False, keep_lung_mask=False, spatial_size=size)({"image": str(path)})
    from_volume = volume_input["image"][0, :, :, k]

    # the radiological display image of slice k, built independently from the RAS array
    display = np.empty((size, size), np.float32)
    for r in range(size):          # row r: posterior-most at the bottom → y = size - 1 - r
        for c in range(size):      # column c: patient left at the right → x = size - 1 - c
            display[r, c] = vol[size - 1 - c, size - 1 - r, k]
    png = np.clip((display + 1250.0) / 1500.0 * 255.0, 0, 255).round().astype(np.uint8)
    Image.fromarray(png).save(tmp_path / "slice.png")
    from_png = slice_validation_transforms(image_size=size)({"image": str(tmp_path / "slice.png")})["image"][0]

    assert from_png.shape == from_volume.shape == (size, size)
    # equal up to 8-bit quantisation (1/255 of the window, divided by the ImageNet std)
    torch.testing.assert_close(from_png.float(), from_volume.float(), atol=0.5 / 255 / 0.229 + 1e-4, rtol=0)
