"""The CIFAR-10-C recipe as batched tensor operations, and the dataset writer.

``corrupt(images, name, severity, generator)`` applies one corruption of Hendrycks &
Dietterich's ``make_cifar_c.py`` (github.com/hendrycks/robustness) to a batch of uint8 images
(N, 3, H, W) on any device; ``generate_dataset`` writes the official CIFAR-10-C file layout.

Output semantics follow the recipe: every float result is clipped to [0, 1], multiplied by 255
and truncated (``np.uint8(x * 255)``, no rounding); motion blur and the snow layer are
quantised as the recipe's 8-bit PNG round trip through ImageMagick 6 does (``floor(q / 257)``
of the 16-bit rounded sum); pixelate and JPEG are Pillow's own 8-bit results. Random numbers
come from a ``torch.Generator``: the same seed and batch give the same output. The deviations
from the recipe are listed in the package docstring (``robustcli.corruptions``).
"""

from __future__ import annotations

import os
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from robustcli.corruptions import blur, digital, noise, weather
from robustcli.errors import DataError, OutputExistsError, RobustError
from robustcli.io import atomic_write, atomic_write_json, locked_output
from robustcli.progress import work_progress

Tensor = torch.Tensor

# The recipe's order: the 15 common corruptions, then the 4 extra (validation) ones.
CORRUPTIONS: list[str] = [
    "gaussian_noise",
    "shot_noise",
    "impulse_noise",
    "defocus_blur",
    "glass_blur",
    "motion_blur",
    "zoom_blur",
    "snow",
    "frost",
    "fog",
    "brightness",
    "contrast",
    "elastic_transform",
    "pixelate",
    "jpeg_compression",
    "speckle_noise",
    "gaussian_blur",
    "spatter",
    "saturate",
]
COMMON: list[str] = CORRUPTIONS[:15]
EXTRA: list[str] = CORRUPTIONS[15:]
GROUPS: dict[str, list[str]] = {
    "noise": ["gaussian_noise", "shot_noise", "impulse_noise"],
    "blur": ["defocus_blur", "glass_blur", "motion_blur", "zoom_blur"],
    "weather": ["snow", "frost", "fog", "brightness"],
    "digital": ["contrast", "elastic_transform", "pixelate", "jpeg_compression"],
    "extra": ["speckle_noise", "gaussian_blur", "spatter", "saturate"],
}
SEVERITIES: tuple[int, ...] = (1, 2, 3, 4, 5)

_CPU_CHUNK = 256  # images per step on CPU: keeps the float temporaries in cache
_MIN_SIZE = 8


@dataclass(frozen=True)
class Corruption:
    """One corruption: the recipe's five constants, its random draws and its batched mapping.

    ``draw(n, h, w, c, generator, device) -> dict`` returns tensors with a leading batch
    dimension; ``apply(x_uint8, c, **draws) -> uint8``. ``chunk`` bounds the images per call on
    CPU (None: the whole batch at once).
    """

    name: str
    params: tuple
    apply: Callable[..., Tensor]
    draw: Callable[..., dict[str, Tensor]] | None = None
    chunk: int | None = _CPU_CHUNK

    def param(self, severity: int) -> Any:
        return self.params[severity - 1]


SPECS: dict[str, Corruption] = {
    c.name: c
    for c in (
        Corruption(
            "gaussian_noise", noise.GAUSSIAN_NOISE, noise.gaussian_noise, noise.gaussian_noise_draw
        ),
        Corruption(
            "shot_noise", noise.SHOT_NOISE, noise.shot_noise, noise.shot_noise_draw, chunk=4096
        ),
        Corruption(
            "impulse_noise", noise.IMPULSE_NOISE, noise.impulse_noise, noise.impulse_noise_draw
        ),
        Corruption("defocus_blur", blur.DEFOCUS_BLUR, blur.defocus_blur),
        Corruption("glass_blur", blur.GLASS_BLUR, blur.glass_blur, blur.glass_blur_draw),
        Corruption(
            "motion_blur", blur.MOTION_BLUR, blur.motion_blur, blur.motion_blur_draw, chunk=None
        ),
        Corruption("zoom_blur", blur.ZOOM_BLUR, blur.zoom_blur, chunk=512),
        Corruption("snow", weather.SNOW, weather.snow, weather.snow_draw, chunk=None),
        Corruption("frost", weather.FROST, weather.frost, weather.frost_draw),
        Corruption("fog", weather.FOG, weather.fog, weather.fog_draw),
        Corruption("brightness", digital.BRIGHTNESS, digital.brightness),
        Corruption("contrast", digital.CONTRAST, digital.contrast),
        Corruption(
            "elastic_transform",
            digital.ELASTIC_TRANSFORM,
            digital.elastic_transform,
            digital.elastic_transform_draw,
        ),
        Corruption("pixelate", digital.PIXELATE, digital.pixelate),
        Corruption(
            "jpeg_compression", digital.JPEG_COMPRESSION, digital.jpeg_compression, chunk=None
        ),
        Corruption(
            "speckle_noise", noise.SPECKLE_NOISE, noise.speckle_noise, noise.speckle_noise_draw
        ),
        Corruption("gaussian_blur", blur.GAUSSIAN_BLUR, blur.gaussian_blur),
        Corruption("spatter", weather.SPATTER, weather.spatter, weather.spatter_draw, chunk=2048),
        Corruption("saturate", digital.SATURATE, digital.saturate),
    )
}
assert list(SPECS) == sorted(SPECS, key=CORRUPTIONS.index)


def get_corruption(name: str) -> Corruption:
    try:
        return SPECS[name]
    except KeyError:
        raise RobustError(
            f"unknown corruption {name!r}: choose from {', '.join(CORRUPTIONS)}"
        ) from None


def _check_severity(severity: int) -> int:
    if isinstance(severity, bool) or int(severity) != severity or not 1 <= severity <= 5:
        raise RobustError(f"severity must be an integer from 1 to 5, got {severity!r}")
    return int(severity)


def as_uint8_nchw(images: Tensor) -> Tensor:
    """(N, 3, H, W) uint8, or float in [0, 1] (rounded to the nearest of 256 levels)."""
    if not isinstance(images, Tensor):
        raise DataError(f"images must be a torch.Tensor (N, 3, H, W), got {type(images).__name__}")
    if images.ndim != 4 or images.shape[1] != 3:
        raise DataError(
            f"images must have shape (N, 3, H, W), got {tuple(images.shape)}: "
            "permute NHWC batches with images.permute(0, 3, 1, 2)"
        )
    if min(images.shape[-2:]) < _MIN_SIZE:
        raise DataError(
            f"images must be at least {_MIN_SIZE}x{_MIN_SIZE} pixels, got "
            f"{tuple(images.shape[-2:])}: the recipe is for 32x32 images"
        )
    if images.dtype == torch.uint8:
        return images.contiguous()
    if not images.is_floating_point():
        raise DataError(f"images must be uint8 or float in [0, 1], got {images.dtype}")
    return (images.detach().float() * 255).round_().clamp_(0, 255).to(torch.uint8).contiguous()


def _apply_chunked(spec: Corruption, x: Tensor, c: Any, draws: dict[str, Tensor]) -> Tensor:
    n = x.shape[0]
    step = spec.chunk if (spec.chunk and x.device.type == "cpu") else n
    if n <= step:
        return spec.apply(x, c, **draws)
    parts = [
        spec.apply(x[i : i + step], c, **{k: v[i : i + step] for k, v in draws.items()})
        for i in range(0, n, step)
    ]
    return torch.cat(parts)


def draw(
    name: str,
    images_shape: Sequence[int],
    severity: int,
    generator: torch.Generator | None = None,
    device: torch.device | str = "cpu",
) -> dict[str, Tensor]:
    """The random numbers ``corrupt`` uses for a batch of this shape (empty if deterministic)."""
    spec = get_corruption(name)
    n, _, h, w = images_shape
    if spec.draw is None:
        return {}
    return spec.draw(
        n, h, w, spec.param(_check_severity(severity)), generator, torch.device(device)
    )


def corrupt(
    images: Tensor, name: str, severity: int, generator: torch.Generator | None = None
) -> Tensor:
    """Apply corruption ``name`` at ``severity`` (1-5) to a batch of images.

    Args:
        images: (N, 3, H, W) uint8, or float in [0, 1] (rounded to uint8 first, since the
            recipe starts from 8-bit images), on any device.
        name: one of ``CORRUPTIONS``.
        severity: 1 to 5.
        generator: a ``torch.Generator`` (ideally on the images' device) for reproducible
            output; None uses torch's global generator.

    Returns:
        uint8 (N, 3, H, W) on the images' device.
    """
    spec = get_corruption(name)
    severity = _check_severity(severity)
    x = as_uint8_nchw(images)
    if x.shape[0] == 0:
        return x.clone()
    draws = draw(name, x.shape, severity, generator, x.device)
    with torch.no_grad():
        return _apply_chunked(spec, x, spec.param(severity), draws)


# ----------------------------------------------------------------------------------------------
# dataset writer
# ----------------------------------------------------------------------------------------------


def _images_to_nchw(images: Any) -> Tensor:
    t = torch.as_tensor(np.asarray(images)) if not isinstance(images, Tensor) else images
    if t.dtype != torch.uint8:
        raise DataError(f"images must be uint8, got {t.dtype}: convert with (x * 255).round()")
    if t.ndim != 4 or 3 not in (t.shape[1], t.shape[-1]):
        raise DataError(f"images must be (N, H, W, 3) or (N, 3, H, W), got {tuple(t.shape)}")
    if t.shape[-1] == 3:  # NHWC (the official layout) unless only dim 1 can be channels
        t = t.permute(0, 3, 1, 2)
    return t.contiguous()


def chunk_seed(seed: int, name: str, severity: int, chunk: int) -> int:
    """Generator seed of batch ``chunk`` of (corruption, severity): what ``generate_dataset``
    uses, so on-the-fly evaluation can reproduce a written folder batch by batch."""
    seq = np.random.SeedSequence([int(seed), CORRUPTIONS.index(name), severity, chunk])
    return int(seq.generate_state(1, dtype=np.uint64)[0] & ((1 << 63) - 1))


def _default_workers(device: torch.device) -> int:
    return max(1, torch.get_num_threads()) if device.type == "cpu" else 1


def iter_corrupted(
    x: Tensor,
    name: str,
    severities: Sequence[int],
    seed: int,
    batch_size: int,
    device: torch.device,
    workers: int,
) -> Iterator[tuple[int, int, np.ndarray]]:
    """Yield ``(severity, batch index, uint8 (B, H, W, 3) array)`` in file order.

    Batch ``b`` of severity ``s`` uses a generator seeded from (seed, name, s, b). With
    ``workers > 1`` batches run in that many threads (torch ops release the GIL) with one
    intra-op thread each, which also avoids OpenMP stalls on a busy machine.
    """
    n = x.shape[0]
    tasks = [(sev, b, lo) for sev in severities for b, lo in enumerate(range(0, n, batch_size))]

    def run(task: tuple[int, int, int]) -> tuple[int, int, np.ndarray]:
        sev, b, lo = task
        gen = torch.Generator(device).manual_seed(chunk_seed(seed, name, sev, b))
        y = corrupt(x[lo : lo + batch_size].to(device), name, sev, generator=gen)
        return sev, b, y.permute(0, 2, 3, 1).contiguous().cpu().numpy()

    if workers <= 1:
        for task in tasks:
            yield run(task)
        return
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with ThreadPoolExecutor(max_workers=workers) as pool:
            pending: deque[Future] = deque()
            for task in tasks:  # at most 2 * workers batches in flight, yielded in order
                pending.append(pool.submit(run, task))
                if len(pending) >= 2 * workers:
                    yield pending.popleft().result()
            while pending:
                yield pending.popleft().result()
    finally:
        torch.set_num_threads(threads)


@locked_output("out_dir")  # another process writing the same folder is refused
def generate_dataset(
    images: Any,
    labels: Any,
    out_dir: str | os.PathLike[str],
    corruptions: Iterable[str] = tuple(CORRUPTIONS),
    severities: Iterable[int] = SEVERITIES,
    seed: int = 0,
    progress: bool | str = True,
    *,
    force: bool = False,
    batch_size: int = 1000,
    device: str | torch.device = "cpu",
    workers: int | None = None,
) -> Path:
    """Write a CIFAR-10-C style folder: ``<corruption>.npy`` (uint8, (S*N, H, W, 3),
    severity-major: rows [(s-1)*N, s*N) are severity s) and ``labels.npy`` ((S*N,) uint8).

    Args:
        images: uint8 (N, H, W, 3) or (N, 3, H, W), NumPy or torch.
        labels: N integer labels in [0, 255].
        out_dir: the folder to write; must be absent or empty unless ``force``.
        corruptions: names from ``CORRUPTIONS`` (default: all 19).
        severities: subset of 1-5 (default: all; ``generation.json`` records them).
        seed: batches of ``batch_size`` images get their own generator seeded from (seed,
            corruption, severity, batch index), so a subset of corruptions gives the same
            files as a full run; the output depends on ``batch_size``.
        progress: ``True`` / ``"rich"`` a Rich progress bar, ``"plain"`` a line per
            corruption (logs), ``False`` / ``"none"`` nothing.
        force: overwrite into a non-empty folder (files of this run are replaced).
        batch_size: images per batch.
        device: where to compute ("cpu", "cuda", ...).
        workers: CPU threads working on different batches (default: torch's thread count).

    Every file is written to a temporary name in ``out_dir`` and renamed when complete;
    ``labels.npy`` and ``generation.json`` come last.

    Raises:
        OutputExistsError: ``out_dir`` exists and is not empty, unless ``force``.
        DataError: images or labels of the wrong shape or dtype.
    """
    names = list(corruptions)
    for name in names:
        get_corruption(name)
    sevs = sorted({_check_severity(s) for s in severities})
    if not names or not sevs:
        raise RobustError("nothing to generate: give at least one corruption and one severity")
    if (
        isinstance(batch_size, bool)
        or not isinstance(batch_size, int | np.integer)
        or batch_size < 1
    ):
        raise RobustError(f"batch_size must be a whole number of at least 1, got {batch_size!r}")
    if isinstance(seed, bool) or not isinstance(seed, int | np.integer) or seed < 0:
        # NumPy's SeedSequence (chunk_seed) refuses negative seeds: say so before any work
        raise RobustError(f"seed must be a whole number of at least 0, got {seed!r}")
    x = _images_to_nchw(images)
    n, _, h, w = x.shape
    if n == 0:
        raise DataError("no images to corrupt: pass a non-empty (N, H, W, 3) uint8 array")
    as_uint8_nchw(x[:1])  # size checks
    lab = np.asarray(labels)
    if lab.shape != (n,):
        raise DataError(f"labels must have shape ({n},) to match the images, got {lab.shape}")
    if lab.dtype.kind not in "iu" or (n and (lab.min() < 0 or lab.max() > 255)):
        raise DataError("labels must be integers in [0, 255] (they are stored as uint8)")
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise OutputExistsError(f"{out} exists and is not a folder: choose another path")
    if out.is_dir() and any(out.iterdir()) and not force:
        raise OutputExistsError(f"{out} is not empty: choose another folder or pass --force")
    out.mkdir(parents=True, exist_ok=True)
    dev = torch.device(device)
    workers = _default_workers(dev) if workers is None else max(1, int(workers))
    n_batches = -(-n // batch_size)

    bar = work_progress(progress, "corrupt", "{task.description:<24}")
    header = {"descr": "|u1", "fortran_order": False, "shape": (len(sevs) * n, h, w, 3)}
    with bar:
        task = bar.add_task("corrupting", total=len(names) * len(sevs) * n_batches)
        for name in names:
            with atomic_write(out / f"{name}.npy", "wb") as fh:
                np.lib.format.write_array_header_1_0(fh, header)
                for severity, _, arr in iter_corrupted(
                    x, name, sevs, seed, batch_size, dev, workers
                ):
                    fh.write(arr.tobytes())
                    bar.update(task, advance=1, description=f"{name} s{severity}")
        with atomic_write(out / "labels.npy", "wb") as fh:
            np.save(fh, np.tile(lab.astype(np.uint8), len(sevs)), allow_pickle=False)
    atomic_write_json(
        out / "generation.json",
        {
            "generator": "robustcli.corruptions.generate_dataset",
            "recipe": "make_cifar_c.py (github.com/hendrycks/robustness)",
            "corruptions": names,
            "severities": sevs,
            "n_images": n,
            "image_size": [h, w],
            "seed": int(seed),
            "batch_size": int(batch_size),
            "device": str(dev),
            "torch": torch.__version__,
        },
    )
    return out
