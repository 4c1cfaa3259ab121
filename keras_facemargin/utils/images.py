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

import struct
from collections import namedtuple

import numpy as np

__all__ = ["DEFAULT_MAX_IMAGE_PIXELS", "ImageHeader", "image_header_size", "check_image_bytes",
           "decode_image", "read_image_file", "check_max_pixels", "resize_image", "PIXEL_MEAN", "PIXEL_STD",
           "PACKAGE_NORMALIZATION"]

#: The package's input normalisation ``(x - PIXEL_MEAN) / PIXEL_STD`` (ArcFace/insightface's
#: MXNet recipe); arcface_torch uses ``std=127.5`` (see ``keras_facemargin.pretrained``).
PIXEL_MEAN = 127.5
PIXEL_STD = 128.0
PACKAGE_NORMALIZATION = {"mean": PIXEL_MEAN, "std": PIXEL_STD}

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


def read_image_file(path, max_pixels=DEFAULT_MAX_IMAGE_PIXELS, rgb=True):
    """Read and :func:`decode_image` a file; ``OSError`` when it cannot be read.

    Returns:
        ``(image, None)`` or ``(None, reason)``.
    """
    with open(path, "rb") as f:
        data = f.read()
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
