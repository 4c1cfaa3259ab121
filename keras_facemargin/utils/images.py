"""Image dimensions from the header, checked before any decoder allocates pixels.

Every image decoding path of the package (``.bin`` sets, RecordIO, TFRecord, image folders,
identity folders, LFW, IJB) goes through :func:`decode_image`: it reads the format and size
from the first bytes with :func:`image_header_size`, refuses formats other than JPEG, PNG, BMP
and WebP (so OpenCV never picks another decoder), refuses images above ``max_pixels``
(:data:`DEFAULT_MAX_IMAGE_PIXELS`), refuses a PNG whose chunk lengths overrun the file (OpenCV
allocates a chunk's declared length first) and only then calls ``cv2.imdecode``. A 30000x30000
PNG of a few hundred bytes is refused without allocating its 2.7 GB of pixels.

The JPEG parser follows the marker segments the way libjpeg does (garbage before a marker is
skipped, ``FF`` fill bytes, standalone markers) and reads the first ``SOFn`` frame header, the
one libjpeg decodes; a JPEG without a frame header before ``SOS`` is refused.

Example::

    image_header_size(open("face.jpg", "rb").read())      # ImageHeader('jpeg', 112, 112)
    img, why = decode_image(data, max_pixels=1 << 20)       # (H, W, 3) RGB uint8 or (None, reason)
"""

from __future__ import annotations

import errno
import hashlib
import struct
from collections import namedtuple

import numpy as np

__all__ = ["DEFAULT_MAX_IMAGE_PIXELS", "ImageHeader", "image_header_size", "check_image_bytes",
           "decode_image", "read_image_file", "image_file_byte_cap", "check_max_pixels", "resize_image", "PIXEL_MEAN", "PIXEL_STD",
           "PACKAGE_NORMALIZATION", "normalize_images"]

#: The package's input normalisation ``(x - PIXEL_MEAN) / PIXEL_STD`` (ArcFace/insightface's
#: MXNet recipe); arcface_torch uses ``std=127.5`` (see ``keras_facemargin.pretrained``).
PIXEL_MEAN = 127.5
PIXEL_STD = 128.0
PACKAGE_NORMALIZATION = {"mean": PIXEL_MEAN, "std": PIXEL_STD}


def normalize_images(images):
    """Map pixel values ``[0, 255]`` to float32 ``(x - PIXEL_MEAN) / PIXEL_STD`` (ArcFace convention).

    The single place where the package's input normalisation is computed; used by the pipelines,
    :mod:`keras_facemargin.evaluation` and the verifier.

    Args:
        images: uint8 (or any real dtype holding 0..255 values) NumPy array or TF tensor.

    Returns:
        float32 array / tensor of the same shape and kind as the input.

    Example::

        normalize_images(np.array([0, 255], np.uint8))  # -> [-0.99609375, 0.99609375]
    """
    if type(images).__module__.startswith("tensorflow"):
        import tensorflow as tf

        return (tf.cast(images, tf.float32) - PIXEL_MEAN) / PIXEL_STD
    arr = np.asarray(images)
    if not (np.issubdtype(arr.dtype, np.integer) or np.issubdtype(arr.dtype, np.floating)):
        raise ValueError(f"`images` must have a numeric dtype, got {arr.dtype}.")
    return ((arr.astype(np.float32) - np.float32(PIXEL_MEAN)) / np.float32(PIXEL_STD)).astype(np.float32)

#: Default cap on ``height * width`` of one encoded image (4096 x 4096; 48 MiB of RGB).
DEFAULT_MAX_IMAGE_PIXELS = 1 << 24

ImageHeader = namedtuple("ImageHeader", ["format", "height", "width"])
ImageHeader.__doc__ = "Format (``'jpeg'``, ``'png'``, ``'bmp'``, ``'webp'``) and size read from an image header."

_SOF = frozenset([0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF])
_MAX_JPEG_MARKERS = 4096  # real files have < 20 segments before the frame header
_HEAD = 1 << 16


def _as_bytes(data, n=None):
    """The first ``n`` bytes (all when None) of bytes / bytearray / memoryview / uint8 array, as bytes."""
    if isinstance(data, bytes):
        return data if n is None else data[:n]
    if isinstance(data, np.ndarray):
        flat = data.reshape(-1)
        return (flat if n is None else flat[:n]).tobytes()
    with memoryview(data) as mv:
        flat = mv.cast("B") if mv.ndim != 1 or mv.format != "B" else mv
        return bytes(flat if n is None else flat[:n])


def _jpeg(b):
    n = len(b)
    i, markers = 2, 0
    while markers < _MAX_JPEG_MARKERS:
        markers += 1
        i = b.find(b"\xff", i)  # libjpeg skips garbage bytes before a marker
        if i < 0:
            return None
        while i < n and b[i] == 0xFF:
            i += 1
        if i >= n:
            return None
        m = b[i]
        i += 1
        if m == 0x00 or m == 0x01 or 0xD0 <= m <= 0xD7:  # stuffed zero / standalone markers
            continue
        if m in (0xD8, 0xD9, 0xDA):  # second SOI, EOI or scan data before any frame header
            return None
        if i + 2 > n:
            return None
        length = (b[i] << 8) | b[i + 1]
        if length < 2:
            return None
        if m in _SOF:
            if length < 8 or i + 7 > n:
                return None
            h, w = struct.unpack_from(">HH", b, i + 3)
            return ImageHeader("jpeg", h, w) if h > 0 and w > 0 else None
        i += length
    return None


def image_header_size(data):
    """Format and size of an encoded JPEG / PNG / BMP / WebP image, read from its header only.

    Args:
        data: the encoded image (bytes, bytearray, memoryview or a uint8 array); never raises.

    Returns:
        :data:`ImageHeader` ``(format, height, width)``, or ``None`` when the bytes are not one
        of the four formats or their header is malformed (zero or missing dimensions).

    Example::

        image_header_size(cv2.imencode(".png", np.zeros((3, 5, 3), np.uint8))[1])  # ('png', 3, 5)
    """
    try:
        b = _as_bytes(data, _HEAD)
    except (TypeError, ValueError, BufferError):
        return None
    if b[:3] == b"\xff\xd8\xff":
        hdr = _jpeg(b)
        if hdr is None and len(b) == _HEAD:  # frame header after 64 KiB of APPn segments
            try:
                hdr = _jpeg(_as_bytes(data))
            except (TypeError, ValueError, BufferError):
                return None
        return hdr
    if b[:8] == b"\x89PNG\r\n\x1a\n":
        if len(b) < 24 or b[12:16] != b"IHDR" or struct.unpack_from(">I", b, 8)[0] != 13:
            return None
        w, h = struct.unpack_from(">II", b, 16)
        return ImageHeader("png", h, w) if 0 < w < 2**31 and 0 < h < 2**31 else None
    if b[:2] == b"BM":
        if len(b) < 26:
            return None
        dib = struct.unpack_from("<I", b, 14)[0]
        if dib == 12:
            w, h = struct.unpack_from("<HH", b, 18)
        elif 40 <= dib <= 124:
            w, h = struct.unpack_from("<ii", b, 18)
            h = abs(h)
        else:
            return None
        return ImageHeader("bmp", h, w) if w > 0 and h > 0 else None
    if b[:4] == b"RIFF" and b[8:12] == b"WEBP" and len(b) >= 30:
        chunk = b[12:16]
        if chunk == b"VP8 ":
            if b[23:26] != b"\x9d\x01\x2a":
                return None
            w, h = struct.unpack_from("<HH", b, 26)
            w, h = w & 0x3FFF, h & 0x3FFF
        elif chunk == b"VP8L":
            if b[20] != 0x2F:
                return None
            bits = struct.unpack_from("<I", b, 21)[0]
            w, h = 1 + (bits & 0x3FFF), 1 + ((bits >> 14) & 0x3FFF)
        elif chunk == b"VP8X":
            w = 1 + int.from_bytes(b[24:27], "little")
            h = 1 + int.from_bytes(b[27:30], "little")
        else:
            return None
        return ImageHeader("webp", h, w) if w > 0 and h > 0 else None
    return None


def _png_chunk_overrun(data):
    """Reason when a PNG chunk declares more bytes than the buffer holds, else None.

    OpenCV's PNG reader allocates a chunk's declared length before reading it, so an 850-byte
    file whose ``IDAT`` claims 1 GiB costs 1 GiB (found by ``benchmarks/fuzz.py``). Walking the
    chunk lengths is O(number of chunks); the walk stops at ``IEND``.
    """
    view = memoryview(data).cast("B") if not isinstance(data, np.ndarray) else memoryview(np.ascontiguousarray(data).reshape(-1))
    n, off = len(view), 8
    while off + 8 <= n:
        length = struct.unpack_from(">I", view, off)[0]
        kind = bytes(view[off + 4:off + 8])
        if length > n - off - 12:
            return (f"undecodable image (PNG chunk {kind!r} at byte {off} declares {length:,} bytes; "
                    f"only {max(n - off - 12, 0):,} follow)")
        if kind == b"IEND":
            return None
        off += 12 + length
    return None


def check_max_pixels(max_pixels):
    """Validate a ``max_image_pixels`` argument (a positive int) and return it."""
    if isinstance(max_pixels, bool) or not isinstance(max_pixels, (int, np.integer)) or max_pixels < 1:
        raise ValueError(f"`max_image_pixels` must be a positive integer, got {max_pixels!r}.")
    return int(max_pixels)


def check_image_bytes(data, max_pixels=DEFAULT_MAX_IMAGE_PIXELS):
    """``(header, None)`` when ``data`` is an admitted image within the cap, else ``(header or None, reason)``."""
    if data is None or len(data) == 0:
        return None, "empty image"
    hdr = image_header_size(data)
    if hdr is None:
        head = _as_bytes(data, 4).hex()
        return None, f"undecodable image (not a JPEG/PNG/BMP/WebP image or a malformed header; first bytes {head})"
    if hdr.height * hdr.width > max_pixels:
        return hdr, (f"{hdr.format} image of {hdr.width}x{hdr.height} = {hdr.height * hdr.width:,} pixels "
                     f"exceeds max_image_pixels={max_pixels:,}")
    if hdr.format == "png":
        why = _png_chunk_overrun(data)
        if why is not None:
            return hdr, why
    return hdr, None


try:  # OpenCV >= 4.10 decodes straight to RGB
    import cv2

    _IMREAD_RGB = getattr(cv2, "IMREAD_COLOR_RGB", None)
except ImportError:  # pragma: no cover - cv2 is a dependency
    cv2 = None
    _IMREAD_RGB = None


def decode_image(data, max_pixels=DEFAULT_MAX_IMAGE_PIXELS, rgb=True):
    """Decode an encoded image after checking its header (format allowlist and pixel cap).

    Args:
        data: encoded bytes or a uint8 array (e.g. a view of a memory map).
        max_pixels: largest ``height * width`` admitted.
        rgb: return RGB (else OpenCV's BGR).

    Returns:
        ``(image, None)`` with a uint8 ``(H, W, 3)`` array, or ``(None, reason)``.

    Example::

        img, why = decode_image(jpeg_bytes)
        if img is None: print("skipped:", why)
    """
    _, why = check_image_bytes(data, max_pixels)
    if why is not None:
        return None, why
    arr = data if isinstance(data, np.ndarray) else np.frombuffer(data, np.uint8)
    try:
        if rgb and _IMREAD_RGB is not None:
            img = cv2.imdecode(arr, _IMREAD_RGB)
        else:
            img = cv2.imdecode(arr, cv2.IMREAD_COLOR)
            if img is not None and rgb:
                img = cv2.cvtColor(img, cv2.COLOR_BGR2RGB)
    except cv2.error as e:
        return None, f"undecodable image ({str(e).strip().splitlines()[-1][:200]})"
    if img is None:
        return None, "undecodable image"
    return img, None


def image_file_byte_cap(max_pixels=DEFAULT_MAX_IMAGE_PIXELS) -> int:
    """Largest file :func:`read_image_file` reads for a ``max_pixels`` cap: ``8 * max_pixels + 1 MiB``.

    8 bytes a pixel is an uncompressed 16-bit RGBA image, the largest of the admitted formats; the
    MiB leaves room for headers and metadata. A larger file cannot hold an admitted image, so it is
    refused before it is read (129 MiB for :data:`DEFAULT_MAX_IMAGE_PIXELS`; a 4 GiB file is never read).
    """
    return 8 * int(max_pixels) + (1 << 20)


def read_image_file(path, max_pixels=DEFAULT_MAX_IMAGE_PIXELS, rgb=True, max_bytes=None):
    """Read and :func:`decode_image` a file; ``OSError`` when it is missing or cannot be read.

    Only a regular file is read (a FIFO, socket or device is refused without blocking), and only
    up to ``max_bytes`` (default :func:`image_file_byte_cap` of ``max_pixels``).

    Returns:
        ``(image, None)`` or ``(None, reason)``.
    """
    from keras_facemargin.utils.folder_files import read_regular_file

    cap = image_file_byte_cap(max_pixels) if max_bytes is None else int(max_bytes)
    data, problem = read_regular_file(path, cap)
    if problem is not None:
        reason, detail = problem
        if reason == "not_found":
            raise FileNotFoundError(errno.ENOENT, "No such file or directory", str(path))
        if reason == "unreadable":
            raise OSError(f"{path}: {detail}")
        return None, f"{reason}: {detail}"
    return decode_image(data, max_pixels, rgb)


def resize_image(image, size):
    """Resize to ``size`` = ``(height, width)`` (or an int for a square); area when shrinking.

    The one resizer of the package: ``cv2.INTER_AREA`` when the image shrinks in both sides,
    ``cv2.INTER_LINEAR`` otherwise. ``size=None`` or an equal size returns ``image`` itself.

    Example::

        resize_image(np.zeros((150, 150, 3), np.uint8), 112).shape   # (112, 112, 3)
    """
    if size is None:
        return image
    if isinstance(size, (int, np.integer)):
        size = (int(size), int(size))
    h, w = (int(v) for v in size)
    if image.shape[:2] == (h, w):
        return image
    interp = cv2.INTER_AREA if (h < image.shape[0] and w < image.shape[1]) else cv2.INTER_LINEAR
    return cv2.resize(image, (w, h), interpolation=interp)


# ------------------------------------------------------------------ photos from users
#: Cap on a user photo's ``height * width``: a 48-Mpx phone photo (8000x6000) and a
#: 12000x9000 scan pass; a 16k x 16k decode bomb does not.
PHOTO_MAX_PIXELS = 120_000_000
#: Cap on a user photo's file size (a 4 GiB file is refused before it is read).
PHOTO_MAX_BYTES = 256 << 20


def _gif(b):
    if len(b) < 10:
        return None
    w, h = struct.unpack_from("<HH", b, 6)
    return ImageHeader("gif", h, w) if w > 0 and h > 0 else None


def _pnm(b):
    fields, i, n = [], 2, len(b)
    while len(fields) < 2 and i < n:
        c = b[i:i + 1]
        if c == b"#":
            j = b.find(b"\n", i)
            if j < 0:
                return None
            i = j + 1
        elif c.isspace():
            i += 1
        elif c.isdigit():
            j = i
            while j < n and b[j:j + 1].isdigit() and j - i < 10:
                j += 1
            fields.append(int(b[i:j]))
            i = j
        else:
            return None
    if len(fields) < 2 or fields[0] <= 0 or fields[1] <= 0:
        return None
    return ImageHeader("pnm", fields[1], fields[0])


def _tiff(b):
    """Width and height of a TIFF's first image (IFD0 tags 256/257), from the first 64 KiB."""
    order = "<" if b[:2] == b"II" else ">"
    if len(b) < 8:
        return None
    off = struct.unpack_from(order + "I", b, 4)[0]
    if off + 2 > len(b):
        return None
    count = struct.unpack_from(order + "H", b, off)[0]
    size = {}
    for k in range(min(count, 4096)):
        e = off + 2 + 12 * k
        if e + 12 > len(b):
            return None
        tag, typ = struct.unpack_from(order + "HH", b, e)
        if tag in (256, 257):
            size[tag] = struct.unpack_from(order + ("H" if typ == 3 else "I"), b, e + 8)[0]
    if 256 not in size or 257 not in size or size[256] <= 0 or size[257] <= 0:
        return None
    return ImageHeader("tiff", size[257], size[256])


def photo_header(data):
    """Format and size of a photo, read from its header: :func:`image_header_size`'s four formats
    plus GIF, PNM (PBM/PGM/PPM) and TIFF; ``None`` for anything else (HDR, JPEG 2000, ...).

    Example::

        photo_header(open("scan.tif", "rb").read(65536))   # ImageHeader('tiff', 9000, 12000)
    """
    hdr = image_header_size(data)
    if hdr is not None:
        return hdr
    b = _as_bytes(data, _HEAD)
    if b[:4] in (b"GIF8",):
        return _gif(b)
    if b[:1] == b"P" and b[1:2] in (b"1", b"2", b"3", b"4", b"5", b"6"):
        return _pnm(b)
    if b[:4] in (b"II*\x00", b"MM\x00*"):
        return _tiff(b)
    return None


_SIGNATURES = ((b"\xff\xd8\xff", "JPEG"), (b"\x89PNG\r\n\x1a\n", "PNG"), (b"GIF8", "GIF"), (b"BM", "BMP"),
               (b"II*\x00", "TIFF"), (b"MM\x00*", "TIFF"))


def _photo_signature(head):
    """The format a file's first bytes announce (``None`` for none of the admitted ones)."""
    for magic, name in _SIGNATURES:
        if head.startswith(magic):
            return name
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "WebP"
    if head[:1] == b"P" and head[1:2] in (b"1", b"2", b"3", b"4", b"5", b"6"):
        return "PNM"
    return None


def read_photo(path, max_pixels=PHOTO_MAX_PIXELS, max_bytes=PHOTO_MAX_BYTES):
    """Read a photo file from a user as RGB uint8, within bounded time and memory.

    Refuses what is not a regular file (a directory or a FIFO is never opened for reading), files
    over ``max_bytes``, formats other than JPEG/PNG/BMP/WebP/GIF/PNM/TIFF, and headers declaring
    more than ``max_pixels`` pixels, before any pixel is allocated. EXIF orientation is applied.

    Args:
        path: the file.
        max_pixels: largest ``height * width`` admitted (:data:`PHOTO_MAX_PIXELS`).
        max_bytes: largest file size admitted (:data:`PHOTO_MAX_BYTES`).

    Returns:
        ``(image, None)``, or ``(None, (reason, detail))`` with ``reason`` one of ``"not_found"``,
        ``"not_an_image"``, ``"unreadable"``, ``"too_large"``.

    Example::

        rgb, problem = read_photo("face.jpg")
        if problem: print(*problem)
    """
    image, problem, _ = _read_photo(path, max_pixels, max_bytes, with_sha256=False)
    return image, problem


def read_photo_with_sha256(path, max_pixels=PHOTO_MAX_PIXELS, max_bytes=PHOTO_MAX_BYTES):
    """:func:`read_photo`, plus the sha256 of the very bytes decoded (the file is read once).

    For callers that key a photo by its content (a gallery's ``sha256:<hex>`` photo key): hashing
    the bytes that were decoded, rather than reading the file again, reads it once and keys exactly
    the content that was embedded, even if the file changes afterwards.

    Args:
        path, max_pixels, max_bytes: as :func:`read_photo`.

    Returns:
        ``(image, problem, sha256_hex)``: :func:`read_photo`'s pair, and the hex sha256 of the file's
        bytes (``None`` when the file could not be read; set when the bytes were read but do not decode).

    Example::

        rgb, problem, digest = read_photo_with_sha256("face.jpg")   # digest: 'e3b0c442...'
    """
    return _read_photo(path, max_pixels, max_bytes, with_sha256=True)


def _read_photo(path, max_pixels, max_bytes, with_sha256):
    """The one reader behind :func:`read_photo` and :func:`read_photo_with_sha256`; hashes the bytes only
    when asked (the photo paths that do not key photos skip the hash)."""
    from keras_facemargin.utils.folder_files import read_regular_file

    data, problem = read_regular_file(path, max_bytes)
    if problem is not None:
        reason, detail = problem
        if reason == "not_a_file":  # the reason code of earlier versions
            return None, ("not_an_image", detail.replace("expected a regular file", "expected an image file")), None
        if reason == "too_large":
            return None, ("too_large", detail.replace("the cap of", "the photo limit of")), None
        return None, problem, None
    digest = hashlib.sha256(data).hexdigest() if with_sha256 else None
    if not data:
        return None, ("unreadable", "empty file (0 bytes), expected an image"), digest
    image, problem = decode_photo(data, max_pixels)
    return image, problem, digest


def decode_photo(data, max_pixels=PHOTO_MAX_PIXELS):
    """Decode a photo's bytes after :func:`photo_header`'s format and pixel checks.

    Returns:
        as :func:`read_photo` (``(image, None)`` or ``(None, (reason, detail))``).
    """
    hdr = photo_header(data)
    if hdr is None:
        head = _as_bytes(data, 16)
        fmt = _photo_signature(head)
        if fmt is not None:
            return None, ("unreadable", f"{fmt} file whose header is truncated or corrupt ({len(data)} bytes)")
        return None, ("not_an_image", "not an image file (no JPEG/PNG/BMP/WebP/GIF/PNM/TIFF signature; "
                                      f"first bytes {head[:8]!r})")
    if hdr.height * hdr.width > max_pixels:
        return None, ("too_large", f"{hdr.format} image of {hdr.width}x{hdr.height} = {hdr.height * hdr.width:,} "
                                   f"pixels exceeds the photo limit of {max_pixels:,}")
    if hdr.format == "png":
        why = _png_chunk_overrun(data)
        if why is not None:
            return None, ("unreadable", why)
    arr = np.frombuffer(data, np.uint8) if not isinstance(data, np.ndarray) else data
    try:  # straight to RGB when OpenCV can (no second full-size copy: 324 MB less for a 108-Mpx scan)
        img = cv2.imdecode(arr, _IMREAD_RGB if _IMREAD_RGB is not None else cv2.IMREAD_COLOR)
    except cv2.error as e:
        return None, ("unreadable", f"{hdr.format} file that cannot be decoded ({str(e).strip().splitlines()[-1][:200]})")
    if img is None:
        return None, ("unreadable", f"{hdr.format} file that cannot be decoded (truncated or corrupt, {len(arr)} bytes)")
    return (img if _IMREAD_RGB is not None else cv2.cvtColor(img, cv2.COLOR_BGR2RGB, dst=img)), None
