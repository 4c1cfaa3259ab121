"""One training set from one or more data roots: one label space, one sample table, one pipeline.

Each root is scanned by :func:`keras_facemargin.data.sources.open_source` (RecordIO, TFRecord or
image-folder tree). Combining roots (:func:`load_training_set`), in the order given:

* Labels: identities of image-folder roots are merged by folder name across roots with
  ``merge_identities="by_name"`` (the default: CelebA folders of different sets share
  identity numbers; the rule of :func:`keras_facemargin.data.formats.folders.merge_identity_roots`)
  and form one block, sorted by name, at the place of the first
  image-folder root; with ``"per_root"`` every root keeps its own identities. RecordIO and
  TFRecord roots carry numeric labels only and always keep their own label block.
* Duplicates: with ``"by_name"``, an image with the same identity and file name as one of
  an earlier root (e.g. the same CelebA file in two sets) is kept once (the first root's
  copy); in a TFRecord root a repeated ``image/index`` is kept once. Both are counted and
  listed in :attr:`TrainingSet.duplicates`.
* ``exclude_identities``: image-folder identity names to drop (e.g. LFW-overlap
  candidates; :func:`read_identity_list` reads such a file), from every image-folder root,
  before duplicates are looked for; names that match no identity are listed in
  :attr:`TrainingSet.exclusions`.
* Identities left without images are dropped (KappaFace needs every class count > 0).
* Sample ``index`` ``i`` (KappaFace's memory slot) is row ``i`` of the combined table:
  the rows of root 0 (folder: class-major sorted paths; RecordIO: valid keys in order;
  TFRecord: records sorted by ``image/index``), then those of root 1, ... after the
  drops above, so indices are ``0 .. num_samples - 1`` and unique. (The in-memory
  :func:`~keras_facemargin.data.identity_folders.load_identity_folders` merges by the same
  rule but orders its rows identity-major.)

Bad records: records the up-front checks reject (RecordIO header scan, truncated or
unparsable TFRecord records, empty or non-image files in image folders) are left out of
the table and listed in :attr:`TrainingSet.bad_records`. Images that fail to decode
while training keep their row (and their count in ``class_counts``), are skipped and
counted in the ``BadRecordReport`` passed to :meth:`TrainingSet.make_dataset`.

Example::

    ts = load_training_set(["celeba_identities/color_arcface112", "celeba_align_10k/images"],
                           exclude_identities=read_identity_list("lfw_overlap_candidates.tsv"),
                           image_size=112)
    print("\\n".join(ts.summary_lines()))
    ds = ts.make_dataset(batch_size=64, seed=0)      # ({"images", "labels", "index"}, labels)
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import numpy as np
import tensorflow as tf

from keras_facemargin.data.errors import BadRecordError, BadRecordReport, check_on_error
from keras_facemargin.data.formats.folders import escape_identity_name, merge_identity_roots, unescape_identity_name
from keras_facemargin.data.pipeline import (
    _check_common,
    _check_pipeline_args,
    build_decoded_pipeline,
    decode_image_into,
)
from keras_facemargin.data.sources import _is_glob, open_source
from keras_facemargin.errors import DataSourceError
from keras_facemargin.utils.images import DEFAULT_MAX_IMAGE_PIXELS

__all__ = ["MERGE_MODES", "read_identity_list", "read_identities_tsv", "load_training_set", "TrainingSet"]

MERGE_MODES = ("by_name", "per_root")
_MAX_EXAMPLES = 10


def read_identity_list(path):
    """Identity names from a file: one name per line, or a TSV whose first column is the name.

    Blank lines and lines starting with ``#`` are skipped; in a ``.tsv`` file the first
    line is a header (e.g. ``celeba_identity<TAB>nearest_lfw_name ...``) and is skipped too.
    In other files a line with tabs gives its first column.

    Returns:
        tuple of unique names, in file order.

    Raises:
        FileNotFoundError: no such file. DataSourceError: the file lists no name.

    Example::

        names = read_identity_list("celeba_identities/lfw_overlap_candidates.tsv")  # ('6803', '7398', ...)
    """
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"Identity list {str(path)!r} does not exist; expected a text file with one "
                                "identity name per line, or a .tsv file whose first column is the name.")
    try:
        lines = p.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError as e:
        raise DataSourceError(f"Identity list {str(path)!r} is not UTF-8 text ({e}).") from None
    if p.suffix.lower() == ".tsv" and lines:
        lines = lines[1:]
    names = []
    for line in lines:
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        name = line.split("\t")[0].strip()
        if name:
            names.append(name)
    if not names:
        raise DataSourceError(f"Identity list {str(path)!r} lists no identity name (one per line, or a .tsv "
                              "whose first column is the name, after a header line).")
    return tuple(dict.fromkeys(names))


def read_identities_tsv(path):
    """The rows of an ``identities.tsv`` written by :meth:`TrainingSet.write_report`, names unescaped.

    Returns:
        list of ``{"label": int, "identity": str, "images": int, "roots": [int]}`` in file order;
        ``identity`` is the exact name (:func:`~keras_facemargin.data.formats.folders.unescape_identity_name`).

    Raises:
        FileNotFoundError: no such file. DataSourceError: a row that is not 4 tab-separated fields.

    Example::

        [r["identity"] for r in read_identities_tsv("runs/celeba/identities.tsv")]   # label order
    """
    lines = Path(path).read_text(encoding="utf-8").split("\n")
    rows = []
    for i, line in enumerate(lines[1:], start=2):
        if not line:
            continue
        fields = line.split("\t")
        try:
            if len(fields) != 4:
                raise ValueError(f"{len(fields)} tab-separated fields, expected 4")
            rows.append({"label": int(fields[0]), "identity": unescape_identity_name(fields[1]),
                         "images": int(fields[2]), "roots": [int(r) for r in fields[3].split(",") if r]})
        except ValueError as err:
            raise DataSourceError(f"{path}:{i}: not an identities.tsv row (label, identity, images, roots): "
                                  f"{err}.") from None
    return rows


# ---------------------------------------------------------------------------------- training set
class TrainingSet:
    """Several scanned roots as one training set (see the module docstring).

    Attributes:
        sources: the scanned roots, in order.
        merge_identities: ``"by_name"`` or ``"per_root"``.
        class_names: identity name per label (``"<root>:<name>"`` for roots that keep their own
            identities when there are several roots).
        class_roots: per label, the indices of the roots holding images of it (before duplicates are dropped).
        class_counts: int64 images per label (all > 0).
        labels: int32 label per sample; sample ``index`` ``i`` is row ``i``.
        num_classes, num_samples: ``len(class_names)``, ``len(labels)``.
        image_hw: ``(height, width)`` every image is decoded to.
        duplicates: dicts ``{"identity", "file", "kept", "dropped", "reason"}`` of the copies left out.
        shared_identities: image-folder identity names with images in several roots (merged with
            ``"by_name"``, kept apart with ``"per_root"``).
        exclusions: ``{"requested", "excluded": {name: images}, "unmatched": [names]}``.
        dropped_identities: identity names left without images (not in the label space).
        bad_records: ``BadRecordError`` s found by the up-front checks (not in the table).

    Example::

        ts = TrainingSet([open_source("a_tree"), open_source("faces_emore")], image_size=112)
        ts.class_names[ts.labels[0]], ts.where(0)       # identity and file of sample index 0
    """

    def __init__(self, sources, merge_identities="by_name", exclude_identities=(), image_size=None):
        if merge_identities not in MERGE_MODES:
            raise DataSourceError(f"`merge_identities` must be one of {list(MERGE_MODES)}. "
                                  f"Received: merge_identities={merge_identities!r}")
        self.sources = list(sources)
        self.merge_identities = merge_identities
        self._resolve_size(image_size)
        self._combine(tuple(exclude_identities))

    # -- construction ------------------------------------------------------------------
    def _resolve_size(self, image_size):
        hw = _check_pipeline_args(1, tf.data.AUTOTUNE, image_size)
        self.resize = hw is not None
        if hw is None:
            sizes = {s.path: s.image_hw for s in self.sources}
            known = {v for v in sizes.values() if v is not None}
            if not known:
                raise DataSourceError(f"Cannot infer the image size: no probe image of {list(sizes)} decodes; "
                                      "pass image_size.")
            if len(known) > 1:
                raise DataSourceError("The training data roots have different image sizes ("
                                      + ", ".join(f"{p}: {v[0]}x{v[1]}" for p, v in sizes.items() if v)
                                      + "); pass image_size (--image-size) to resize them all.")
            hw = known.pop()
        self.image_hw = tuple(int(v) for v in hw)

    def _combine(self, exclude):
        by_name = self.merge_identities == "by_name"
        several = len(self.sources) > 1
        exclude_set = set(exclude)
        # Global identity keys in label order.
        keys, names, block_done = [], [], False
        folder_names = sorted({n for s in self.sources if s.kind == "image_folder" for n in s.class_names})
        for i, s in enumerate(self.sources):
            if s.kind == "image_folder" and by_name:
                if not block_done:
                    keys += [("name", n) for n in folder_names]
                    names += folder_names
                    block_done = True
            else:
                keys += [(i, n) for n in s.class_names]
                names += [f"{i}:{n}" if several else n for n in s.class_names]
        key_label = {k: j for j, k in enumerate(keys)}
        excluded, excluded_labels, roots_of, name_roots = {}, set(), [set() for _ in keys], {}
        # Per root: global labels and the rows left by the exclusions.
        glob_labs, keeps = [], []
        for i, s in enumerate(self.sources):
            folder = s.kind == "image_folder"
            local = np.asarray([key_label[("name", n) if folder and by_name else (i, n)] for n in s.class_names],
                               np.int64)
            glob_labs.append(local[s.labels] if s.labels.size else np.zeros(0, np.int64))
            keep = np.ones(s.num_images, bool)
            if folder and exclude_set:
                for c, n in enumerate(s.class_names):
                    if n in exclude_set:
                        hit = s.labels == c
                        excluded[n] = excluded.get(n, 0) + int(hit.sum())
                        excluded_labels.add(int(local[c]))
                        keep &= ~hit
            keeps.append(keep)
        # Duplicates across the image-folder roots merged by name (the rule of merge_identity_roots).
        merged = [i for i, s in enumerate(self.sources) if s.kind == "image_folder"] if by_name else []
        eligible = {i: np.flatnonzero(keeps[i]) for i in merged}
        merge = merge_identity_roots([[(self.sources[i].class_names[self.sources[i].labels[r]],
                                        self.sources[i].file_names[r]) for r in eligible[i]] for i in merged])
        dups_of = {i: [] for i in merged}
        for ident, fname, (ka, ra), (kb, rb) in merge.duplicates:
            a, b = merged[ka], merged[kb]
            dups_of[b].append({"identity": ident, "file": fname,
                               "kept": self.sources[a].where(int(eligible[a][ra]))[0],
                               "dropped": self.sources[b].where(int(eligible[b][rb]))[0],
                               "reason": "same identity and file name in an earlier root"})
        src_col, row_col, lab_col, duplicates = [], [], [], []
        for i, s in enumerate(self.sources):
            folder = s.kind == "image_folder"
            glob_lab, keep = glob_labs[i], keeps[i]
            keep_before_dedup = keep.copy()
            if i in dups_of:
                keep[eligible[i][~np.asarray(merge.kept[merged.index(i)], bool)]] = False
                duplicates += dups_of[i]
            duplicates += s.duplicates
            for g in np.unique(glob_lab[keep_before_dedup]):
                roots_of[g].add(i)
            if folder:
                for c in np.unique(s.labels[keep_before_dedup]):
                    name_roots.setdefault(s.class_names[c], []).append(i)
            rows = np.flatnonzero(keep)
            src_col.append(np.full(rows.size, i, np.int32))
            row_col.append(rows.astype(np.int64))
            lab_col.append(glob_lab[rows])
        labels = np.concatenate(lab_col) if lab_col else np.zeros(0, np.int64)
        counts = np.bincount(labels, minlength=len(keys))
        present = counts > 0
        self.dropped_identities = [names[j] for j in np.flatnonzero(~present) if int(j) not in excluded_labels]
        remap = np.cumsum(present) - 1
        self.labels = remap[labels].astype(np.int32)
        self.class_names = [n for n, p in zip(names, present) if p]
        self.class_roots = [tuple(sorted(r)) for r, p in zip(roots_of, present) if p]
        self.class_counts = counts[present].astype(np.int64)
        self.source_of = np.concatenate(src_col)
        self.row_of = np.concatenate(row_col)
        self.duplicates = duplicates
        self.shared_identities = sorted(n for n, r in name_roots.items() if len(r) > 1)
        folder_ids = {n for s in self.sources if s.kind == "image_folder" for n in s.class_names}
        self.exclusions = {"requested": len(exclude), "excluded": excluded,
                           "unmatched": [n for n in exclude if n not in folder_ids]}
        self.bad_records = [e for s in self.sources for e in s.bad]
        if self.num_samples == 0:
            raise DataSourceError(f"No training image is left in {[s.path for s in self.sources]} after the "
                                  f"exclusions ({len(excluded)} identities excluded).")

    # -- derived -------------------------------------------------------------------------
    @property
    def num_samples(self) -> int:
        return int(self.labels.size)

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def where(self, index):
        """``(file, offset)`` of sample ``index`` (offset ``None`` for image files)."""
        return self.sources[int(self.source_of[index])].where(int(self.row_of[index]))

    def fingerprint(self) -> str:
        """SHA-256 of the label space and sample table (identity names, counts, per-sample label).

        Equal fingerprints mean a checkpoint's class weights and KappaFace memory rows refer
        to the same identities and samples; the paths themselves are not part of it.
        """
        h = hashlib.sha256()
        # Names as the file system's bytes (undecodable ones are surrogate escapes); the same
        # bytes as UTF-8 for every decodable name, so older fingerprints stay valid.
        h.update("\n".join(self.class_names).encode("utf-8", "surrogateescape"))
        h.update(self.class_counts.tobytes())
        h.update(self.labels.tobytes())
        h.update(repr(self.image_hw).encode())
        return h.hexdigest()

    def summary_lines(self):
        """Lines for the log: one per root, then the combined set, merges, duplicates, exclusions, bad records."""
        lines = [f"data: {s.summary()}" for s in self.sources]
        h, w = self.image_hw
        resize = " (resized)" if self.resize else ""
        if len(self.sources) > 1:
            lines.append(f"data: {len(self.sources)} roots combined (merge_identities={self.merge_identities!r}): "
                         f"{self.num_classes:,} identities, {self.num_samples:,} images of {h}x{w} px{resize}")
        else:
            lines.append(f"data: {self.num_classes:,} identities, {self.num_samples:,} images of {h}x{w} px{resize}")
        if self.shared_identities:
            eg = ", ".join(map(escape_identity_name, self.shared_identities[:5]))
            if self.merge_identities == "by_name":
                lines.append(f"data: {_count(len(self.shared_identities), 'identity')} occur in several image-folder roots "
                             f"and are merged by name (e.g. {eg}); merge_identities='per_root' keeps them apart")
            else:
                lines.append(f"data: {_count(len(self.shared_identities), 'identity name')} occur in several image-folder "
                             f"roots and are kept apart as different identities (e.g. {eg}); "
                             "merge_identities='by_name' merges them")
        if self.duplicates:
            eg = "; ".join(escape_identity_name(f"{d['identity']}/{d['file']}") for d in self.duplicates[:3])
            lines.append(f"data: {len(self.duplicates):,} duplicate image(s) kept once, the first root's copy "
                         f"(e.g. {eg})")
        ex = self.exclusions
        if ex["requested"]:
            lines.append(f"data: excluded {len(ex['excluded']):,} of {ex['requested']:,} listed identities "
                         f"({sum(ex['excluded'].values()):,} images); {len(ex['unmatched']):,} listed name(s) "
                         "match no image-folder identity"
                         + (f" (e.g. {', '.join(map(escape_identity_name, ex['unmatched'][:5]))})"
                            if ex["unmatched"] else ""))
        if self.dropped_identities:
            lines.append(f"data: {_count(len(self.dropped_identities), 'identity')} without images left out "
                         f"(e.g. {', '.join(map(escape_identity_name, self.dropped_identities[:5]))})")
        if self.bad_records:
            lines.append(f"data: {len(self.bad_records):,} bad record(s) left out; first: "
                         f"{escape_identity_name(str(self.bad_records[0]))}")
        return lines

    def report(self, max_examples=_MAX_EXAMPLES):
        """JSON-ready dict of the above (for ``data_report.json``)."""
        return {
            "sources": [{"path": s.path, "kind": s.kind, "identities": len(set(s.labels.tolist())),
                         "images": s.num_images, "image_size": list(s.image_hw) if s.image_hw else None,
                         "bad_records": len(s.bad), "ignored": len(s.ignored),
                         "ignored_examples": s.ignored[:max_examples]} for s in self.sources],
            "merge_identities": self.merge_identities,
            "num_classes": self.num_classes,
            "num_samples": self.num_samples,
            "image_size": list(self.image_hw),
            "resized": self.resize,
            "fingerprint": self.fingerprint(),
            "shared_identities": {"count": len(self.shared_identities), "merged": self.merge_identities == "by_name",
                                  "examples": self.shared_identities[:max_examples]},
            "duplicates": {"count": len(self.duplicates), "examples": self.duplicates[:max_examples]},
            "exclusions": {"requested": self.exclusions["requested"],
                           "excluded_identities": len(self.exclusions["excluded"]),
                           "excluded_images": sum(self.exclusions["excluded"].values()),
                           "excluded": self.exclusions["excluded"],
                           "unmatched": self.exclusions["unmatched"]},
            "dropped_identities": {"count": len(self.dropped_identities),
                                   "examples": self.dropped_identities[:max_examples]},
            "bad_records_up_front": {"count": len(self.bad_records),
                                     "examples": [_error_dict(e) for e in self.bad_records[:max_examples]]},
        }

    def write_report(self, directory, bad_records: BadRecordReport | None = None, extra=None):
        """Write ``data_report.json`` (:meth:`report`, plus ``bad_records`` met while training and
        ``extra``), ``identities.tsv`` (label, identity, images, roots) and, when there are
        duplicates, ``duplicates.tsv`` into ``directory``; returns the JSON path.

        Each file is written atomically (:mod:`keras_facemargin.utils.atomic`): a kill -9 leaves its
        old or its new version, so a run can always resume. In the TSV files, identity names, file
        names and paths go through
        :func:`~keras_facemargin.data.formats.folders.escape_identity_name` (tab, newline, backslash
        and undecodable bytes escaped; :func:`read_identities_tsv` reverses it), so every row is one
        line of four (five) tab-separated UTF-8 fields whatever the folder names hold. In
        ``data_report.json`` names are JSON strings (an undecodable byte ``NN`` of a folder name is
        the escape ``\\udcNN``, which Python's ``json`` reads back as the same name).

        Example::

            ts.write_report("runs/celeba", bad_records=report)
        """
        from keras_facemargin.utils.atomic import atomic_write_json, atomic_write_text

        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        rep = self.report()
        if bad_records is not None:
            rep["bad_records_training"] = {"count": bad_records.count, "by_reason": dict(bad_records.by_reason),
                                           "examples": bad_records.examples}
        rep.update(extra or {})
        path = directory / "data_report.json"
        atomic_write_json(path, rep, indent=2, default=str)
        rows = ["label\tidentity\timages\troots"]
        rows += [f"{j}\t{escape_identity_name(n)}\t{c}\t{','.join(map(str, r))}"
                 for j, (n, c, r) in enumerate(zip(self.class_names, self.class_counts.tolist(), self.class_roots))]
        atomic_write_text(directory / "identities.tsv", "\n".join(rows) + "\n")
        dup = directory / "duplicates.tsv"
        if self.duplicates:
            rows = ["identity\tfile\tkept\tdropped\treason"]
            rows += ["\t".join(escape_identity_name(str(d[k])) for k in ("identity", "file", "kept", "dropped", "reason"))
                     for d in self.duplicates]
            atomic_write_text(dup, "\n".join(rows) + "\n")
        elif dup.exists():
            dup.unlink()
        return path

    def close(self):
        for s in self.sources:
            s.close()

    # -- pipeline ------------------------------------------------------------------------
    def make_dataset(self, batch_size: int, seed: int = 0, shuffle: bool = True, augment_flip: bool = True,
                     drop_remainder: bool = True, repeat: bool = False, shard=None, on_error: str = "skip",
                     report: BadRecordReport | None = None, num_parallel_calls=tf.data.AUTOTUNE,
                     chunk_size: int = 32) -> tf.data.Dataset:
        """The training ``tf.data`` pipeline: ``({"images", "labels", "index"}, labels)``.

        Args:
            batch_size: images per batch (per worker when sharded).
            seed, shuffle, augment_flip, drop_remainder, repeat, num_parallel_calls, chunk_size:
                as in :func:`keras_facemargin.data.formats.recordio.make_dataset`.
            shard: ``None`` or ``(num_shards, index)``: the samples ``index::num_shards``.
            on_error: ``"skip"`` images that fail to decode (counted in ``report``) or
                ``"raise"`` a :class:`BadRecordError` naming the file.
            report: a :class:`BadRecordReport` to count into (default: a new one, attached
                as ``.bad_records``); pass the same one every epoch to count each bad image once.

        Example::

            ds = ts.make_dataset(64, seed=3, report=report)
        """
        check_on_error(on_error)
        _check_pipeline_args(chunk_size, num_parallel_calls, None)
        report = BadRecordReport() if report is None else report
        positions = np.arange(self.num_samples, dtype=np.int64)
        if shard is not None:
            n, i = (int(v) for v in shard)
            if n < 1 or not 0 <= i < n:
                raise ValueError(f"Invalid shard ({n}, {i}): need num_shards >= 1 and 0 <= index < num_shards.")
            positions = positions[i::n]
            shard = None if n == 1 else (n, i)
        _check_common(positions.size, batch_size, drop_remainder, seed)
        hw, resize = self.image_hw, self.resize
        sources, source_of, row_of = self.sources, self.source_of, self.row_of

        def load_chunk(idx):
            out = np.empty((idx.size, hw[0], hw[1], 3), np.uint8)
            ok = np.ones(idx.size, bool)
            for k, i in enumerate(idx):
                src, row = sources[source_of[i]], int(row_of[i])
                try:
                    why = decode_image_into(src.read(row), out[k], resize, src.max_image_pixels)
                    err = None if why is None else BadRecordError(*src.where(row), "bad_image", why)
                except BadRecordError as e:
                    err = e
                except OSError as e:
                    err = BadRecordError(*src.where(row), "bad_image", f"unreadable file ({e})")
                if err is not None:
                    if on_error == "raise":
                        raise err
                    report.add_error(err, key=int(i))
                    ok[k] = False
            return out, ok

        source = tf.data.Dataset.from_tensor_slices((positions, self.labels[positions]))
        ds = build_decoded_pipeline(source, load_chunk, hw, batch_size, shuffle, seed, augment_flip,
                                    drop_remainder, repeat, num_parallel_calls, chunk_size, shard)
        ds.bad_records = report
        return ds


def _count(n, noun):
    plural = noun[:-1] + "ies" if noun.endswith("y") else noun + "s"
    return f"{n:,} {noun if n == 1 else plural}"


def _error_dict(e):
    return {"file": e.file, "offset": e.offset, "reason": e.reason, "detail": e.detail}


def load_training_set(paths, merge_identities="by_name", exclude_identities=(), image_size=None,
                      max_image_pixels=DEFAULT_MAX_IMAGE_PIXELS, follow_links: bool = False):
    """Scan one or more data roots and combine them into one :class:`TrainingSet`.

    Args:
        paths: a path or a sequence of paths (RecordIO folder, TFRecord file/glob/folder,
            image-folder tree; see the module docstring).
        merge_identities: ``"by_name"`` (default): image-folder identities with the same
            folder name in several roots are one identity, and the same (identity, file name)
            is kept once; ``"per_root"``: each root keeps its own identities.
        exclude_identities: image-folder identity names to leave out.
        image_size: int or ``(H, W)`` to resize every image to; default: the roots' common
            size (roots of different sizes then raise :class:`DataSourceError`).
        max_image_pixels: largest ``height * width`` of an image, checked on its header before
            decoding (larger ones are bad records).
        follow_links: image-folder roots: also follow symbolic links whose target lies outside the
            root (default: FIFOs, sockets, devices, dangling or looping links and links out of the
            root are bad records -- ``not_a_file`` / ``outside_root`` -- listed in ``bad_records`` and
            ``data_report.json``, never opened; files over
            :func:`~keras_facemargin.utils.images.image_file_byte_cap` are ``too_large``, never read).

    Returns:
        :class:`TrainingSet`.

    Raises:
        OSError: a missing or unreadable path (``FileNotFoundError`` names it).
        DataSourceError: a path that is none of the kinds, a path given twice, or no image left.
        RecordIOError / TFRecordError: a RecordIO or TFRecord root that is malformed as a whole
            (see :class:`~keras_facemargin.data.formats.recordio.RecordIOReader`); bad single records
            are listed in ``bad_records`` instead. All are ``ValueError`` s naming the file.

    Example::

        ts = load_training_set(["a_tree", "b_tree"], exclude_identities=["6803"], image_size=112)
        ts.num_classes, ts.class_counts, ts.num_samples
    """
    if isinstance(paths, (str, bytes)) or hasattr(paths, "__fspath__"):
        paths = [paths]
    paths = [os.fspath(p) for p in paths]
    if not paths:
        raise DataSourceError("No training data path given.")
    seen = {}
    for p in paths:
        key = p if _is_glob(p) and not os.path.exists(p) else os.path.realpath(p)
        if key in seen:
            raise DataSourceError(f"Training data {p!r} is given twice (as {seen[key]!r} too); give each root once.")
        seen[key] = p
    if isinstance(exclude_identities, str):
        raise DataSourceError("`exclude_identities` must be a sequence of identity names, not a string "
                              f"(read a file with read_identity_list). Received: {exclude_identities!r}")
    sources = []
    try:
        for p in paths:
            sources.append(open_source(p, max_image_pixels, follow_links=follow_links))
        return TrainingSet(sources, merge_identities, exclude_identities, image_size)
    except BaseException:
        for s in sources:
            s.close()
        raise
