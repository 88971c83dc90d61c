"""Make ``examples/data/lung_pet_ct_dx_a0001_chest.nii.gz`` from the shared TCIA DICOM series.

The example CT of the README's main job: the chest CT of subject A0001 of the TCIA
Lung-PET-CT-Dx collection (CC BY 4.0, see ``examples/data/README.md``), read with SimpleITK,
cropped to the slices holding lung (± 5 mm) and in-plane to the lungs ± 12 mm, the air outside
the body set to -1024 HU (the body's HU unchanged; int16, the DICOM geometry kept in the affine),
written as NIfTI compressed with gzip -9. Run once:

    python examples/make_example_ct.py ../shared/data/ct-dicom/lung-pet-ct-dx-A0001-chest-5mm-lung
"""

from __future__ import annotations

import argparse
import gzip
import shutil
from pathlib import Path

import numpy as np
import SimpleITK as sitk
from scipy import ndimage

from infnet_monai.transforms.lung import LungMask

OUT = Path(__file__).resolve().parent / "data" / "lung_pet_ct_dx_a0001_chest.nii.gz"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("series", type=Path, help="the DICOM series folder")
    parser.add_argument("-o", "--output", type=Path, default=OUT)
    args = parser.parse_args()
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(reader.GetGDCMSeriesFileNames(str(args.series)))
    image = reader.Execute()
    hu = sitk.GetArrayFromImage(image)  # (z, y, x)
    spacing = np.asarray(image.GetSpacing())  # (x, y, z) mm
    # the lungs from the package's own mask (the ITK array (z, y, x) is its (X, Y, Z) with an affine
    # whose columns follow: it only needs sides and the slice axis)
    direction = np.asarray(image.GetDirection()).reshape(3, 3)
    affine = np.eye(4)
    lps_to_ras = np.diag([-1.0, -1.0, 1.0])
    affine[:3, :3] = (lps_to_ras @ direction @ np.diag(spacing))[:, ::-1]
    lungs = np.isin(LungMask()(hu[None].astype(np.float32), affine=affine)[0], (1, 2))
    z, y, x = (np.flatnonzero(lungs.any(axis=tuple(d for d in range(3) if d != k))) for k in range(3))
    margin = [int(np.ceil(5.0 / spacing[2])), int(np.ceil(12.0 / spacing[1])), int(np.ceil(12.0 / spacing[0]))]
    box = [slice(max(0, v[0] - m), min(n, v[-1] + m + 1)) for v, m, n in zip((z, y, x), margin, hu.shape)]
    body = np.zeros(hu.shape, dtype=bool)
    for k in range(hu.shape[0]):  # per slice: the largest tissue region, holes filled
        regions, _ = ndimage.label(ndimage.binary_opening(hu[k] > -400, iterations=2))
        sizes = np.bincount(regions.ravel())
        sizes[0] = 0
        body[k] = ndimage.binary_fill_holes(regions == sizes.argmax())
    body = ndimage.binary_dilation(body, iterations=2)
    masked = sitk.GetImageFromArray(np.where(body, hu, -1024).astype(np.int16))
    masked.CopyInformation(image)
    cropped = masked[box[2].start : box[2].stop, box[1].start : box[1].stop, box[0].start : box[0].stop]
    args.output.parent.mkdir(parents=True, exist_ok=True)
    plain = args.output.with_name(args.output.name.removesuffix(".gz"))
    sitk.WriteImage(sitk.Cast(cropped, sitk.sitkInt16), str(plain), useCompression=False)
    with open(plain, "rb") as src, gzip.open(args.output, "wb", compresslevel=9) as dst:
        shutil.copyfileobj(src, dst)
    plain.unlink()
    print(f"{args.output}: {cropped.GetSize()} voxels (x, y, z), {args.output.stat().st_size / 1e6:.1f} MB")


if __name__ == "__main__":
    main()
