"""`kfm train --follow-links`: image-folder roots read links out of the root only when asked.

Reference: the tree the test writes (which identity folders and images are real, which are links
out of the root), independent of the loader; the refusal reason is the folders' ``outside_root``.
"""

import os

import cv2
import numpy as np
import pytest

from keras_facemargin.cli import build_parser, train


def _png(path, seed):
    path.parent.mkdir(parents=True, exist_ok=True)
    rgb = np.random.default_rng(seed).integers(0, 256, (32, 32, 3), dtype=np.uint8)
    assert cv2.imwrite(str(path), rgb)


def _tree(tmp_path):
    root, outside = tmp_path / "root", tmp_path / "elsewhere"
    _png(root / "alice" / "1.png", 1)
    _png(root / "alice" / "2.png", 2)
    _png(root / "bob" / "1.png", 3)
    _png(outside / "carol" / "1.png", 4)
    _png(outside / "o.png", 5)
    os.symlink(outside / "carol", root / "carol")          # an identity folder out of the root
    os.symlink(outside / "o.png", root / "bob" / "out.png")  # an image out of the root
    return root


def _data(args):
    from keras_facemargin.training.trainer import _file_data

    cfg = train.config_from_args(build_parser("train").parse_args(args))
    spec = _file_data(cfg, 1)
    return cfg, spec.training_set


def test_links_out_of_the_root_are_refused_by_default_and_followed_with_the_flag(tmp_path, capsys):
    root = _tree(tmp_path)
    cfg, ts = _data(["train", "--data", str(root), "--image-size", "32", "--batch-size", "2"])
    assert cfg.follow_links is False
    assert (ts.num_classes, ts.num_samples) == (2, 3)  # alice 2, bob 1
    assert sorted(os.path.basename(str(r.file).rstrip("/")) for r in ts.bad_records) == ["carol", "out.png"]
    assert {r.reason for r in ts.bad_records} == {"outside_root"}
    cfg, ts = _data(["train", "--data", str(root), "--image-size", "32", "--batch-size", "2", "--follow-links"])
    assert cfg.follow_links is True
    assert (ts.num_classes, ts.num_samples) == (3, 5)  # + carol 1, + bob's linked image
    with pytest.raises(SystemExit):
        build_parser("train").parse_args(["train", "--help"])
    assert "--follow-links" in capsys.readouterr().out
