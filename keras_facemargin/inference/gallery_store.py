"""The gallery file: one SQLite database (standard library ``sqlite3``, WAL mode), changed transactionally.

Tables:

* ``meta(key, value)``: ``format`` (``keras_facemargin.gallery``), ``version`` (:data:`STORE_VERSION`),
  ``config`` (the building verifier's ``config()`` as JSON: model, embedding size, input size,
  normalisation, crop), ``probe`` (float32 embedding of a fixed image: the model's fingerprint),
  ``created``, ``source``, ``skipped`` (JSON);
* ``identities(id, name UNIQUE, template, num_images, updated)``: the template is the renormalised,
  weighted mean of the identity's photo embeddings, recomputed in the transaction that changes them;
* ``photos(id, identity_id, key, source, weight, embedding, added)``: one unit float32 embedding per
  photo (``key``: the sha256 of the photo's bytes, unique per identity, so adding a photo again
  replaces it); a template imported from a legacy ``.npz`` is one row of ``weight`` = its image count.

Every change is one ``BEGIN IMMEDIATE`` transaction on its own connection (a busy timeout makes
concurrent writers wait for each other; readers are never blocked in WAL mode), so threads and
processes can add and remove at once and the file stays whole under kill -9. A new file is created
complete in a temporary file (unique per writer) and linked into place, so two processes creating
the same gallery end with one. Reading validates the schema (no views or triggers), the metadata
and every row (:mod:`keras_facemargin.inference.gallery_files`).

Example::

    store = GalleryStore.create("people.db", verifier.config(), verifier.probe_embedding())
    store.add_photos("alice", [("sha256...", "alice1.jpg", 1, embedding)])
    store.read()["names"]
"""

from __future__ import annotations

import contextlib
import datetime
import json
import os
import sqlite3
import threading
import uuid

import numpy as np

from keras_facemargin.errors import GalleryError
from keras_facemargin.inference.gallery_files import (
    UNIT_NORM_TOLERANCE, check_config, check_identity_name, check_probe, check_templates, gallery_kind,
    loads_bounded)
from keras_facemargin.utils.untrusted import plain_text, short_repr

__all__ = ["GalleryStore", "GALLERY_FORMAT", "STORE_VERSION", "DEFAULT_BUSY_TIMEOUT"]

GALLERY_FORMAT = "keras_facemargin.gallery"
STORE_VERSION = 2  # 1 was the whole-file .npz
DEFAULT_BUSY_TIMEOUT = 120.0
_SCHEMA = """
CREATE TABLE meta (key TEXT PRIMARY KEY, value);
CREATE TABLE identities (id INTEGER PRIMARY KEY, name TEXT NOT NULL UNIQUE, template BLOB NOT NULL,
                         num_images INTEGER NOT NULL, updated TEXT);
CREATE TABLE photos (id INTEGER PRIMARY KEY, identity_id INTEGER NOT NULL REFERENCES identities(id),
                     key TEXT, source TEXT NOT NULL, weight INTEGER NOT NULL DEFAULT 1, embedding BLOB NOT NULL,
                     added TEXT, UNIQUE (identity_id, key));
CREATE INDEX photos_by_identity ON photos(identity_id);
"""
_TABLES = {"meta", "identities", "photos"}
#: SQLite messages of a failed write (the transaction is rolled back; the file stays as it was).
_WRITE_FAULTS = ("disk i/o error", "database or disk is full", "readonly database", "file is too large")


def _now():
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


def _temp_name(path):
    return os.path.join(os.path.dirname(os.path.abspath(path)) or ".",
                        f".{os.path.basename(path)}.{os.getpid()}.{threading.get_ident()}.{uuid.uuid4().hex}.tmp")


def _fsync_dir(path):
    with contextlib.suppress(OSError):
        fd = os.open(os.path.dirname(os.path.abspath(path)) or ".", os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _blob(vector) -> bytes:
    return np.ascontiguousarray(vector, dtype="<f4").tobytes()


class GalleryStore:
    """A SQLite gallery file: validated reads, one transaction per change.

    Args:
        path: an existing gallery file (see :meth:`create` for a new one).
        busy_timeout: seconds a writer waits for another writer's transaction.

    Raises:
        FileNotFoundError: no such file. GalleryError: ``not_a_file`` or ``gallery_format``.

    Example::

        store = GalleryStore("people.db")
        store.remove("bob")
    """

    def __init__(self, path, busy_timeout: float = DEFAULT_BUSY_TIMEOUT):
        self.path = str(path)
        self.busy_timeout = float(busy_timeout)
        if gallery_kind(self.path) != "sqlite":
            raise GalleryError("legacy_gallery", "a legacy .npz gallery is read-only: convert it with `kfm gallery "
                               "import OLD.npz NEW.db` (or Gallery.load(old).save(new))", self.path)
        with self._connection() as conn:
            self._meta(conn)

    # ----------------------------------------------------------------- plumbing
    def _connect(self, path=None):
        try:
            conn = sqlite3.connect(path or self.path, timeout=self.busy_timeout, isolation_level=None)
        except sqlite3.Error as err:
            raise GalleryError("gallery_format", f"cannot open the SQLite gallery ({plain_text(str(err))})",
                               path or self.path) from None
        conn.execute("PRAGMA trusted_schema=OFF")
        conn.execute("PRAGMA cell_size_check=ON")
        return conn

    @contextlib.contextmanager
    def _connection(self):
        conn = self._connect()
        try:
            yield conn
        except sqlite3.Error as err:
            text = str(err).lower()
            if any(m in text for m in _WRITE_FAULTS):  # disk full, I/O error, read-only: the change was rolled back
                raise GalleryError("write_failed", f"cannot write the gallery ({type(err).__name__}: "
                                   f"{plain_text(str(err))}); the change was rolled back and the file is as it was",
                                   self.path) from None
            if "locked" in text or "busy" in text:
                raise GalleryError("gallery_busy", f"another writer held the gallery for longer than the busy "
                                   f"timeout ({plain_text(str(err))})", self.path) from None
            raise GalleryError("gallery_format", f"damaged or foreign SQLite gallery ({type(err).__name__}: "
                               f"{plain_text(str(err))})", self.path) from None
        finally:
            conn.close()

    @contextlib.contextmanager
    def transaction(self):
        """A connection inside ``BEGIN IMMEDIATE`` (committed on success, rolled back on an error).

        Example::

            with store.transaction() as conn:
                conn.execute("UPDATE meta SET value = ? WHERE key = 'source'", ("x",))
        """
        with self._connection() as conn:
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("BEGIN IMMEDIATE")
            try:
                yield conn
            except BaseException:
                if conn.in_transaction:  # SQLite has already rolled back after a full disk or an I/O error
                    with contextlib.suppress(sqlite3.Error):
                        conn.execute("ROLLBACK")
                raise
            conn.execute("COMMIT")

    def _meta(self, conn) -> dict:
        """The validated metadata (schema checked first)."""
        objects = conn.execute("SELECT type, name FROM sqlite_master").fetchall()
        tables = {name for kind, name in objects if kind == "table"}
        if not _TABLES <= tables:
            raise GalleryError("gallery_format", f"not a keras_facemargin gallery (a SQLite database without the "
                               f"tables {sorted(_TABLES - tables)})", self.path)
        code = [(kind, name) for kind, name in objects if kind in ("view", "trigger")]
        if code:
            raise GalleryError("gallery_format", f"a gallery holds no views or triggers; found {short_repr(code)}",
                               self.path)
        rows = conn.execute("SELECT key, value FROM meta LIMIT 64").fetchall()
        meta = dict(rows)
        if meta.get("format") != GALLERY_FORMAT:
            raise GalleryError("gallery_format", f"not a keras_facemargin gallery (format "
                               f"{short_repr(meta.get('format'))})", self.path)
        version = meta.get("version")
        if version != STORE_VERSION:
            raise GalleryError("gallery_format", f"gallery format version {short_repr(version)}; this package reads "
                               f"version {STORE_VERSION}", self.path)
        if "config" not in meta:
            raise GalleryError("gallery_format", "the gallery's model configuration is missing", self.path)
        config = check_config(loads_bounded(meta["config"], "the configuration", self.path), self.path)
        dim = config["embedding_dim"]
        probe = meta.get("probe")
        if not isinstance(probe, bytes) or len(probe) != 4 * dim:
            raise GalleryError("gallery_format", f"the model fingerprint (probe) must be {4 * dim} bytes of float32, "
                               f"got {type(probe).__name__} of {len(probe) if isinstance(probe, bytes) else '?'}",
                               self.path)
        skipped = loads_bounded(meta.get("skipped", "[]"), "the skipped list", self.path)
        return {"config": config, "probe": check_probe(np.frombuffer(probe, "<f4"), dim, self.path),
                "created": meta.get("created") if isinstance(meta.get("created"), str) else None,
                "source": meta.get("source") if isinstance(meta.get("source"), str) else None,
                "skipped": skipped if isinstance(skipped, list) else []}

    def _vector(self, blob, dim, what):
        if not isinstance(blob, bytes) or len(blob) != 4 * dim:
            raise GalleryError("gallery_format", f"{what} must be {4 * dim} bytes of float32, got "
                               f"{len(blob) if isinstance(blob, bytes) else type(blob).__name__}", self.path)
        return np.frombuffer(blob, "<f4")

    # ------------------------------------------------------------------ create
    @classmethod
    def create(cls, path, config, probe, source=None, skipped=(), busy_timeout: float = DEFAULT_BUSY_TIMEOUT):
        """The gallery at ``path``, created empty with this metadata if there is none (never overwritten).

        The new database is written whole to a temporary file and hard-linked to ``path``: of several
        processes creating it at once, one wins and the others open it.

        Raises:
            GalleryError: ``path`` is a directory, another kind of file, or a legacy ``.npz``.
        """
        path = str(path)
        if not os.path.lexists(path):
            tmp = cls._write_new(path, config, probe, source, skipped, [])
            try:
                os.link(tmp, path)
            except FileExistsError:
                pass
            except OSError:  # a file system without hard links: create-if-absent by rename (racier)
                if not os.path.lexists(path):
                    os.replace(tmp, path)
            finally:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(tmp)
            _fsync_dir(path)
        return cls(path, busy_timeout)

    @staticmethod
    def _write_new(path, config, probe, source, skipped, identities):
        """A complete gallery in a new temporary file beside ``path``; returns the temporary path.

        ``identities``: ``[(name, [(key, source, weight, embedding), ...])]``.
        """
        if os.path.lexists(f"{path}-wal"):
            raise GalleryError("gallery_format", f"{path}-wal is left from a deleted database; remove it (and "
                               f"{os.path.basename(path)}-shm) before creating a gallery here", path)
        config = check_config(json.loads(json.dumps(config)), path)
        probe = check_probe(np.asarray(probe, np.float32), config["embedding_dim"], path)
        tmp = _temp_name(path)
        conn = sqlite3.connect(tmp, isolation_level=None)
        try:
            conn.executescript(_SCHEMA)
            conn.execute("BEGIN")
            conn.executemany("INSERT INTO meta VALUES (?, ?)", [
                ("format", GALLERY_FORMAT), ("version", STORE_VERSION), ("config", json.dumps(config, sort_keys=True)),
                ("probe", _blob(probe)), ("created", _now()), ("source", None if source is None else str(source)),
                ("skipped", json.dumps(list(skipped)))])
            for name, photos in identities:
                _insert_identity(conn, name, photos, config["embedding_dim"], path)
            conn.execute("COMMIT")
            conn.execute("PRAGMA journal_mode=WAL")
        except BaseException:
            conn.close()
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
            raise
        conn.close()
        fd = os.open(tmp, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        return tmp

    @classmethod
    def write_whole(cls, path, config, probe, identities, source=None, skipped=(),
                    busy_timeout: float = DEFAULT_BUSY_TIMEOUT) -> "GalleryStore":
        """Make ``path`` a gallery of exactly ``identities`` (``[(name, [(key, source, weight, embedding)])]``).

        An existing SQLite gallery is rewritten in one transaction (its readers and writers stay
        valid); any other regular file (a legacy ``.npz``) is replaced atomically; a missing path is
        created as in :meth:`create`.

        Raises:
            GalleryError: ``not_a_file`` (a directory, FIFO, device), or ``gallery_format`` (a SQLite
                database that is not a gallery is never overwritten).
        """
        path = str(path)
        if os.path.lexists(path) and os.path.exists(path):
            try:
                kind = gallery_kind(path)
            except GalleryError as err:
                if err.reason == "not_a_file":
                    raise
                kind = "other"
            if kind == "sqlite":
                store = cls(path, busy_timeout)
                store.replace_all(config, probe, identities, source, skipped)
                return store
            tmp = cls._write_new(path, config, probe, source, skipped, identities)
            os.replace(tmp, path)
            _fsync_dir(path)
            return cls(path, busy_timeout)
        tmp = cls._write_new(path, config, probe, source, skipped, identities)
        try:
            os.link(tmp, path)
        except FileExistsError:  # created meanwhile: rewrite it transactionally
            os.unlink(tmp)
            return cls.write_whole(path, config, probe, identities, source, skipped, busy_timeout)
        except OSError:
            os.replace(tmp, path)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        _fsync_dir(path)
        return cls(path, busy_timeout)

    # ------------------------------------------------------------------ writes
    def replace_all(self, config, probe, identities, source=None, skipped=()) -> None:
        """Replace the metadata and every identity in one transaction (see :meth:`write_whole`)."""
        config = check_config(json.loads(json.dumps(config)), self.path)
        probe = check_probe(np.asarray(probe, np.float32), config["embedding_dim"], self.path)
        with self.transaction() as conn:
            self._meta(conn)
            conn.execute("DELETE FROM photos")
            conn.execute("DELETE FROM identities")
            conn.executemany("INSERT OR REPLACE INTO meta VALUES (?, ?)", [
                ("config", json.dumps(config, sort_keys=True)), ("probe", _blob(probe)),
                ("source", None if source is None else str(source)), ("skipped", json.dumps(list(skipped)))])
            for name, photos in identities:
                _insert_identity(conn, name, photos, config["embedding_dim"], self.path)

    def add_photos(self, identity, photos, check=None) -> dict:
        """Add (or replace, by key) photo embeddings of ``identity`` and recompute its template.

        Args:
            identity: the name (created if new).
            photos: ``[(key, source, weight, embedding)]``; embeddings finite, unit norm, of the
                gallery's dimension.
            check: called with the validated metadata inside the transaction (e.g. a model check
                that raises ``GalleryError``).

        Returns:
            ``{"identity", "num_images", "identities", "added"}``.
        """
        check_identity_name(identity)
        with self.transaction() as conn:
            meta = self._meta(conn)
            if check is not None:
                check(meta)
            dim = meta["config"]["embedding_dim"]
            row = conn.execute("SELECT id FROM identities WHERE name = ?", (identity,)).fetchone()
            if row is None:
                ident = _insert_identity(conn, identity, photos, dim, self.path)
            else:
                ident = row[0]
                _insert_photos(conn, ident, photos, dim, self.path)
                self._recompute(conn, ident, dim)
            num = conn.execute("SELECT num_images FROM identities WHERE id = ?", (ident,)).fetchone()[0]
            total = conn.execute("SELECT count(*) FROM identities").fetchone()[0]
        return {"identity": identity, "num_images": int(num), "identities": int(total), "added": len(photos)}

    def remove(self, identity, photos=None) -> dict:
        """Remove ``identity``, or only the photos ``[(key, source)]`` (a row matches either).

        An identity left without photos is removed.

        Returns:
            ``{"identity", "removed_photos", "num_images" (0 when gone), "identities", "unmatched"}``
            (``unmatched``: the sources of ``photos`` that matched no row).

        Raises:
            GalleryError: ``unknown_identity``.
        """
        with self.transaction() as conn:
            meta = self._meta(conn)
            row = conn.execute("SELECT id FROM identities WHERE name = ?", (identity,)).fetchone()
            if row is None:
                total = conn.execute("SELECT count(*) FROM identities").fetchone()[0]
                raise GalleryError("unknown_identity", f"no identity {plain_text(identity)!r} in the gallery (it "
                                   f"holds {total}; see `kfm gallery list {self.path}`)", self.path)
            ident, unmatched = row[0], []
            if photos is None:
                removed = conn.execute("DELETE FROM photos WHERE identity_id = ?", (ident,)).rowcount
                conn.execute("DELETE FROM identities WHERE id = ?", (ident,))
            else:
                removed = 0
                for key, source in photos:
                    n = conn.execute("DELETE FROM photos WHERE identity_id = ? AND (key = ? OR source = ?)",
                                     (ident, key, None if source is None else str(source))).rowcount
                    removed += n
                    if not n:
                        unmatched.append(str(source if source is not None else key))
                self._recompute(conn, ident, meta["config"]["embedding_dim"])
            left = conn.execute("SELECT num_images FROM identities WHERE id = ?", (ident,)).fetchone()
            total = conn.execute("SELECT count(*) FROM identities").fetchone()[0]
        return {"identity": identity, "removed_photos": int(removed), "num_images": int(left[0]) if left else 0,
                "identities": int(total), "unmatched": unmatched}

    def _recompute(self, conn, ident, dim):
        rows = conn.execute("SELECT weight, embedding FROM photos WHERE identity_id = ?", (ident,)).fetchall()
        if not rows:
            conn.execute("DELETE FROM identities WHERE id = ?", (ident,))
            return
        template, count = _template([(w, self._vector(e, dim, "a photo embedding")) for w, e in rows], self.path)
        conn.execute("UPDATE identities SET template = ?, num_images = ?, updated = ? WHERE id = ?",
                     (_blob(template), count, _now(), ident))

    # ------------------------------------------------------------------- reads
    def metadata(self) -> dict:
        """The validated metadata: ``{"config", "probe", "created", "source", "skipped"}``."""
        with self._connection() as conn:
            return self._meta(conn)

    def read(self) -> dict:
        """Every identity, validated: ``{"names", "embeddings" (n, d) float32, "counts", "config", "probe", ...}``.

        Raises:
            GalleryError: ``gallery_format`` (see :mod:`keras_facemargin.inference.gallery_files`).
        """
        with self._connection() as conn:
            conn.execute("BEGIN")  # one snapshot for the metadata and the rows
            meta = self._meta(conn)
            dim = meta["config"]["embedding_dim"]
            n = conn.execute("SELECT count(*) FROM identities").fetchone()[0]
            names, counts = [], np.empty(n, np.int64)
            embeddings = np.empty((n, dim), np.float32)
            cur = conn.execute("SELECT name, template, num_images FROM identities ORDER BY name")
            i = 0
            while True:
                batch = cur.fetchmany(4096)
                if not batch:
                    break
                for name, blob, count in batch:
                    if i >= n:
                        raise GalleryError("gallery_format", "more identity rows than counted", self.path)
                    if isinstance(count, bool) or not isinstance(count, int) or not 0 < count < 2 ** 62:
                        raise GalleryError("gallery_format", f"identity {plain_text(name)!r} has image count "
                                           f"{short_repr(count)}, expected a positive integer", self.path)
                    embeddings[i] = self._vector(blob, dim, f"the template of {plain_text(name)!r}")
                    names.append(name)
                    counts[i] = count
                    i += 1
            if i != n:
                raise GalleryError("gallery_format", f"{i} identity rows, {n} counted", self.path)
            bad = conn.execute(
                "SELECT i.name, i.num_images, p.w FROM identities i LEFT JOIN (SELECT identity_id, sum(weight) AS w "
                "FROM photos GROUP BY identity_id) p ON p.identity_id = i.id "
                "WHERE p.w IS NULL OR p.w != i.num_images LIMIT 1").fetchone()
            if bad is not None:
                raise GalleryError("gallery_format", f"identity {plain_text(bad[0])!r} counts {short_repr(bad[1])} "
                                   f"images but its photos weigh {short_repr(bad[2])}", self.path)
            conn.execute("COMMIT")
        check_templates(names, embeddings, counts, dim, self.path)
        return {"names": names, "embeddings": embeddings, "counts": counts, **meta}

    def photos(self, identity=None) -> list:
        """``[{"identity", "key", "source", "weight", "added"}]`` (one identity, or all)."""
        sql = ("SELECT i.name, p.key, p.source, p.weight, p.added FROM photos p JOIN identities i "
               "ON i.id = p.identity_id")
        with self._connection() as conn:
            self._meta(conn)
            rows = (conn.execute(sql + " WHERE i.name = ? ORDER BY p.id", (identity,)) if identity is not None
                    else conn.execute(sql + " ORDER BY i.name, p.id")).fetchall()
        return [dict(zip(("identity", "key", "source", "weight", "added"), r)) for r in rows]


def _template(rows, path):
    """``(unit template float64, total weight)`` from ``[(weight, unit embedding)]``."""
    total, count = None, 0
    for w, e in rows:
        if isinstance(w, bool) or not isinstance(w, (int, np.integer)) or w < 1:
            raise GalleryError("gallery_format", f"photo weight {short_repr(w)}, expected a positive integer", path)
        e = np.asarray(e, np.float64)
        if not np.all(np.isfinite(e)) or abs(np.linalg.norm(e) - 1.0) > UNIT_NORM_TOLERANCE:
            raise GalleryError("gallery_format", "a photo embedding is not finite and unit norm", path)
        total = e * int(w) if total is None else total + e * int(w)
        count += int(w)
    norm = np.linalg.norm(total)
    if not norm > 1e-6:
        raise GalleryError("gallery_format", "the photo embeddings of an identity cancel out (zero mean)", path)
    return total / norm, count


def _insert_photos(conn, ident, photos, dim, path):
    now = _now()
    rows = []
    for key, source, weight, emb in photos:
        emb = np.asarray(emb, np.float64).reshape(-1)
        if emb.shape != (dim,):
            raise ValueError(f"a photo embedding of dimension {emb.shape[0]}, the gallery's is {dim}")
        _template([(weight, emb)], path)  # finite and unit norm
        rows.append((ident, key, str(source), int(weight), _blob(emb), now))
    conn.executemany("INSERT INTO photos (identity_id, key, source, weight, embedding, added) VALUES (?, ?, ?, ?, ?, ?)"
                     " ON CONFLICT (identity_id, key) DO UPDATE SET source = excluded.source, "
                     "weight = excluded.weight, embedding = excluded.embedding, added = excluded.added", rows)


def _insert_identity(conn, name, photos, dim, path) -> int:
    check_identity_name(name)
    if not photos:
        raise ValueError(f"identity {plain_text(name)!r} has no photo")
    ident = conn.execute("INSERT INTO identities (name, template, num_images, updated) VALUES (?, ?, 0, ?)",
                         (name, b"", _now())).lastrowid
    _insert_photos(conn, ident, photos, dim, path)
    rows = conn.execute("SELECT weight, embedding FROM photos WHERE identity_id = ?", (ident,)).fetchall()
    template, count = _template([(w, np.frombuffer(e, "<f4")) for w, e in rows], path)
    conn.execute("UPDATE identities SET template = ?, num_images = ? WHERE id = ?", (_blob(template), count, ident))
    return ident
