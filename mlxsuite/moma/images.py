"""Images as discrete tokens: a patch codebook trained in MLX (k-means / VQ on p×p patches), the digits data set with
generated captions, and user folders of PNG/JPEG images with a captions JSONL.

An image is grayscale, `size`×`size` pixels in [0, 1]; it is cut into (size/patch)² patches in raster order and each
patch becomes the id of its nearest codebook vector, the small-scale analogue of Chameleon's 32×32 grid of VQ codes
(notes §9.2, option 2). Decoding replaces each code by its codebook vector.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import mlx.core as mx
import numpy as np

from mlxsuite.platform import atomic
from mlxsuite.platform.errors import UserError

CODEBOOK_FILE = "codebook.safetensors"
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
NUMBER_WORDS = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]
CAPTION_TEMPLATES = [
    "a handwritten digit {w}",
    "the number {w}, written by hand",
    "a small scan of a handwritten {w}",
    "handwritten {w}",
]


# ---- patches ------------------------------------------------------------------------------------------------------


def to_patches(images: np.ndarray, patch: int) -> np.ndarray:
    """(n, S, S) → (n, (S/p)², p²) in raster order."""
    n, S, _ = images.shape
    g = S // patch
    x = images.reshape(n, g, patch, g, patch).transpose(0, 1, 3, 2, 4)
    return x.reshape(n, g * g, patch * patch)


def from_patches(patches: np.ndarray, patch: int) -> np.ndarray:
    """(n, G², p²) → (n, S, S)."""
    n, gg, _ = patches.shape
    g = int(round(gg**0.5))
    x = patches.reshape(n, g, g, patch, patch).transpose(0, 1, 3, 2, 4)
    return x.reshape(n, g * patch, g * patch)


def kmeans(x: np.ndarray, k: int, iters: int = 25, seed: int = 0) -> np.ndarray:
    """k-means++ seeding (numpy), then Lloyd iterations in MLX. x (n, p) → centroids (k, p)."""
    rng = np.random.default_rng(seed)
    x = np.asarray(x, np.float32)
    n = len(x)
    if n < k:
        raise UserError(f"a codebook of {k} entries needs at least {k} patches, got {n}")
    centers = [x[rng.integers(n)]]
    d2 = ((x - centers[0]) ** 2).sum(1)
    for _ in range(1, k):
        p = d2 / d2.sum() if d2.sum() > 0 else np.full(n, 1 / n)
        c = x[rng.choice(n, p=p)]
        centers.append(c)
        d2 = np.minimum(d2, ((x - c) ** 2).sum(1))
    X = mx.array(x)
    C = mx.array(np.stack(centers))
    xx = (X * X).sum(1, keepdims=True)
    for _ in range(iters):
        assign = mx.argmin(xx - 2 * X @ C.T + (C * C).sum(1)[None], axis=1)
        onehot = (assign[:, None] == mx.arange(k)[None]).astype(mx.float32)
        counts = onehot.sum(0)
        sums = onehot.T @ X
        C = mx.where(counts[:, None] > 0, sums / mx.maximum(counts[:, None], 1), C)
        mx.eval(C)
    return np.array(C)


@dataclass
class ImageTokenizer:
    """Nearest-codebook-vector patch tokenizer. codebook (K, p²)."""

    codebook: np.ndarray
    size: int = 8
    patch: int = 2

    @property
    def num_codes(self) -> int:
        return int(self.codebook.shape[0])

    @property
    def tokens_per_image(self) -> int:
        return (self.size // self.patch) ** 2

    @classmethod
    def train(cls, images: np.ndarray, num_codes: int = 64, patch: int = 2, seed: int = 0, iters: int = 25):
        size = images.shape[-1]
        if size % patch:
            raise UserError(f"patch size {patch} does not divide the image size {size}")
        x = to_patches(np.asarray(images, np.float32), patch).reshape(-1, patch * patch)
        return cls(kmeans(x, num_codes, iters, seed), size, patch)

    def encode(self, images: np.ndarray) -> np.ndarray:
        """(n, S, S) in [0, 1] → (n, tokens_per_image) int32 codes."""
        x = mx.array(to_patches(np.asarray(images, np.float32), self.patch))
        C = mx.array(self.codebook)
        d = (x * x).sum(-1, keepdims=True) - 2 * x @ C.T + (C * C).sum(-1)
        return np.array(mx.argmin(d, axis=-1)).astype(np.int32)

    def decode(self, codes: np.ndarray) -> np.ndarray:
        """(n, tokens_per_image) → (n, S, S) in [0, 1]."""
        codes = np.clip(np.asarray(codes, np.int64), 0, self.num_codes - 1)
        return np.clip(from_patches(self.codebook[codes], self.patch), 0.0, 1.0)

    def save(self, folder: Path) -> None:
        atomic.write_safetensors(
            Path(folder) / CODEBOOK_FILE,
            {"codebook": mx.array(self.codebook)},
            metadata={"size": str(self.size), "patch": str(self.patch)},
        )

    @classmethod
    def load(cls, folder: Path) -> ImageTokenizer:
        path = Path(folder) / CODEBOOK_FILE
        if not path.exists():
            raise UserError(f"{folder} has no image codebook ({CODEBOOK_FILE})")
        arrays, meta = mx.load(str(path), return_metadata=True)
        return cls(np.array(arrays["codebook"]), int(meta["size"]), int(meta["patch"]))


# ---- data sets ----------------------------------------------------------------------------------------------------


@dataclass
class ImageSet:
    """Images (n, S, S) in [0, 1] with one or more captions each; a deterministic train/val split."""

    name: str
    images: np.ndarray
    captions: list[list[str]]
    val_mask: np.ndarray

    def split(self, part: str) -> tuple[np.ndarray, list[list[str]]]:
        keep = self.val_mask if part == "val" else ~self.val_mask
        return self.images[keep], [c for c, k in zip(self.captions, keep) if k]


def digit_captions(label: int) -> list[str]:
    return [t.format(w=NUMBER_WORDS[label]) for t in CAPTION_TEMPLATES]


@lru_cache(maxsize=1)
def _digits() -> tuple[np.ndarray, np.ndarray]:
    """Read scikit-learn's bundled digits.csv.gz directly (importing sklearn takes seconds); sklearn as fallback."""
    import importlib.util

    spec = importlib.util.find_spec("sklearn")
    if spec is None:
        raise UserError("the default image data needs scikit-learn: pip install scikit-learn")
    path = Path(list(spec.submodule_search_locations)[0]) / "datasets" / "data" / "digits.csv.gz"
    if path.exists():
        raw = np.loadtxt(path, delimiter=",", dtype=np.float32)
        images, target = raw[:, :-1].reshape(-1, 8, 8), raw[:, -1]
    else:
        from sklearn.datasets import load_digits as sk_load

        d = sk_load()
        images, target = d.images, d.target
    return (images / 16.0).astype(np.float32), target.astype(np.int64)


def load_digits(val_fraction: float = 0.1, seed: int = 0) -> ImageSet:
    """scikit-learn's bundled handwritten digits: 1,797 8×8 images, 17 gray levels → [0, 1], templated captions."""
    images, labels = _digits()
    captions = [digit_captions(int(y)) for y in labels]
    rng = np.random.default_rng(seed)
    val = rng.random(len(images)) < val_fraction
    return ImageSet("digits", images, captions, val)


def read_image(path: Path, size: int) -> np.ndarray:
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            im = im.convert("L").resize((size, size), Image.LANCZOS)
            return np.asarray(im, dtype=np.float32) / 255.0
    except (UnidentifiedImageError, OSError, ValueError) as e:
        raise UserError(f"cannot read image {path}: {e}") from None


def load_image_folder(
    folder: str | Path, captions_file: str | Path | None = None, size: int = 8, val_fraction: float = 0.1, seed: int = 0
) -> ImageSet:
    """A folder of PNG/JPEG images and a JSONL with one {"file": NAME, "caption": TEXT} per line (default:
    FOLDER/captions.jsonl). Every caption must name an image of the folder and every image needs a caption."""
    folder = Path(folder).expanduser()
    if not folder.is_dir():
        raise UserError(f"image folder not found: {folder}")
    files = sorted(p.name for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise UserError(f"{folder} has no PNG or JPEG images")
    cap_path = Path(captions_file).expanduser() if captions_file else folder / "captions.jsonl"
    if not cap_path.exists():
        raise UserError(f"captions file not found: {cap_path}")
    caps: dict[str, list[str]] = {}
    for i, line in enumerate(cap_path.read_text(encoding="utf-8").splitlines()):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
            name, text = rec["file"], rec["caption"]
        except (ValueError, KeyError, TypeError):
            raise UserError(f"{cap_path} line {i + 1}: expected a JSON object with 'file' and 'caption'") from None
        if not isinstance(text, str) or not text.strip():
            raise UserError(f"{cap_path} line {i + 1}: 'caption' must be a non-empty string")
        if name not in files:
            raise UserError(f"{cap_path} line {i + 1}: {name!r} is not an image in {folder}")
        caps.setdefault(name, []).append(text.strip())
    missing = [f for f in files if f not in caps]
    if missing:
        raise UserError(
            f"{cap_path} does not match {folder}: no caption for {len(missing)} image(s), e.g. {missing[0]}"
        )
    images = np.stack([read_image(folder / f, size) for f in files])
    rng = np.random.default_rng(seed)
    val = rng.random(len(files)) < val_fraction
    if val.all() or len(files) < 2:
        val[:] = False
    elif not val.any():
        val[-1] = True
    return ImageSet(str(folder), images, [caps[f] for f in files], val)


def load_images(folder: str | None, captions: str | None, size: int = 8) -> ImageSet:
    if folder in (None, "", "digits"):
        return load_digits()
    return load_image_folder(folder, captions, size)


# ---- output -------------------------------------------------------------------------------------------------------


def save_png(image: np.ndarray, path: str | Path, scale: int = 8) -> Path:
    from PIL import Image

    arr = (np.clip(image, 0, 1) * 255).astype(np.uint8)
    arr = np.kron(arr, np.ones((scale, scale), np.uint8))
    return atomic.write_file(Path(path), lambda tmp: Image.fromarray(arr, mode="L").save(tmp))


def preview(image: np.ndarray) -> str:
    """Terminal preview: two characters per pixel from a 5-level block ramp."""
    ramp = " ░▒▓█"
    idx = np.clip((np.asarray(image) * (len(ramp) - 1) + 0.5).astype(int), 0, len(ramp) - 1)
    return "\n".join("".join(ramp[i] * 2 for i in row) for row in idx)
