"""Few-shot classification data: Omniglot, mini-ImageNet and digits loaders, episode sampler.

Loaders return :class:`FewShotDataset` splits holding ``uint8 [n_classes, n_examples, H, W, C]``
arrays; :func:`episodes` turns such an array into a ``TaskBatch`` of N-way K-shot episodes,
on device and under ``jit``. Data roots default to ``$METAJAX_DATA``; nothing is downloaded
unless :func:`download_omniglot` is called.
"""

from metajax._src.data.dataset import FewShotDataset, FewShotSplits
from metajax._src.data.digits import digits
from metajax._src.data.episodes import episodes
from metajax._src.data.mini_imagenet import mini_imagenet
from metajax._src.data.omniglot import (
    OmniglotCharacters,
    download_omniglot,
    load_omniglot_characters,
    omniglot,
    omniglot_maml_split,
    omniglot_split_from_file,
)

__all__ = [
    "FewShotDataset",
    "FewShotSplits",
    "OmniglotCharacters",
    "digits",
    "download_omniglot",
    "episodes",
    "load_omniglot_characters",
    "mini_imagenet",
    "omniglot",
    "omniglot_maml_split",
    "omniglot_split_from_file",
]
