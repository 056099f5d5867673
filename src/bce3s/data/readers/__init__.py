"""Dataset readers and their registry: ``cfg.dataset`` name -> reader returning the dataset as found on disk
(:class:`bce3s.data.readers.base.SourceData`).

Readers live one per module: ``cifar`` (CIFAR-10/100 pickles), ``idx`` (MNIST, Fashion-MNIST), ``digits``
(scikit-learn digits), ``imagefolder`` (any ``{train,test}/<class>/*`` tree) and ``splitfile`` (ImageNet-LT,
Places-LT, iNaturalist 2018). ``bce3s.data.splits.build_data`` turns their output into long-tailed splits.
"""

from __future__ import annotations

from collections.abc import Callable

from bce3s.config import DataConfig
from bce3s.data.readers.base import SourceData
from bce3s.data.readers.cifar import read_cifar10, read_cifar100
from bce3s.data.readers.digits import read_digits
from bce3s.data.readers.idx import read_fashion_mnist, read_mnist
from bce3s.data.readers.imagefolder import read_imagefolder
from bce3s.data.readers.splitfile import read_imagenet_lt, read_inat2018, read_places_lt
from bce3s.errors import ConfigError

__all__ = ["DATASETS", "READERS", "SourceData", "read_source"]

READERS: dict[str, Callable[[DataConfig], SourceData]] = {
    "digits_lt": read_digits,
    "fashion_mnist_lt": read_fashion_mnist,
    "mnist_lt": read_mnist,
    "cifar10_lt": read_cifar10,
    "cifar100_lt": read_cifar100,
    "imagefolder_lt": read_imagefolder,
    "imagenet_lt": read_imagenet_lt,
    "places_lt": read_places_lt,
    "inat2018": read_inat2018,
}
DATASETS = READERS  # the name the package exports (``bce3s.data.DATASETS``)


def read_source(cfg: DataConfig) -> SourceData:
    """Read ``cfg.dataset`` from ``cfg.root`` (see each reader for the expected layout).

    Raises:
        ConfigError: unknown dataset name.
        DataError: missing or malformed files.
    """
    reader = READERS.get(cfg.dataset)
    if reader is None:
        raise ConfigError(f"data.dataset: unknown dataset {cfg.dataset!r}; valid: {', '.join(READERS)}")
    return reader(cfg)
