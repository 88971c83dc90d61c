"""Walk-through: segment a real chest CT series end to end and see where the outputs go.

    python examples/segment_ct.py                                        # the shared DICOM series, shipped model
    python examples/segment_ct.py --input examples/data/lung_pet_ct_dx_a0001_chest.nii.gz
    python examples/segment_ct.py --input /data/ct.nii.gz --weights my_bundle/models/model.pt
    python examples/segment_ct.py --demo-weights                         # geometry demo only

Steps (each one is a library call you can reuse):
1. read the DICOM series (or NIfTI) into a MetaTensor in HU and list its geometry;
2. run the shared preprocessing chain (orient, lung mask, HU window, crop to the thorax, the
   model's size: 256x256 for the shipped model);
3. run Inf-Net slice by slice (SliceInferer) and invert the prediction to the input grid;
4. write ``<name>_seg.nii.gz`` (uint8, same shape and affine as the input) atomically.

``--demo-weights`` builds a randomly initialised network: the mask is then meaningless and only
shows the geometry round trip. Without ``--weights`` the shipped model runs.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import nibabel as nib
import numpy as np
import torch

from infnet_monai.inference import infer_volume, mask_saver
from infnet_monai.inferers import slice_inferer
from infnet_monai.runtime import load_network
from infnet_monai.networks import InfNet
from infnet_monai.transforms import LoadCT
from infnet_monai.transforms.chain import ct_postprocessing, ct_preprocessing

SHARED_SERIES = Path(__file__).resolve().parents[1].parent / "shared/data/ct-dicom/lung-pet-ct-dx-A0001-chest-5mm-lung"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--input", type=Path, default=SHARED_SERIES, help="DICOM folder or NIfTI file")
    parser.add_argument("--weights", help="trained InfNet state dict (default: the shipped model)")
    parser.add_argument("--demo-weights", action="store_true", help="random weights: geometry demo, meaningless mask")
    parser.add_argument("-o", "--output-dir", type=Path, default=Path("segment_example_out"))
    args = parser.parse_args(argv)
    if not args.input.exists():
        print(f"{args.input}: not found; pass --input a DICOM folder or NIfTI file", file=sys.stderr)
        return 2

    image = LoadCT(ensure_channel_first=True)(str(args.input))
    print(f"1. input {args.input.name}: shape {tuple(image.shape[1:])}, spacing {np.round(image.pixdim.tolist(), 3)} mm, "
          f"HU range [{float(image.min()):.0f}, {float(image.max()):.0f}]")

    if args.demo_weights:
        weights = Path(tempfile.mkdtemp()) / "random_infnet.pt"
        torch.manual_seed(0)
        torch.save(InfNet().state_dict(), weights)
        print("   demo weights: random network, the mask is NOT meaningful")
    else:
        weights = args.weights
    network = load_network(weights)  # None: the shipped model

    pre = ct_preprocessing(network_input=False)  # as the CLI: one [0, 1] channel, 3 channels per slice batch
    item = pre({"image": str(args.input)})
    print(f"2. preprocessed {tuple(item['image'].shape)} (windowed, cropped to the thorax, per axial slice near the lungs)")

    result = infer_volume(item, network, slice_inferer(), ct_postprocessing(pre))
    print(f"3. {result.summary(args.input.name)}")

    mask_saver(args.output_dir)(result.item["pred"])
    out = next(args.output_dir.glob("*_seg.nii.gz"))
    saved = nib.load(str(out))
    print(f"4. wrote {out}: shape {saved.shape}, dtype {saved.get_data_dtype()}, "
          f"affine equal to the input's: {np.allclose(saved.affine, np.asarray(image.affine), atol=1e-4)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
