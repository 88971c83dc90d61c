"""Tasks of the Inf-Net MONAI Label app."""
