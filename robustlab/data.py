"""Datasets by name, as [0, 1] float images and integer labels, with the same transforms everywhere.

Fashion-MNIST and MNIST are found offline first: ``root`` (raw idx files or torchvision's layout), then
``$ROBUSTLAB_DATA``/``~/.cache/robustlab/data``, then Debian's ``/usr/share/datasets/<name>``; only when
none holds the files does torchvision download them (unless ``download=False``).
"""

from __future__ import annotations

import gzip
import logging
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset, Subset

from robustlab.errors import RobustlabError

log = logging.getLogger(__name__)

DATASETS: dict[str, dict[str, Any]] = {
    "fashion-mnist": {"channels": 1, "image_size": 28, "num_classes": 10, "stats": "fashion-mnist"},
    "mnist": {"channels": 1, "image_size": 28, "num_classes": 10, "stats": "mnist"},
    "cifar10": {"channels": 3, "image_size": 32, "num_classes": 10, "stats": "cifar10"},
    "cifar100": {"channels": 3, "image_size": 32, "num_classes": 100, "stats": "cifar100"},
    "svhn": {"channels": 3, "image_size": 32, "num_classes": 10, "stats": "svhn"},
    "imagefolder": {"channels": 3, "image_size": 224, "num_classes": None, "stats": "imagenet"},
}
_ALIASES = {"fmnist": "fashion-mnist", "fashion_mnist": "fashion-mnist", "fashionmnist": "fashion-mnist"}
_IDX_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
_TORCHVISION_DIR = {"fashion-mnist": "FashionMNIST", "mnist": "MNIST"}


def _canonical(name: str) -> tuple[str, str | None]:
    """Split ``imagefolder:PATH`` and resolve aliases."""
    base, _, path = name.partition(":")
    base = _ALIASES.get(base.lower(), base.lower())
    if base not in DATASETS:
        raise RobustlabError(
            f"unknown dataset {name!r}; choose one of: fashion-mnist, mnist, cifar10, cifar100, svhn, imagefolder:PATH"
        )
    return base, path or None


def canonical_name(name: str) -> str:
    """A dataset's name without its path and alias (``fmnist`` -> ``fashion-mnist``, ``imagefolder:X`` ->
    ``imagefolder``), to compare the data a model was made for with the data it is given; never raises."""
    base = name.partition(":")[0].lower()
    return _ALIASES.get(base, base)


def dataset_info(name: str) -> dict[str, Any]:
    """Channels, image size, number of classes and normalisation statistics of a dataset."""
    return dict(DATASETS[_canonical(name)[0]])


class ImageTensorDataset(Dataset):
    """Images held in memory as uint8 (N, C, H, W); items are ``(float image in [0, 1], label)``."""

    def __init__(self, images: Tensor, labels: Tensor, num_classes: int | None = None) -> None:
        self.images = images
        self.labels = labels.long()
        self.num_classes = num_classes  # how many classes the labels index (None: unknown)

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> tuple[Tensor, int]:
        return self.images[index].float().div_(255), int(self.labels[index])


def _read_idx(path: Path) -> np.ndarray:
    """Read an idx file (optionally gzipped) as a numpy array."""
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as f:
        data = f.read()
    ndim = data[3]
    shape = tuple(int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim).reshape(shape)


def _find_idx(folder: Path, stem: str) -> Path | None:
    for candidate in (folder / stem, folder / f"{stem}.gz"):
        if candidate.is_file():
            return candidate
    return None


def _idx_search_path(base: str, root: str | None) -> list[Path]:
    folders = []
    for r in [root, os.environ.get("ROBUSTLAB_DATA"), str(Path.home() / ".cache" / "robustlab" / "data")]:
        if r:
            folders += [Path(r), Path(r) / base, Path(r) / _TORCHVISION_DIR[base] / "raw"]
    folders.append(Path("/usr/share/datasets") / base)
    return folders


def _load_idx_dataset(base: str, split: str, root: str | None, download: bool) -> ImageTensorDataset:
    img_stem, lbl_stem = _IDX_FILES[split]
    for folder in _idx_search_path(base, root):
        img, lbl = _find_idx(folder, img_stem), _find_idx(folder, lbl_stem)
        if img and lbl:
            log.info("reading %s %s from %s", base, split, folder)
            images = torch.from_numpy(_read_idx(img).copy()).unsqueeze(1)
            labels = torch.from_numpy(_read_idx(lbl).astype(np.int64))
            return ImageTensorDataset(images, labels, DATASETS[base]["num_classes"])
    searched = ", ".join(str(f) for f in _idx_search_path(base, root))
    hint = f"install Debian's dataset-{base} package or pass --data-root"
    if not download:
        raise RobustlabError(f"{base} not found in {searched}; {hint}")
    import torchvision

    target = root or str(Path.home() / ".cache" / "robustlab" / "data")
    cls = torchvision.datasets.FashionMNIST if base == "fashion-mnist" else torchvision.datasets.MNIST
    try:
        ds = cls(target, train=split == "train", download=True)
    except (RuntimeError, OSError) as exc:  # no network
        raise RobustlabError(f"{base} not found in {searched} and the download failed ({exc}); {hint}") from None
    return ImageTensorDataset(ds.data.unsqueeze(1), ds.targets, DATASETS[base]["num_classes"])


def load_dataset(
    name: str,
    split: str = "test",
    root: str | None = None,
    download: bool = True,
    *,
    image_size: int | None = None,
    channels: int | None = None,
) -> Dataset:
    """A dataset by name and split (``train`` or ``test``) whose items are ``(image in [0, 1], label)``.

    Files already on disk are always used first; ``download`` only allows fetching missing ones. ``image_size`` and
    ``channels`` apply to ``imagefolder:PATH`` (default: resize 256, centre crop 224, RGB, ImageNet's protocol).
    """
    base, path = _canonical(name)
    if split not in ("train", "test"):
        raise RobustlabError(f"unknown split {split!r}; choose train or test")
    if root is not None and not Path(root).is_dir():  # never fall back silently to another copy of the data
        raise RobustlabError(f"--data-root {root!r} is not an existing folder; check the path or leave it out")
    if (image_size is not None or channels is not None) and base != "imagefolder":
        raise RobustlabError(f"--image-size and --channels apply to imagefolder:PATH only, not to {base}")
    if base in _TORCHVISION_DIR:
        return _load_idx_dataset(base, split, root, download)
    import torchvision
    from torchvision import transforms

    root = root or str(Path.home() / ".cache" / "robustlab" / "data")
    to_tensor = transforms.ToTensor()
    try:
        if base == "cifar10":
            return torchvision.datasets.CIFAR10(root, train=split == "train", transform=to_tensor, download=download)
        if base == "cifar100":
            return torchvision.datasets.CIFAR100(root, train=split == "train", transform=to_tensor, download=download)
        if base == "svhn":
            return torchvision.datasets.SVHN(root, split=split, transform=to_tensor, download=download)
    except (RuntimeError, OSError) as exc:
        raise RobustlabError(f"{base} not found under {root!r} and not downloaded ({exc}); pass --data-root") from None
    return _image_folder(path, split, image_size, channels)


def _image_folder(path: str | None, split: str, image_size: int | None, channels: int | None) -> Dataset:
    """``PATH/SPLIT`` (or ``PATH``) with one sub-folder per class, resized to ``image_size`` (default: resize 256,
    crop 224) with ``channels`` (1: grey, 3: RGB, the default)."""
    from torchvision import datasets, transforms

    if path is None or not Path(path).is_dir():
        raise RobustlabError(f"imagefolder needs an existing folder: imagefolder:PATH, got {path!r}")
    if channels not in (None, 1, 3):
        raise RobustlabError(f"--channels {channels} is not supported for imagefolder; use 1 (grey) or 3 (RGB)")
    folder = Path(path) / split if (Path(path) / split).is_dir() else Path(path)
    size = [transforms.Resize(256), transforms.CenterCrop(224)] if image_size is None else [
        transforms.Resize(image_size), transforms.CenterCrop(image_size)]  # fmt: skip
    grey = [transforms.Grayscale(1)] if channels == 1 else []
    try:
        ds = datasets.ImageFolder(str(folder), transform=transforms.Compose([*grey, *size, transforms.ToTensor()]))
    except (FileNotFoundError, RuntimeError) as exc:  # no class folder, or class folders without images
        raise RobustlabError(
            f"imagefolder:{path} holds no images ({str(exc).splitlines()[0][:120]}); it needs one sub-folder per "
            "class with image files in it"
        ) from None
    if len(ds.classes) == 1:
        log.warning(
            "imagefolder:%s has one class folder (%r): every image gets label 0; point it at the folder that holds "
            "one sub-folder per class", folder, ds.classes[0],
        )  # fmt: skip
    return ds


def num_classes_of(dataset: Dataset, name: str | None = None) -> int | None:
    """How many classes a dataset's labels index: its ``classes`` (through subsets), else what the dataset ``name``
    has (10 for fashion-mnist), else None."""
    while isinstance(dataset, Subset):
        dataset = dataset.dataset
    classes = getattr(dataset, "classes", None)
    if classes:
        return len(classes)
    if getattr(dataset, "num_classes", None):
        return int(dataset.num_classes)  # type: ignore[attr-defined]
    return dataset_info(name)["num_classes"] if name is not None else None


def first_n(dataset: Dataset, n: int | None) -> Dataset:
    """The first ``n`` items of ``dataset`` (all of them when ``n`` is None)."""
    size = len(dataset)  # type: ignore[arg-type]
    if n is None:
        return dataset
    if not 1 <= n <= size:
        raise RobustlabError(f"--n {n} is out of range: this split has {size} items, so choose 1..{size}")
    return Subset(dataset, range(n))
