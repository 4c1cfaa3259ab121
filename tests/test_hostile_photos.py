"""Photos from outside (issue 23, part 1): decode bombs in every format, files that are not photos.

Each crafted file is a few hundred bytes whose header declares 16k-65k pixel sides (2.4 to 12 GB
once decoded). Before the fix, the photo readers called ``cv2.imdecode`` with no header or pixel cap:
the answer was a raw ``cv2.error``, a ``MemoryError`` or gigabytes of memory. Now
``utils.images.read_photo`` refuses them from the header (``too_large``) or by format
(``not_an_image``), and refuses a FIFO, a directory and a 4 GiB file before any read that could
block or allocate.

The readers run in a subprocess limited to 3 GB of address space (TensorFlow maps about 2 GB on
import), each read checked to stay under 1.5 GB peak RSS and 5 s (``photo_worker``); the
CLI case runs ``kfm verify`` in a subprocess and checks exit 5, one JSON object and no traceback.
"""

import json
import os
import resource
import struct
import subprocess
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import pytest
from testing import repo_env
from untrusted_cases import jpeg_bomb, png_bomb

LIMIT_BYTES = 3 << 30  # address space: importing the package maps TensorFlow (~2 GB); RSS is checked below
SECONDS = 30
W, H = 30000, 30000  # 900 Mpx: 2.7 GB as RGB


def gif_bomb():
    # logical screen and one image of W x H, global colour table of 2, a tiny LZW stream
    return (b"GIF89a" + struct.pack("<HHBBB", W, H, 0x80, 0, 0) + b"\0\0\0\xff\xff\xff"
            + b"\x2c" + struct.pack("<HHHHB", 0, 0, W, H, 0) + b"\x02\x02\x44\x01\x00\x3b")


def bmp_bomb():
    info = struct.pack("<IiiHHIIiiII", 40, W, H, 1, 24, 0, 0, 2835, 2835, 0, 0)
    return b"BM" + struct.pack("<IHHI", 54 + 64, 0, 0, 54) + info + b"\0" * 64


def tiff_bomb():
    entries = [(256, 4, 1, W), (257, 4, 1, H), (258, 3, 1, 8), (259, 3, 1, 1), (262, 3, 1, 1),
               (273, 4, 1, 8), (277, 3, 1, 1), (278, 4, 1, H), (279, 4, 1, W * H)]
    ifd = struct.pack("<H", len(entries)) + b"".join(struct.pack("<HHII", *e) for e in entries) + b"\0\0\0\0"
    return b"II*\x00" + struct.pack("<I", 8) + ifd + b"\0" * 64


def ppm_bomb():
    return f"P6\n{W} {H}\n255\n".encode() + b"\0" * 64


def webp_bomb():
    # VP8X canvas of 16384 x 16384 (the format's maximum), then a tiny VP8L payload
    vp8x = b"VP8X" + struct.pack("<I", 10) + b"\0\0\0\0" + (16383).to_bytes(3, "little") * 2
    body = b"WEBP" + vp8x + b"VP8L" + struct.pack("<I", 6) + b"\x2f\0\0\0\0\0"
    return b"RIFF" + struct.pack("<I", len(body)) + body


def hdr_bomb():
    return b"#?RADIANCE\nFORMAT=32-bit_rle_rgbe\n\n-Y 30000 +X 30000\n" + b"\x02\x02\x75\x30" * 16


def jp2_bomb():
    ihdr = b"ihdr" + struct.pack(">IIHBBBB", H, W, 3, 7, 7, 0, 0)
    jp2h = struct.pack(">I", 8 + 8 + len(ihdr)) + b"jp2h" + struct.pack(">I", 8 + len(ihdr)) + ihdr
    return (b"\x00\x00\x00\x0cjP  \r\n\x87\n" + b"\x00\x00\x00\x14ftypjp2 \x00\x00\x00\x00jp2 " + jp2h
            + b"\0" * 64)


# name -> (bytes, reason read_photo must give)
BOMBS = {"bomb.png": (lambda: png_bomb(W, H), "too_large"), "bomb.jpg": (lambda: jpeg_bomb(W, H), "too_large"),
         "bomb.gif": (gif_bomb, "too_large"), "bomb.bmp": (bmp_bomb, "too_large"),
         "bomb.tif": (tiff_bomb, "too_large"), "bomb.ppm": (ppm_bomb, "too_large"),
         "bomb.webp": (webp_bomb, "too_large"), "bomb.hdr": (hdr_bomb, "not_an_image"),
         "bomb.jp2": (jp2_bomb, "not_an_image")}

WORKER = r"""
import json, resource, sys, time
from keras_facemargin.utils.images import read_photo
from keras_facemargin.utils.memory import peak_rss_mb  # not ru_maxrss: it inherits the parent's
for path in sys.argv[1:]:
    t = time.perf_counter()
    image, problem = read_photo(path)
    print(json.dumps({"file": path, "reason": problem[0] if problem else "ok", "detail": problem[1] if problem else "",
                      "seconds": time.perf_counter() - t,
                      "peak_rss_mb": peak_rss_mb()}), flush=True)
"""


def _limit():
    resource.setrlimit(resource.RLIMIT_AS, (LIMIT_BYTES, LIMIT_BYTES))


def _read_in_limited_process(paths):
    proc = subprocess.run([sys.executable, "-c", WORKER, *map(str, paths)], capture_output=True, text=True,
                          timeout=SECONDS + 60, env=repo_env(), preexec_fn=_limit)
    assert proc.returncode == 0 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    return {Path(r["file"]).name: r for r in map(json.loads, proc.stdout.splitlines())}


@pytest.fixture(scope="module")
def hostile(tmp_path_factory):
    d = tmp_path_factory.mktemp("hostile_photos")
    for name, (make, _) in BOMBS.items():
        (d / name).write_bytes(make())
    os.mkfifo(d / "fifo.jpg")
    with open(d / "video.jpg", "wb") as f:  # a 4 GiB sparse file that starts like a JPEG
        f.write(jpeg_bomb(W, H)[:20])
        f.truncate(4 << 30)
    (d / "folder.jpg").mkdir()
    ok, buf = cv2.imencode(".jpg", np.full((40, 30, 3), 128, np.uint8))
    (d / "small.jpg").write_bytes(buf.tobytes())
    return d


def test_the_crafted_headers_declare_what_they_claim(hostile):
    """The bombs are real: OpenCV's own header readers (where it has one) see the huge sizes, and the
    package's header parser reads the declared size of every admitted format."""
    from keras_facemargin.utils.images import photo_header

    for name, (make, reason) in BOMBS.items():
        hdr = photo_header(make())
        if reason == "too_large":
            assert hdr is not None and hdr.height * hdr.width >= 16383 * 16383, name
        else:
            assert hdr is None, name
    assert photo_header((hostile / "small.jpg").read_bytes())[1:] == (40, 30)


@pytest.mark.slow
def test_every_bomb_and_special_file_is_refused_in_bounded_memory_and_time(hostile):
    names = [*BOMBS, "fifo.jpg", "video.jpg", "folder.jpg", "small.jpg", "x" * 300 + ".jpg"]
    t = time.monotonic()
    got = _read_in_limited_process([hostile / n for n in names])
    assert time.monotonic() - t < SECONDS + 30  # the interpreter, numpy and OpenCV included
    expected = {**{n: r for n, (_, r) in BOMBS.items()}, "fifo.jpg": "not_an_image", "video.jpg": "too_large",
                "folder.jpg": "not_an_image", "small.jpg": "ok", "x" * 300 + ".jpg": "unreadable"}
    assert {n: got[n]["reason"] for n in names} == expected
    for name in names:
        assert got[name]["seconds"] < 5, name
        assert got[name]["peak_rss_mb"] < 1536, name
    assert "pixels exceeds the photo limit" in got["bomb.gif"]["detail"]
    assert "4,294,967,296 bytes" in got["video.jpg"]["detail"]
    assert "FIFO" in got["fifo.jpg"]["detail"] and "directory" in got["folder.jpg"]["detail"]


@pytest.mark.slow
def test_kfm_verify_refuses_a_bomb_with_exit_5_and_one_json_object(hostile):
    proc = subprocess.run([sys.executable, "-m", "keras_facemargin", "verify", str(hostile / "bomb.tif"),
                           str(hostile / "small.jpg"), "--model", "arcface_celeba_mbf", "--json"],
                          capture_output=True, text=True, timeout=300, env=repo_env(TF_CPP_MIN_LOG_LEVEL="2"))
    assert proc.returncode == 5, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr
    (answer,) = [json.loads(line) for line in proc.stdout.splitlines() if line.strip()]
    assert answer["error"] == "too_large" and answer["file"] == str(hostile / "bomb.tif")
    assert "30000x30000" in answer["message"] and str(hostile / "bomb.tif") in answer["message"]
