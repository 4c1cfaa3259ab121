"""The one restricted unpickler for untrusted pickles, configured per file format by a `PicklePolicy`.

A pickle can run any code when it is loaded. A reader of a pickled format (insightface ``.bin``
verification sets, ``torch.save`` ``.pth`` files) loads one in two steps, both bounded by the
pickle's size:

1. `scan_pickle` walks the opcodes with ``pickletools`` (nothing is built or called) and refuses
   frames longer than the data left, the opcodes of ``policy.refused_opcodes``, ``GLOBAL`` names
   outside ``policy.admitted``, integers at or above ``policy.max_int`` and, with
   ``policy.check_memo``, memo indices that are not the next free slot or a slot already set.
2. `RestrictedUnpickler` unpickles with the pure-Python unpickler (its memo is a dict: a huge memo
   index allocates nothing). Every global resolves through ``policy.admitted`` to a stand-in of
   the format's module, never to the real object; REDUCE calls only those stand-ins (only
   ``policy.callables`` when given) with a tuple of arguments; BUILD sets a state only on objects
   of ``policy.build_types``; dict items are set only on dicts, with string or integer keys
   (crafted colliding keys, e.g. tuples, would make building a dict quadratic); persistent ids
   are refused unless a subclass resolves them.

Each refusal is described by a `Refusal` and raised as the format's own typed error, built by
``policy.error(source, refusal)`` (so its message names the file, in the format's words).

Example::

    policy = PicklePolicy(admitted={("collections", "OrderedDict"): my_ordered_dict},
                          error=lambda source, r: MyFormatError(f"{source}: {r.detail}"),
                          refused_opcodes=frozenset(["INST", "OBJ", "NEWOBJ"]))
    scan_pickle(data, policy, "weights.pkl")
    obj = RestrictedUnpickler(data, policy, "weights.pkl").load()
"""

from __future__ import annotations

import io
import pickle
import pickletools
from dataclasses import dataclass
from typing import Callable, Mapping

from keras_facemargin.utils.untrusted import plain_text, short_repr

__all__ = ["PicklePolicy", "Refusal", "RestrictedUnpickler", "plain_dict_key", "scan_pickle"]

_MAX_KEY_INT = 1 << 64
_PUT_OPS = frozenset(["PUT", "BINPUT", "LONG_BINPUT"])
_GET_OPS = frozenset(["GET", "BINGET", "LONG_BINGET"])
_UNSAFE_KINDS = frozenset(["opcode", "global", "structure"])


@dataclass(frozen=True)
class Refusal:
    """What the scan or the unpickler refused (turned into the format's error by ``policy.error``).

    Attributes:
        kind: ``"opcode"`` (a refused opcode), ``"global"`` (a global outside the allowlist),
            ``"int"`` (an integer over ``max_int``), ``"memo"`` (a memo index out of range),
            ``"unreadable"`` (not a pickle) or ``"structure"`` (a call, state, dict item or
            persistent id the unpickler does not admit).
        detail: a sentence saying what was refused (without the file name).
        pos: byte offset in the pickle (refusals of the scan), else None.
        value: the opcode name, the ``(module, name)`` global, the integer or the exception.

    Example::

        Refusal("opcode", "pickle opcode INST is not admitted", 12, "INST").unsafe     # True
    """

    kind: str
    detail: str
    pos: int | None = None
    value: object = None

    @property
    def unsafe(self) -> bool:
        """True when the pickle asks for something not admitted (an opcode, a global, a call, a
        state, a dict key); False for malformed or over-limit data."""
        return self.kind in _UNSAFE_KINDS


@dataclass(frozen=True)
class PicklePolicy:
    """What a pickled format admits.

    Args:
        admitted: ``{(module, name): stand-in}``: the only globals, each resolved to the given
            object (a validating stand-in of the format's module).
        error: ``error(source, refusal) -> Exception``: the format's typed error for a `Refusal`
            (it names the file).
        refused_opcodes: opcode names (``pickletools``) the format never needs.
        max_int: integers whose absolute value reaches this are refused by the scan (None: any).
        check_memo: refuse memo indices that are not the next free slot or a slot already set.
        callables: the stand-ins REDUCE may call (None: any admitted global).
        build_types: the exact types BUILD may set a state on (their ``__setstate__``; a type
            without one ignores the state); BUILD of anything else is refused.
        encoding: how Python 2 ``str`` are decoded (``"bytes"`` keeps them as bytes).

    Example::

        PicklePolicy(admitted={("numpy", "dtype"): _Dtype}, error=_bin_error, check_memo=True)
    """

    admitted: Mapping
    error: Callable
    refused_opcodes: frozenset = frozenset()
    max_int: int | None = None
    check_memo: bool = False
    callables: tuple | None = None
    build_types: tuple = ()
    encoding: str = "ASCII"

    @property
    def allowlist(self) -> tuple:
        """The admitted globals as sorted ``"module.name"`` strings (for documentation and tests)."""
        return tuple(sorted(f"{m}.{n}" for m, n in self.admitted))


def plain_dict_key(key) -> bool:
    """Whether `key` may be a key of an unpickled dict: a string (hashed with a per-process secret)
    or an integer below 2**64 (they collide at most a few at a time). Tuples, floats, frozensets
    ... could be crafted to collide and make building the dict quadratic.

    Example::

        plain_dict_key("conv1.weight"), plain_dict_key((-1, -2))      # True, False
    """
    return type(key) is str or (type(key) in (int, bool) and -_MAX_KEY_INT < key < _MAX_KEY_INT)


def _first_refusal(data, policy):
    """The first `Refusal` of the opcodes of `data` under `policy`, or None."""
    memo_size = 0
    try:
        for op, arg, pos in pickletools.genops(data):
            name = op.name
            if name in policy.refused_opcodes:
                return Refusal("opcode", f"pickle opcode {name} is not admitted", pos, name)
            if name == "FRAME" and arg > len(data) - pos - 9:  # the pure-Python unpickler would read less
                err = pickle.UnpicklingError("pickle data was truncated")
                return Refusal("unreadable", f"not a readable pickle (UnpicklingError: {err})", pos, err)
            if name == "GLOBAL":
                module, _, qualname = str(arg).partition(" ")
                if (module, qualname) not in policy.admitted:
                    return Refusal("global", f"refusing to load {plain_text(module)}.{plain_text(qualname)}", pos,
                                   (module, qualname))
            elif policy.max_int is not None and isinstance(arg, int) and not isinstance(arg, bool) \
                    and abs(arg) >= policy.max_int:
                return Refusal("int", f"pickle integer {short_repr(arg)} is above the limit", pos, arg)
            if policy.check_memo:
                if name in _PUT_OPS:
                    if not (isinstance(arg, int) and 0 <= arg <= memo_size):
                        return Refusal("memo", f"pickle memo index {arg} is out of range (expected at most "
                                       f"{memo_size}, the next free slot)", pos, arg)
                    memo_size += arg == memo_size
                elif name == "MEMOIZE":
                    memo_size += 1
                elif name in _GET_OPS and not (isinstance(arg, int) and 0 <= arg < memo_size):
                    return Refusal("memo", f"pickle memo reference {arg} to an unset slot (expected < "
                                   f"{memo_size})", pos, arg)
            if name == "STOP":
                break
    except Exception as e:  # noqa: BLE001 - pickletools raises ValueError and friends on junk
        return Refusal("unreadable", f"not a readable pickle ({type(e).__name__}: {short_repr(str(e))})", None, e)
    return None


def scan_pickle(data, policy, source):
    """Walk the opcodes of `data` before it is unpickled (pure Python, bounded by its size).

    Args:
        data: the pickle's bytes.
        policy: the format's `PicklePolicy`.
        source: the file name, for the error.

    Raises:
        whatever ``policy.error(source, refusal)`` returns, for the first refusal.

    Example::

        scan_pickle(open("lfw.bin", "rb").read(), BIN_POLICY, "lfw.bin")
    """
    refusal = _first_refusal(data, policy)
    if refusal is not None:
        raise policy.error(source, refusal)


class RestrictedUnpickler(pickle._Unpickler):
    """Pure-Python unpickler of already scanned bytes that admits only what its policy says.

    Subclasses may resolve persistent ids (`persistent_load`), map a stand-in to another object
    when the pickle names it (`resolve`) and admit that object as a callable (`admits_call`).

    Args:
        data: the pickle's bytes (passed through `scan_pickle` first).
        policy: the format's `PicklePolicy`.
        source: the file name, for errors.

    Example::

        obj = RestrictedUnpickler(data, policy, "x.bin").load()
    """

    dispatch = dict(pickle._Unpickler.dispatch)

    def __init__(self, data, policy, source):
        super().__init__(io.BytesIO(data), encoding=policy.encoding)
        self.policy, self.source = policy, source

    def refuse(self, detail, kind="structure", value=None):
        """The format's error for a refusal of the unpickler (to be raised)."""
        return self.policy.error(self.source, Refusal(kind, detail, None, value))

    def find_class(self, module, name):
        if not isinstance(module, str) or not isinstance(name, str) or (module, name) not in self.policy.admitted:
            raise self.refuse(f"refusing to load {plain_text(module)}.{plain_text(name)}", "global", (module, name))
        return self.resolve(self.policy.admitted[(module, name)])

    def resolve(self, target):
        """The object that stands for the admitted stand-in `target` in this unpickler."""
        return target

    def admits_call(self, func):
        """Whether REDUCE may call `func` (a resolved global)."""
        return self.policy.callables is None or func in self.policy.callables

    def persistent_load(self, pid):
        raise self.refuse("persistent ids are not admitted")

    def _set(self, target, key, value):
        if not isinstance(target, dict):
            raise self.refuse(f"SETITEM on a {type(target).__name__}, not a dict.")
        if not plain_dict_key(key):
            raise self.refuse(f"dict key {short_repr(key)} of type {type(key).__name__}; only string and integer "
                              "keys are admitted.")
        target[key] = value

    def load_setitem(self):
        value = self.stack.pop()
        key = self.stack.pop()
        self._set(self.stack[-1], key, value)

    def load_setitems(self):
        items = self.pop_mark()
        target = self.stack[-1]
        for i in range(0, len(items) - 1, 2):
            self._set(target, items[i], items[i + 1])
        if len(items) % 2:
            raise self.refuse("SETITEMS with an odd number of items.")

    def load_dict(self):
        items = self.pop_mark()
        out = {}
        for i in range(0, len(items) - 1, 2):
            self._set(out, items[i], items[i + 1])
        self.append(out)

    def load_build(self):
        state = self.stack.pop()
        inst = self.stack[-1]
        if type(inst) not in self.policy.build_types:
            admitted = ", ".join(t.__name__ for t in self.policy.build_types) or "nothing"
            raise self.refuse(f"BUILD (setting the state) of a {type(inst).__name__}; only {admitted} carries a "
                              f"state, {short_repr(state)}.")
        setstate = getattr(inst, "__setstate__", None)
        if setstate is not None:
            setstate(state)

    def load_reduce(self):
        args = self.stack.pop()
        func = self.stack[-1]
        if not self.admits_call(func) or type(args) is not tuple:
            raise self.refuse(f"REDUCE of {short_repr(func)} with {type(args).__name__} arguments.")
        self.stack[-1] = func(*args)

    dispatch[pickle.SETITEM[0]] = load_setitem
    dispatch[pickle.SETITEMS[0]] = load_setitems
    dispatch[pickle.DICT[0]] = load_dict
    dispatch[pickle.BUILD[0]] = load_build
    dispatch[pickle.REDUCE[0]] = load_reduce
