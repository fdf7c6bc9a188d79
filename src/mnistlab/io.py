"""The bottom layer every other module writes and reads files through.

Two promises live here: a reader sees either the old file or the whole new one (temp file +
``os.replace``, as timm's checkpoint saver does), and nothing the tool wrote is used again
without its digest checking out. Binary files (checkpoints, feature caches, deformed sets) are
one self-verifying container: a magic line, the payload's SHA-256, then the payload. JSON files
carry the digest of their canonical form under the key ``"_sha256"``, so they stay readable
while a flipped bit or a truncated write is caught on read. (A sidecar file could disagree with
its data after a crash between two renames; one file cannot.)
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import tempfile
from pathlib import Path
from typing import Any

from mnistlab.errors import CorruptFileError, MnistlabError

MAGIC = b"MNISTLAB-SHA256\n"
DIGEST_KEY = "_sha256"
_UMASK = os.umask(0)
os.umask(_UMASK)


def cache_dir() -> Path:
    """The tool cache: ``MNISTLAB_CACHE`` or ``~/.cache/mnistlab``."""
    return Path(os.environ.get("MNISTLAB_CACHE", Path.home() / ".cache" / "mnistlab"))


def atomic_write_bytes(path: Path | str, data: bytes) -> Path:
    """Write ``data`` so that readers see either the old file or the whole new one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, 0o666 & ~_UMASK)  # mkstemp makes 0600; results are meant to be shared
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def atomic_write_text(path: Path | str, text: str) -> Path:
    return atomic_write_bytes(path, text.encode("utf-8"))


# ------------------------------------------------------------------------ binary containers


def pack(payload: bytes) -> bytes:
    return MAGIC + hashlib.sha256(payload).hexdigest().encode("ascii") + b"\n" + payload


def unpack(data: bytes, name: str) -> bytes:
    """The payload of a container, or :class:`CorruptFileError` naming ``name``."""
    head = len(MAGIC) + 65
    if not data.startswith(MAGIC) or len(data) < head or data[head - 1 : head] != b"\n":
        raise CorruptFileError(name, "not an mnistlab file or its header is damaged")
    try:
        want = data[len(MAGIC) : head - 1].decode("ascii")
    except UnicodeDecodeError:
        raise CorruptFileError(name, "damaged digest header") from None
    payload = data[head:]
    if hashlib.sha256(payload).hexdigest() != want:
        raise CorruptFileError(name, "SHA-256 mismatch (truncated or altered)")
    return payload


def write_verified(path: Path | str, payload: bytes) -> Path:
    return atomic_write_bytes(path, pack(payload))


def read_verified(path: Path | str) -> bytes:
    path = Path(path)
    return unpack(path.read_bytes(), str(path))


# ------------------------------------------------------------------------ JSON


def _json_default(obj: Any) -> Any:
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return dataclasses.asdict(obj)
    if isinstance(obj, Path):
        return str(obj)
    if hasattr(obj, "tolist"):  # numpy / torch scalars and arrays
        return obj.tolist()
    if isinstance(obj, set | frozenset):
        return sorted(obj)
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


def plain(obj: Any) -> Any:
    """``obj`` as JSON would give it back (tuples → lists, dataclasses → dicts, …)."""
    return json.loads(json.dumps(obj, default=_json_default))


def _digest(obj: Any) -> str:
    canonical = json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()


def write_json(path: Path | str, obj: dict[str, Any]) -> Path:
    """A dict as indented JSON with the digest of its content under ``"_sha256"``."""
    body = plain(obj)
    if not isinstance(body, dict):
        raise TypeError("write_json stores dicts only (wrap lists in a dict)")
    body.pop(DIGEST_KEY, None)
    body[DIGEST_KEY] = _digest(body)
    return atomic_write_text(path, json.dumps(body, indent=2, sort_keys=True) + "\n")


def read_json(path: Path | str) -> dict[str, Any]:
    """A dict written by :func:`write_json`, verified; anything else is CorruptFileError."""
    path = Path(path)
    try:
        obj = json.loads(path.read_bytes().decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CorruptFileError(str(path), f"not valid JSON ({type(exc).__name__})") from None
    if not isinstance(obj, dict) or not isinstance(obj.get(DIGEST_KEY), str):
        raise CorruptFileError(str(path), "no mnistlab digest (not written by this version?)")
    want = obj.pop(DIGEST_KEY)
    if _digest(obj) != want:
        raise CorruptFileError(str(path), "SHA-256 mismatch (truncated or altered)")
    return obj


def finite(value: float, what: str, *, lo: float = -math.inf, hi: float = math.inf) -> float:
    """``value`` if it is a finite number in [lo, hi], else a MnistlabError naming ``what``."""
    if not isinstance(value, int | float) or not math.isfinite(value) or not lo <= value <= hi:
        raise MnistlabError(f"{what} must be a finite number in [{lo:g}, {hi:g}], got {value!r}")
    return float(value)
