"""Labelled images in a folder per class (ImageFolder style): listed, checked against the class map and
counted before any image is decoded; every unreadable file, link loop or decompression bomb is named."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edgeq.core.data import IMAGE_SUFFIXES, LabelledImages, Preprocess
from edgeq.core.errors import DataError

@dataclass
class FolderListing:
    """An ImageFolder tree, listed (not decoded): every image file and its class index."""

    root: Path
    files: list[Path]
    labels: list[int]
    class_names: list[str]  # index -> name, as far as the folder names tell

    def __len__(self) -> int:
        return len(self.files)


def _check_link(p: Path) -> None:
    """A symlink that loops or dangles is an error naming it (os.walk and iterdir would skip it silently)."""
    if not p.is_symlink():
        return
    try:
        target = p.resolve(strict=True)
    except (OSError, RuntimeError):
        raise DataError(f"{p}: symlink loop or broken symlink; remove it or point it at an image") from None
    if target.is_dir() and (target == p.parent.resolve() or target in p.parent.resolve().parents):
        raise DataError(f"{p}: symlink loop (it points back to {target}); remove it")


def _warn_special(p: Path) -> None:
    import stat
    import sys

    mode = p.stat().st_mode
    kind = ("named pipe" if stat.S_ISFIFO(mode) else "socket" if stat.S_ISSOCK(mode)
            else "device node" if stat.S_ISCHR(mode) or stat.S_ISBLK(mode) else "special file")
    print(f"edgeq: warning: {p}: a {kind}, not an image file; skipped (not opened)", file=sys.stderr)


def _entries(d: Path) -> list[Path]:
    try:
        return sorted(d.iterdir())
    except OSError as e:
        raise DataError(f"{d}: cannot list the directory ({e.strerror or e})") from None


def list_image_folder(root: Path, classes: list[str] | None = None, num_classes: int | None = None) -> FolderListing:
    """root/<class_name>/<image files>, checked without decoding an image.

    Class index: the position in `classes` (the model's class names in output order) when given, and a
    folder not in it is refused; else the folder name itself when every name is a number (ImageNet-style
    `021`, `978`); else sorted folder-name order, which needs exactly `num_classes` folders."""
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"{root}: not a directory; expected an ImageFolder tree root/<class>/<images>")
    subdirs = []
    for p in _entries(root):
        if p.name.startswith("."):
            continue
        _check_link(p)
        if p.is_dir():
            subdirs.append(p)
    names = [p.name for p in subdirs]
    if not names:
        raise DataError(f"{root}: no class sub-directories; expected root/<class>/<images>")
    files, folders = [], []
    for d in subdirs:
        for f in _entries(d):
            if f.name.startswith("."):
                continue
            _check_link(f)
            if not f.is_file():
                if not f.is_dir():  # a named pipe, socket or device node: never opened (a read could block forever)
                    _warn_special(f)
                continue
            if f.suffix.lower() not in IMAGE_SUFFIXES:
                raise DataError(f"{f}: not an image file (suffix {f.suffix or 'none'}); "
                                f"only {', '.join(sorted(IMAGE_SUFFIXES))} are read")
            files.append(f)
            folders.append(d.name)
    if not files:
        raise DataError(f"{root}: no images found under its class directories")
    if classes is not None:
        unknown = [n for n in names if n not in classes]
        if unknown:
            raise DataError(f"{root}: class folder(s) {unknown[:5]} are not in the class map (data.classes / "
                            f"data.labels_file, {len(classes)} names); rename the folders or fix the map")
        index = {n: classes.index(n) for n in names}
        class_names = list(classes)
    elif all(n.isascii() and n.isdigit() for n in names):
        index = {n: int(n) for n in names}
        class_names = []
    else:
        if num_classes is not None and len(names) != num_classes:
            raise DataError(f"{root}: {len(names)} class folders ({', '.join(names[:5])}"
                            f"{', ...' if len(names) > 5 else ''}) but the model has {num_classes} classes "
                            "(model.num_classes), so sorted folder order cannot be the model's class order; "
                            "list the model's class names in output order in data.classes (or data.labels_file)")
        index = {n: i for i, n in enumerate(names)}
        class_names = names
    labels = [index[n] for n in folders]
    return FolderListing(root, files, labels, class_names)


def decode_image_folder(listing: FolderListing, pre: Preprocess | None = None) -> LabelledImages:
    """Decode (and resize to the model's input) every image of a listing; a bad file is named."""
    from PIL import Image

    images = []
    mode = "L" if (pre and pre.channels == 1) else "RGB"
    for f in listing.files:
        try:
            with Image.open(f) as im:
                im = im.convert(mode)
                if pre is not None:
                    im = im.resize((pre.size[1], pre.size[0]), Image.BILINEAR)
                arr = np.asarray(im, np.uint8)
        except Image.DecompressionBombError as e:
            raise DataError(f"{f}: image too large to decode safely ({' '.join(str(e).split())[:120]}); "
                            "shrink or remove it") from None
        except Exception as e:  # PIL raises OSError, ValueError, SyntaxError, EOFError... for a bad file
            raise DataError(f"{f}: cannot be read as an image ({e.__class__.__name__}); replace or remove it") from None
        images.append(arr if arr.ndim == 3 else arr[..., None])
    shapes = {a.shape for a in images}
    if len(shapes) > 1:
        raise DataError(f"{listing.root}: images have different sizes {sorted(shapes)[:3]}; "
                        "give the model input size in the config so they are resized")
    return LabelledImages(np.stack(images), np.asarray(listing.labels), str(listing.root), listing.class_names)


def load_image_folder(root: Path, pre: Preprocess | None = None, classes: list[str] | None = None,
                      num_classes: int | None = None) -> LabelledImages:
    """root/<class_name>/<image files>; class index as in list_image_folder."""
    return decode_image_folder(list_image_folder(root, classes, num_classes), pre)


def read_labels_file(path: Path) -> list[str]:
    """One class name per line, in the model's output order (blank lines and # comments skipped)."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise DataError(f"{path}: labels file not found (data.labels_file)") from None
    except (OSError, UnicodeDecodeError) as e:
        raise DataError(f"{path}: cannot read the labels file as UTF-8 text ({e.__class__.__name__})") from None
    names = [ln.strip() for ln in text.splitlines() if ln.strip() and not ln.strip().startswith("#")]
    if not names:
        raise DataError(f"{path}: labels file lists no class names; one name per line, in model output order")
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise DataError(f"{path}: class names {dup[:5]} appear more than once; each class once, in model order")
    return names
