"""How a trained network runs on the machine at hand, apart from what the network is
(:mod:`infnet_monai.networks`):

- :mod:`.policy`: the defaults of a run (device, slice batch, precision, whether to compile);
- :mod:`.fuse` and :mod:`.optimize`: the inference-only copy of a network (BatchNorm folded,
  channels-last);
- :mod:`.packaged`: the ahead-of-time compiled CPU package of that copy, cached per machine;
- :mod:`.loading`: the weights checked and loaded into the network, through all of the above.
"""

from . import loading, policy
from .loading import (
    MissingWeightsError,
    PreparedPackage,
    load_network,
    load_pattern_network,
    prepare_package,
    require_weights,
)
from .policy import (
    COMPILE_MIN_SLICES,
    PRECISIONS,
    compile_choice,
    compile_pays_off,
    default_batch_size,
    default_device,
    default_precision,
)

__all__ = loading.__all__ + policy.__all__
