"""Reading, validating, pairing and atomically writing images and label maps.

Formats: TIFF (``.tif``/``.tiff``), PNG, NIfTI (``.nii``/``.nii.gz``) and NumPy
(``.npy``). No Qt and no napari here: the CLI, the Python API and the napari
reader/writer all go through these functions, so every caller gets the same
checks and the same error messages.

Conventions
-----------
* Every problem with the user's data raises :class:`InputError` (a
  ``ValueError``) whose message names the file or layer and says what is wrong.
* Axis order is the file's own. NIfTI arrays come back in nibabel's (x, y, z)
  order, *not* transposed to (z, y, x); ``ImageMeta.affine`` stays valid for the
  array as returned and a read -> write round trip needs no transpose.
* Images are ``float32``; 2D ``(Y, X)``, 3D ``(Z, Y, X)`` (a volume or a stack of
  2D samples) or colour channels-last ``(..., Y, X, 3|4)``.
* Labels are ``int32`` (``int64`` only if a value does not fit), 2D or 3D,
  0 = background, never negative.
* Writes are atomic (temporary file in the target folder, fsync, rename) and
  never replace an existing file unless ``overwrite=True``.
"""

from __future__ import annotations

import hashlib
import os
import secrets
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

__all__ = [
    "InputError",
    "SUPPORTED_EXTENSIONS",
    "ImageMeta",
    "split_stem",
    "is_supported",
    "read_array",
    "read_image",
    "read_labels",
    "as_grey",
    "validate_image",
    "validate_labels",
    "validate_pair",
    "list_files",
    "pair_files",
    "write_array",
    "write_labels",
    "write_float_map",
    "atomic_write_text",
]


class InputError(ValueError):
    """Bad user input; the message names the file or layer and the problem."""


SUPPORTED_EXTENSIONS = (".tif", ".tiff", ".png", ".nii", ".nii.gz", ".npy")
# Longest first so that ".nii.gz" wins over any shorter match.
_EXTENSIONS_LONGEST_FIRST = tuple(sorted(SUPPORTED_EXTENSIONS, key=len, reverse=True))
_COLOUR_CHANNELS = (3, 4)
_MAX_LISTED = 5  # how many unmatched/duplicate names an error message lists


@dataclass
class ImageMeta:
    """Where an array came from and what is needed to write it back faithfully.

    Attributes
    ----------
    path : str or None
        Source file, or None for in-memory data.
    affine : ndarray of shape (4, 4), float64, or None
        NIfTI voxel-to-world matrix (None for other formats).
    spacing : tuple of float or None
        Voxel size per array axis, in the array's axis order (NIfTI zooms).
    source_dtype : str
        dtype of the data as stored in the file, e.g. ``"uint16"``.
    extension : str
        Lower-case known extension, e.g. ``".nii.gz"``.
    """

    path: str | None = None
    affine: np.ndarray | None = None
    spacing: tuple[float, ...] | None = None
    source_dtype: str = ""
    extension: str = ""


# ----------------------------------------------------------------------------- names


def split_stem(path: str | os.PathLike) -> tuple[str, str]:
    """Split a file name into (stem, extension).

    The longest known extension is taken off the end (case-insensitively) and the
    rest of the name is the stem, so inner dots stay in the stem:
    ``"a.nii.gz" -> ("a", ".nii.gz")``, ``"x/img_01.TIF" -> ("img_01", ".tif")``,
    ``"a.b.tif" -> ("a.b", ".tif")``. For an unsupported name the last suffix is
    split off as usual: ``"notes.txt" -> ("notes", ".txt")``.

    Returns
    -------
    stem : str
    extension : str
        Lower case, with the leading dot ("" if the name has none).
    """
    name = Path(path).name
    lower = name.lower()
    for ext in _EXTENSIONS_LONGEST_FIRST:
        if lower.endswith(ext) and len(name) > len(ext):
            return name[: -len(ext)], ext
    p = Path(name)
    return p.stem, p.suffix.lower()


def is_supported(path: str | os.PathLike) -> bool:
    """True if the file name ends with one of :data:`SUPPORTED_EXTENSIONS`."""
    return split_stem(path)[1] in SUPPORTED_EXTENSIONS


def _extension_or_raise(path: Path) -> str:
    ext = split_stem(path)[1]
    if ext not in SUPPORTED_EXTENSIONS:
        raise InputError(
            f"{str(path)!r}: unsupported file type {ext or '(no extension)'!r}; "
            f"supported: {', '.join(SUPPORTED_EXTENSIONS)}"
        )
    return ext


# ----------------------------------------------------------------------------- reading


def read_array(path: str | os.PathLike) -> tuple[np.ndarray, ImageMeta]:
    """Read any supported file as stored, without casting or validation.

    Parameters
    ----------
    path : str or PathLike
        A ``.tif``/``.tiff``, ``.png``, ``.nii``/``.nii.gz`` or ``.npy`` file.

    Returns
    -------
    array : ndarray
        The file's dtype and axis order. NIfTI: nibabel's (x, y, z) order, with
        scaling applied only if the header asks for it, trailing singleton axes
        beyond the third dropped. PNG: (H, W), or (H, W, C) for grey+alpha, RGB
        and RGBA; palette PNGs return their palette *indices* (how label maps
        are usually stored), not colours.
    meta : ImageMeta
        NIfTI keeps ``affine`` (4, 4) and ``spacing`` (zooms); other formats
        have ``affine=None`` and ``spacing=None``.

    Raises
    ------
    InputError
        Missing file, unsupported extension, or a file the library cannot parse.
    """
    path = Path(path)
    ext = _extension_or_raise(path)
    if not path.exists():
        raise InputError(f"{str(path)!r} does not exist")
    if not path.is_file():
        raise InputError(f"{str(path)!r} is not a file")
    affine = spacing = None
    try:
        if ext in (".tif", ".tiff"):
            import tifffile

            array = np.asarray(tifffile.imread(path))
        elif ext == ".png":
            array = _read_png(path)
        elif ext == ".npy":
            # allow_pickle=False: a .npy must never run code when loaded.
            array = np.load(path, allow_pickle=False)
        else:
            array, affine, spacing = _read_nifti(path)
    except (InputError, MemoryError):
        raise
    except Exception as exc:  # noqa: BLE001 - any parser failure is a bad file
        raise InputError(f"could not read {str(path)!r}: {exc}") from exc
    if not _is_numeric(array):
        raise InputError(f"{str(path)!r} holds {array.dtype} data, not numbers")
    meta = ImageMeta(str(path), affine, spacing, str(array.dtype), ext)
    return array, meta


def _read_png(path: Path) -> np.ndarray:
    # Pillow is imageio's PNG backend; it is used directly only to spot palette
    # images, which imageio would expand to RGB and so lose the label indices.
    from PIL import Image

    with Image.open(path) as img:
        if img.mode == "P":
            return np.asarray(img)
    import imageio.v3 as iio

    return np.asarray(iio.imread(path))


def _read_nifti(path: Path) -> tuple[np.ndarray, np.ndarray, tuple[float, ...]]:
    import nibabel as nib

    # mmap=False: a memory map would pin the file (Windows cannot then replace it)
    # and tie the returned array to a file that may be rewritten later.
    img = nib.load(str(path), mmap=False)
    # asanyarray(dataobj) keeps the stored dtype when the header has no scaling
    # (get_fdata would always give float64, doubling memory for uint8 masks).
    array = np.asanyarray(img.dataobj)
    while array.ndim > 3 and array.shape[-1] == 1:
        array = array[..., 0]
    zooms = tuple(float(z) for z in img.header.get_zooms()[: array.ndim])
    return array, np.asarray(img.affine, dtype=np.float64), zooms


def read_image(path: str | os.PathLike) -> tuple[np.ndarray, ImageMeta]:
    """Read and validate an image.

    Returns
    -------
    image : ndarray, float32
        Shape (Y, X), (Z, Y, X) or channels-last (..., 3|4); see :func:`validate_image`.
    meta : ImageMeta
    """
    array, meta = read_array(path)
    return validate_image(array, str(path)), meta


def read_labels(
    path: str | os.PathLike, *, allow_empty: bool = True, allow_full: bool = False
) -> tuple[np.ndarray, ImageMeta]:
    """Read and validate a label map.

    Float files holding whole numbers (e.g. NIfTI float32 masks) are cast to
    integers. A PNG saved as RGB(A) whose colour channels are all equal (grey
    stored as colour, constant alpha) is reduced to one channel; a genuinely
    coloured PNG is refused.

    Returns
    -------
    labels : ndarray, int32 (int64 if values exceed int32)
        Shape (Y, X) or (Z, Y, X).
    meta : ImageMeta

    Raises
    ------
    InputError
        See :func:`validate_labels`.
    """
    array, meta = read_array(path)
    if meta.extension == ".png":
        array = as_grey(array)
    labels = validate_labels(array, str(path), allow_empty=allow_empty, allow_full=allow_full)
    return labels, meta


def as_grey(array: np.ndarray) -> np.ndarray:
    """Drop the channel axis of a channels-last grey image stored as colour.

    Parameters
    ----------
    array : ndarray
        Only call this when the last axis is known to be colour (e.g. a PNG):
        shape (H, W, 2) grey+alpha, (H, W, 3) RGB or (H, W, 4) RGBA.

    Returns
    -------
    ndarray
        ``array[..., 0]`` of shape (H, W) if all colour channels are equal and
        alpha (if any) is constant; otherwise ``array`` unchanged.
    """
    if array.ndim != 3 or array.shape[-1] not in (2, 3, 4):
        return array
    n_colour = 1 if array.shape[-1] == 2 else 3
    has_alpha = array.shape[-1] in (2, 4)
    colour = array[..., :n_colour]
    if not np.all(colour == colour[..., :1]):
        return array
    if has_alpha and not np.all(array[..., -1] == array[0, 0, -1]):
        return array
    return np.ascontiguousarray(array[..., 0])


# ----------------------------------------------------------------------------- validation


def _is_numeric(array: np.ndarray) -> bool:
    return array.dtype.kind in "biuf"


def _dims(shape: tuple[int, ...]) -> str:
    return f"{len(shape)}D {tuple(shape)}"


def _is_colour(shape: tuple[int, ...]) -> bool:
    """Channels-last colour: 2D RGB(A) (H, W, 3|4) or 3D RGB(A) (Z, H, W, 3|4)."""
    return len(shape) in (3, 4) and shape[-1] in _COLOUR_CHANNELS


def validate_image(image, name: str) -> np.ndarray:
    """Check an image and return it as float32.

    Parameters
    ----------
    image : array-like
        Shape (Y, X), (Z, Y, X), or channels-last colour (Y, X, 3|4) /
        (Z, Y, X, 3|4). A 3D array whose last axis is 3 or 4 is accepted either
        way; :func:`validate_pair` decides against the labels' shape.
    name : str
        Layer name or file path, used in error messages.

    Returns
    -------
    ndarray, float32
        Same shape; the input itself if it already was float32.

    Raises
    ------
    InputError
        Not numeric, empty, wrong number of dimensions, or NaN/inf pixels
        (including values too large for float32).
    """
    array = np.asarray(image)
    if not _is_numeric(array):
        raise InputError(f"image {name!r} holds {array.dtype} data, not real numbers")
    if array.size == 0:
        raise InputError(f"image {name!r} has no pixels (shape {array.shape})")
    if array.ndim not in (2, 3) and not (array.ndim == 4 and _is_colour(array.shape)):
        raise InputError(
            f"image {name!r} is {_dims(array.shape)}; expected 2D (Y, X), 3D (Z, Y, X) "
            "or colour channels-last (..., Y, X, 3|4)"
        )
    # Cast first: float64 values beyond float32's range become inf and are caught.
    with np.errstate(over="ignore"):
        array = array.astype(np.float32, copy=False)
    finite = np.isfinite(array)
    if not finite.all():
        n_nan = int(np.isnan(array).sum())
        n_inf = int(array.size - finite.sum()) - n_nan
        raise InputError(
            f"image {name!r} has {n_nan} NaN and {n_inf} inf pixel values "
            f"(of {array.size}); replace them (e.g. with 0) before using it"
        )
    return array


def validate_labels(
    labels, name: str, *, allow_empty: bool = True, allow_full: bool = False
) -> np.ndarray:
    """Check a label map and return it as a signed integer array.

    Parameters
    ----------
    labels : array-like
        Shape (Y, X) or (Z, Y, X); bool, integer, or float holding whole numbers.
    name : str
        Layer name or file path, used in error messages.
    allow_empty : bool
        Accept labels that are all background. Default True: real data sets
        contain images without any object (two BBBC039 images have no nuclei).
    allow_full : bool
        Accept labels with no background pixel. Default False: that is almost
        always a wrong file (an inverted mask, an image picked as labels) and
        nothing can be learnt about background from it.

    Returns
    -------
    ndarray, int32 (int64 only if a value exceeds int32)
        Same shape. When no cast is needed this is the input array itself:
        copy it before modifying (originals must never change).

    Raises
    ------
    InputError
        Not numeric, no pixels, colour (RGB/RGBA) data, not 2D/3D, NaN/inf,
        non-integer or negative values, empty (if not allowed), all foreground
        (if not allowed).

    Notes
    -----
    A 3D array whose last axis has 3 or 4 elements is taken for an RGB/RGBA
    image: a real volume that is only 3-4 voxels wide on its last axis would be
    refused too.
    """
    array = np.asarray(labels)
    if not _is_numeric(array):
        raise InputError(f"labels {name!r} hold {array.dtype} data, not integers")
    if array.size == 0:
        raise InputError(f"labels {name!r} have no pixels (shape {array.shape})")
    if _is_colour(array.shape):
        kind = "RGB" if array.shape[-1] == 3 else "RGBA"
        raise InputError(
            f"labels {name!r} look like an {kind} colour image (shape {array.shape}); "
            "labels must be a single-channel integer image (0 = background). "
            "Convert it to one channel, e.g. keep the channel that holds the label values"
        )
    if array.ndim not in (2, 3):
        raise InputError(
            f"labels {name!r} are {_dims(array.shape)}; expected 2D (Y, X) or 3D (Z, Y, X)"
        )
    if array.dtype.kind == "f":
        array = _whole_floats(array, name)
    if array.dtype.kind in "fi":
        n_neg = int((array < 0).sum())
        if n_neg:
            raise InputError(
                f"labels {name!r} have {n_neg} negative values (minimum {array.min()}); "
                "labels must be >= 0 with 0 = background"
            )
    array = _to_signed(array, name)
    if not array.any():
        if not allow_empty:
            raise InputError(f"labels {name!r} are empty: every pixel is background (0)")
    elif array.all() and not allow_full:
        raise InputError(
            f"labels {name!r} are all foreground: no pixel is background (0), which is "
            "almost always an inverted mask or an image picked as labels "
            "(pass allow_full=True if it is intended)"
        )
    return array


def _whole_floats(array: np.ndarray, name: str) -> np.ndarray:
    """Refuse NaN/inf and fractional values in float labels; return them unchanged."""
    finite = np.isfinite(array)
    if not finite.all():
        raise InputError(
            f"labels {name!r} have {int(array.size - finite.sum())} NaN/inf values; "
            "labels must be whole numbers"
        )
    fractional = array != np.round(array)
    n_frac = int(fractional.sum())
    if n_frac:
        example = array[fractional].flat[0]
        raise InputError(
            f"labels {name!r} have {n_frac} non-integer values (e.g. {example:g}); "
            "labels must be whole numbers (is this a probability map or an image?)"
        )
    return array


def _to_signed(array: np.ndarray, name: str) -> np.ndarray:
    """Cast non-negative labels to int32, or int64 if the maximum needs it."""
    top = array.max()
    if top <= np.iinfo(np.int32).max:
        return array.astype(np.int32, copy=False)
    if top <= np.iinfo(np.int64).max:
        return array.astype(np.int64, copy=False)
    raise InputError(f"labels {name!r} have values up to {top}, too large for int64")


def validate_pair(
    image,
    labels,
    image_name: str,
    labels_name: str,
    *,
    allow_empty: bool = True,
    allow_full: bool = False,
) -> tuple[np.ndarray, np.ndarray]:
    """Validate an image and its labels, and check that they belong together.

    Shapes match when ``image.shape == labels.shape`` (grey), or when
    ``image.shape[:-1] == labels.shape`` and ``image.shape[-1]`` is 3 or 4
    (channels-last RGB/RGBA).

    Parameters
    ----------
    image, labels : array-like
        See :func:`validate_image` and :func:`validate_labels`.
    image_name, labels_name : str
        Layer names or file paths, used in messages.
    allow_empty, allow_full : bool
        Passed to :func:`validate_labels` (empty allowed, all-foreground refused
        by default).

    Returns
    -------
    image : ndarray, float32
    labels : ndarray, int32 (int64 if needed)

    Raises
    ------
    InputError
        Any problem of either array, or a shape mismatch (both shapes given,
        with a hint for 2D labels on a 3D image, transposed axes and
        channels-first colour).
    """
    image = validate_image(image, image_name)
    labels = validate_labels(labels, labels_name, allow_empty=allow_empty, allow_full=allow_full)
    grey_match = image.shape == labels.shape
    colour_match = (
        image.ndim == labels.ndim + 1
        and image.shape[-1] in _COLOUR_CHANNELS
        and image.shape[:-1] == labels.shape
    )
    if not (grey_match or colour_match):
        raise InputError(_mismatch_message(image.shape, labels.shape, image_name, labels_name))
    return image, labels


def _mismatch_message(ishape, lshape, iname: str, lname: str) -> str:
    ishape, lshape = tuple(ishape), tuple(lshape)
    colour = len(ishape) == len(lshape) + 1 and ishape[-1] in _COLOUR_CHANNELS
    spatial = ishape[:-1] if colour else ishape
    if len(ishape) == len(lshape) + 1 and ishape[0] in _COLOUR_CHANNELS and ishape[1:] == lshape:
        return (
            f"image {iname!r} has shape {ishape} and labels {lname!r} have shape {lshape}: "
            "if the image is channels-first colour, move the colour axis last; if it is "
            f"a stack of {ishape[0]} slices, give one label slice per image slice"
        )
    if len(lshape) != len(spatial):
        msg = (
            f"labels {lname!r} are {_dims(lshape)} but image {iname!r} is "
            f"{_dims(ishape)}{' colour' if colour else ''}"
        )
        if len(lshape) == 2 and len(spatial) == 3 and spatial[1:] == lshape:
            msg += f"; give one label slice per image slice (labels of shape {spatial})"
        return msg
    msg = (
        f"shape mismatch: image {iname!r} has shape {ishape} but labels {lname!r} "
        f"have shape {lshape}"
    )
    if sorted(spatial) == sorted(lshape):
        msg += "; the axes look transposed (e.g. NIfTI (x, y, z) against TIFF (z, y, x))"
    return msg


# ----------------------------------------------------------------------------- folders


def list_files(directory: str | os.PathLike) -> list[Path]:
    """Supported files directly inside ``directory``, sorted by stem then name.

    Hidden files (names starting with ".", e.g. macOS ``._a.tif`` resource
    forks and this module's own temporary files) and sub-folders are skipped.

    Raises
    ------
    InputError
        ``directory`` does not exist or is not a folder.
    """
    directory = Path(directory)
    if not directory.is_dir():
        raise InputError(f"{str(directory)!r} is not an existing folder")
    files = [
        p
        for p in directory.iterdir()
        if p.is_file() and not p.name.startswith(".") and is_supported(p)
    ]
    return sorted(files, key=lambda p: (split_stem(p)[0], p.name))


def _by_stem(files: list[Path], directory: Path) -> dict[str, Path]:
    found: dict[str, list[Path]] = {}
    for p in files:
        found.setdefault(split_stem(p)[0], []).append(p)
    dupes = {s: ps for s, ps in found.items() if len(ps) > 1}
    if dupes:
        shown = "; ".join(
            f"{s!r}: {', '.join(p.name for p in ps)}" for s, ps in list(dupes.items())[:_MAX_LISTED]
        )
        raise InputError(
            f"{str(directory)!r} has {len(dupes)} name(s) used by more than one file, so "
            f"pairing is ambiguous ({shown}); keep one file per name"
        )
    return {s: ps[0] for s, ps in found.items()}


def files_by_stem(directory: str | os.PathLike, role: str) -> dict[str, Path]:
    """The supported files of ``directory`` by stem (see :func:`list_files`).

    Raises
    ------
    InputError
        The folder is missing or holds no supported file (the message calls
        them ``role`` files), or two files share a stem.
    """
    directory = Path(directory)
    return _supported_by_stem(list_files(directory), directory, role)


def _supported_by_stem(files: list[Path], directory: Path, role: str) -> dict[str, Path]:
    if not files:
        raise InputError(
            f"{str(directory)!r} holds no {role} files "
            f"(supported: {', '.join(SUPPORTED_EXTENSIONS)})"
        )
    return _by_stem(files, directory)


def labels_digest(labels: np.ndarray) -> str:
    """SHA-256 of a label map's shape and values (dtype-independent), as hex."""
    hasher = hashlib.sha256(str(tuple(labels.shape)).encode())
    hasher.update(np.ascontiguousarray(labels, dtype=np.int64).tobytes())
    return hasher.hexdigest()


def _listing(stems: list[str]) -> str:
    more = len(stems) - _MAX_LISTED
    return ", ".join(stems[:_MAX_LISTED]) + (f" and {more} more" if more > 0 else "")


def pair_files(
    images_dir: str | os.PathLike, labels_dir: str | os.PathLike
) -> list[tuple[str, Path, Path]]:
    """Pair image and label files by stem, whatever their extensions.

    ``images/a.tif`` pairs with ``labels/a.png`` or ``labels/a.nii.gz``.
    Unsupported and hidden files are ignored.

    Returns
    -------
    list of (stem, image_path, label_path)
        Sorted by stem.

    Raises
    ------
    InputError
        A folder is missing or holds no supported file; two files in one folder
        share a stem; an image has no label or a label has no image (the
        message lists the first unmatched stems).
    """
    images_dir, labels_dir = Path(images_dir), Path(labels_dir)
    # both listed first: a missing folder is named before an empty one
    image_files, label_files = list_files(images_dir), list_files(labels_dir)
    images = _supported_by_stem(image_files, images_dir, "image")
    labels = _supported_by_stem(label_files, labels_dir, "label")
    no_label = sorted(set(images) - set(labels))
    no_image = sorted(set(labels) - set(images))
    problems = []
    if no_label:
        problems.append(
            f"{len(no_label)} image(s) in {str(images_dir)!r} have no label file in "
            f"{str(labels_dir)!r}: {_listing(no_label)}"
        )
    if no_image:
        problems.append(
            f"{len(no_image)} label file(s) in {str(labels_dir)!r} have no image in "
            f"{str(images_dir)!r}: {_listing(no_image)}"
        )
    if problems:
        raise InputError("; ".join(problems) + " (files are paired by name without extension)")
    return [(s, images[s], labels[s]) for s in sorted(images)]


# ----------------------------------------------------------------------------- writing


def _exists_message(path: Path) -> str:
    return f"{str(path)!r} already exists; pass overwrite=True to replace it"


def _fsync_path(path: Path, directory: bool = False) -> None:
    try:
        fd = os.open(path, os.O_RDONLY if directory else os.O_RDWR)
    except OSError:
        if directory:  # some platforms cannot open folders; durability is best effort
            return
        raise
    try:
        os.fsync(fd)
    except OSError:
        if not directory:
            raise
    finally:
        os.close(fd)


def _atomic_write(path: str | os.PathLike, write: Callable[[Path], None], overwrite: bool) -> Path:
    """Run ``write(tmp)`` on a temp file beside ``path``, fsync it, then move it in place.

    The temp name is hidden and keeps the real extension last
    (``.a.<token>.tmp.nii.gz``) so format libraries pick the right codec. It is
    removed whatever happens.
    """
    path = Path(path)
    if path.is_dir():
        raise InputError(f"{str(path)!r} is a folder, not a file name")
    if path.exists() and not overwrite:
        raise FileExistsError(_exists_message(path))
    path.parent.mkdir(parents=True, exist_ok=True)
    stem, ext = split_stem(path)
    tmp = path.with_name(f".{stem}.{secrets.token_hex(6)}.tmp{ext}")
    # O_EXCL reserves a fresh name; 0o666 lets the umask give normal permissions.
    os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
    try:
        write(tmp)
        _fsync_path(tmp)
        if overwrite:
            os.replace(tmp, path)
        else:
            _link_no_clobber(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    _fsync_path(path.parent, directory=True)
    return path


def _link_no_clobber(tmp: Path, path: Path) -> None:
    # A hard link fails if the target appeared since the first check, so a file
    # created meanwhile by someone else is never replaced.
    try:
        os.link(tmp, path)
    except FileExistsError:
        raise FileExistsError(_exists_message(path)) from None
    except OSError:  # file system without hard links: check-then-rename
        if path.exists():
            raise FileExistsError(_exists_message(path)) from None
        os.replace(tmp, path)


def atomic_write_text(
    path: str | os.PathLike, text: str, overwrite: bool = False, encoding: str = "utf-8"
) -> Path:
    """Atomically write text (CSV/JSON logs); same rules as :func:`write_array`.

    The text is written as given (no newline translation).
    """
    data = text.encode(encoding)
    return _atomic_write(path, lambda tmp: tmp.write_bytes(data), overwrite)


def write_array(
    path: str | os.PathLike,
    array,
    meta: ImageMeta | None = None,
    overwrite: bool = False,
) -> Path:
    """Atomically write an array in the format given by the extension.

    Parameters
    ----------
    path : str or PathLike
        Target file; missing parent folders are created.
    array : array-like
        Numeric. Written with its dtype except where the format needs otherwise:
        bool -> uint8 everywhere; PNG needs integers in 0..65535 and shape
        (H, W) (non-uint8/uint16 integers -> uint8 if max < 256 else uint16)
        or uint8 colour (H, W, 3|4); NIfTI stores int64/uint64 as int32 when the values fit
        (refused otherwise) and float16 as float32.
    meta : ImageMeta, optional
        NIfTI: ``meta.affine`` (4, 4) is written as sform and qform; without it
        ``diag(meta.spacing)`` or the identity. Ignored for other formats.
    overwrite : bool
        Replace an existing file. Default False.

    Returns
    -------
    Path
        The written file.

    Raises
    ------
    FileExistsError
        ``path`` exists and ``overwrite`` is False (message names the path).
    InputError
        Unsupported extension, or data the format cannot hold (e.g. 3D or float
        data as PNG); nothing is written.

    Notes
    -----
    The NIfTI header stores the affine as float32, so affine entries survive a
    round trip to float32 precision.
    """
    path = Path(path)
    ext = _extension_or_raise(path)
    array = np.asarray(array)
    if not _is_numeric(array):
        raise InputError(f"cannot write {array.dtype} data to {str(path)!r}: not numbers")
    if array.size == 0:
        raise InputError(f"cannot write {str(path)!r}: the array has no elements {array.shape}")
    if array.dtype == bool:
        array = array.astype(np.uint8)
    if ext in (".tif", ".tiff"):
        writer = _tiff_writer(array)
    elif ext == ".png":
        writer = _png_writer(_png_ready(array, path))
    elif ext == ".npy":
        writer = _npy_writer(array)
    else:
        writer = _nifti_writer(_nifti_ready(array, path), _affine_for(meta, path))
    return _atomic_write(path, writer, overwrite)


def _tiff_writer(array: np.ndarray) -> Callable[[Path], None]:
    import tifffile

    # Explicit photometric: tifffile's guess is deprecated; only 8/16-bit
    # channels-last colour is stored as RGB, everything else as grey pages.
    rgb = _is_colour(array.shape) and array.ndim == 3 and array.dtype in (np.uint8, np.uint16)
    photometric = "rgb" if rgb else "minisblack"
    return lambda tmp: tifffile.imwrite(tmp, array, photometric=photometric, compression="zlib")


def _png_ready(array: np.ndarray, path: Path) -> np.ndarray:
    if not (array.ndim == 2 or (array.ndim == 3 and array.shape[-1] in _COLOUR_CHANNELS)):
        raise InputError(
            f"cannot write {str(path)!r}: PNG holds only 2D images (H, W) or (H, W, 3|4) "
            f"colour, got {_dims(array.shape)}; use .tif, .nii.gz or .npy for stacks and volumes"
        )
    if array.dtype.kind == "f":
        raise InputError(
            f"cannot write {str(path)!r}: PNG cannot hold float values ({array.dtype}); "
            "use .tif, .nii.gz or .npy"
        )
    if array.ndim == 3 and array.dtype != np.uint8:
        # Pillow, imageio's PNG backend, writes colour PNGs with 8 bits only.
        raise InputError(
            f"cannot write {str(path)!r}: colour PNG must be uint8, got {array.dtype}; "
            "use .tif for 16-bit or float colour"
        )
    if array.dtype in (np.uint8, np.uint16):
        return array
    low, high = array.min(), array.max()
    if low < 0 or high > np.iinfo(np.uint16).max:
        raise InputError(
            f"cannot write {str(path)!r}: PNG holds values 0..65535, got {low}..{high}; "
            "use .tif, .nii.gz or .npy"
        )
    return array.astype(np.uint8 if high < 256 else np.uint16)


def _png_writer(array: np.ndarray) -> Callable[[Path], None]:
    import imageio.v3 as iio

    return lambda tmp: iio.imwrite(tmp, array, extension=".png")


def _npy_writer(array: np.ndarray) -> Callable[[Path], None]:
    def write(tmp: Path) -> None:
        with open(tmp, "wb") as f:  # a handle, so numpy does not append ".npy"
            np.save(f, array, allow_pickle=False)

    return write


def _nifti_ready(array: np.ndarray, path: Path) -> np.ndarray:
    if array.dtype == np.float16:
        return array.astype(np.float32)
    if array.dtype in (np.int64, np.uint64):
        info = np.iinfo(np.int32)
        if array.min() < info.min or array.max() > info.max:
            raise InputError(
                f"cannot write {str(path)!r}: values {array.min()}..{array.max()} do not "
                "fit the int32 that NIfTI tools read; use .tif or .npy"
            )
        return array.astype(np.int32)
    return array


def _affine_for(meta: ImageMeta | None, path: Path) -> np.ndarray:
    if meta is not None and meta.affine is not None:
        affine = np.asarray(meta.affine, dtype=np.float64)
        if affine.shape != (4, 4) or not np.isfinite(affine).all():
            raise InputError(
                f"cannot write {str(path)!r}: the affine must be a finite 4x4 matrix, "
                f"got shape {affine.shape}"
            )
        return affine
    affine = np.eye(4)
    if meta is not None and meta.spacing:
        spacing = list(meta.spacing)[:3]
        affine[range(len(spacing)), range(len(spacing))] = spacing
    return affine


def _nifti_writer(array: np.ndarray, affine: np.ndarray) -> Callable[[Path], None]:
    import nibabel as nib

    def write(tmp: Path) -> None:
        img = nib.Nifti1Image(array, affine, dtype=array.dtype)
        # Code 1 (scanner) on both forms: readers that prefer either see the same affine.
        img.set_sform(affine, code=1)
        img.set_qform(affine, code=1)
        # No scaling: labels must come back exactly as written.
        img.header.set_slope_inter(1.0, 0.0)
        nib.save(img, str(tmp))

    return write


def write_labels(
    path: str | os.PathLike,
    labels,
    meta: ImageMeta | None = None,
    overwrite: bool = False,
) -> Path:
    """Validate and atomically write a label map, in the smallest fitting dtype.

    Parameters
    ----------
    path : str or PathLike
        Target; the extension picks the format.
    labels : array-like
        Shape (Y, X) or (Z, Y, X), non-negative whole numbers. Empty and
        all-foreground labels are written (this is an export, not training).
    meta, overwrite
        See :func:`write_array`.

    Returns
    -------
    Path

    Notes
    -----
    Stored dtype: uint8 if max < 256; otherwise uint16 for PNG (max must be
    < 65536), int16 or int32 for NIfTI, int32 for TIFF and NumPy (int64 only
    beyond int32). Values round-trip exactly.
    """
    path = Path(path)
    ext = _extension_or_raise(path)
    labels = validate_labels(labels, str(path), allow_full=True)
    top = int(labels.max())
    if top < 256:
        dtype = np.uint8
    elif ext == ".png" and top <= np.iinfo(np.uint16).max:
        dtype = np.uint16
    elif ext in (".nii", ".nii.gz") and top <= np.iinfo(np.int16).max:
        dtype = np.int16
    else:
        # int32 (int64 beyond); PNG and NIfTI then refuse what they cannot hold.
        dtype = labels.dtype
    return write_array(path, labels.astype(dtype, copy=False), meta, overwrite)


def write_float_map(
    path: str | os.PathLike,
    values,
    meta: ImageMeta | None = None,
    overwrite: bool = False,
) -> Path:
    """Atomically write a float32 map (e.g. per-pixel noise likelihood).

    Parameters
    ----------
    values : array-like
        Any shape the format holds; cast to float32. PNG is refused (no floats).
    path, meta, overwrite
        See :func:`write_array`.
    """
    values = np.asarray(values)
    if not _is_numeric(values):
        raise InputError(f"cannot write {values.dtype} data to {str(path)!r}: not numbers")
    return write_array(path, values.astype(np.float32, copy=False), meta, overwrite)
