"""Writes of the routes file: validated, compare-and-swap on `revision` and content, atomic, one writer at a time.

Every change goes through :func:`apply`: the new content is validated with the same parser the workers use
(refused with its ConfigError message, the file untouched), the file's current revision must equal the one the
caller read (else :class:`RevisionConflict`, carrying the current revision) and, when the caller names the
:func:`digest` of the text it read (the admin API's ETag, :func:`etag`, carries it), so must its content (else
:class:`ContentConflict`: a hand edit that kept ``revision:`` is never overwritten), the new file gets
``revision = expected + 1`` and replaces the old one atomically (temp file in the same directory, fsync,
``os.replace``, fsync of the directory): a reader sees the old file or the new one, never a mix. An exclusive
``fcntl.flock`` on a lock file next to the routes file (``.<name>.lock``) serialises writers across processes
(several workers, the CLI and the admin API), so a check and its write can never interleave with another's.

Comments and layout of YAML text are kept: only the top-level ``revision:`` line (and, for
:func:`set_default_version`, the model's ``default_version:`` line; for :func:`splice_models`, which rollouts
use, the changed models' blocks) are edited in place, and the edited text is re-parsed and compared with the
intended content; when an in-place edit cannot be proven equal, the content is written with ``yaml.safe_dump``
instead.
"""

from __future__ import annotations

import contextlib
import copy
import fcntl
import hashlib
import os
import re
import stat
import tempfile
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import yaml

from gateway.errors import ConfigError, ContentConflict, LockTimeout, RevisionConflict, UnknownModel
from gateway.routes.schema import parse_routes

LOCK_TIMEOUT_S = 10.0
_REVISION_LINE = re.compile(r"^revision[ \t]*:[^\n#]*?(?P<comment>[ \t]+#[^\n]*)?$", re.MULTILINE)
_TOP_KEY = re.compile(r"^[^\s#]")


def lock_path(path: Path) -> Path:
    path = _real(path)
    return path.with_name(f".{path.name}.lock")


def _real(path: Path) -> Path:
    """Through symlinks: a symlinked routes file keeps its link; the target is what gets replaced (and locked)."""
    return Path(os.path.realpath(path))


@contextlib.contextmanager
def locked(path: Path, timeout_s: float = LOCK_TIMEOUT_S) -> Iterator[None]:
    """Hold the routes file's exclusive writer lock (an flock on ``.<name>.lock``, kept between writes)."""
    fd = os.open(lock_path(path), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    try:
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    raise LockTimeout(f"{path}: another writer held {lock_path(path).name} for more than "
                                      f"{timeout_s:g} s") from None
                time.sleep(0.005)
        try:
            yield
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)


def read(path: Path) -> tuple[str, int]:
    """The file's text and its revision (0 when it names none, as the parser does)."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read routes file: {exc.strerror}") from exc
    return text, _revision_of(_load_yaml(text, str(path)), path)


def digest(text: str) -> str:
    """A short digest of a routes document's text (64 bits of SHA-256: it tells edits apart, it guards nothing)."""
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


def etag(text: str, revision: int) -> str:
    """``<revision>-<digest>``: what a reader quotes back in If-Match, so that a write checks both."""
    return f"{revision}-{digest(text)}"


def check_current(where: object, text: str, current: int, expected_revision: int,
                  expected_digest: str | None) -> None:
    """The compare of every compare-and-swap (both stores): the revision read, and the content read when given."""
    if current != expected_revision:
        raise RevisionConflict(where, expected_revision, current)
    if expected_digest is not None and digest(text) != expected_digest:
        raise ContentConflict(where, current)


def prepare(routes: str | Mapping[str, Any], expected_revision: int, source: str, *,
            environ: Mapping[str, str] | None = None) -> str:
    """The text a compare-and-swap from ``expected_revision`` writes: ``routes`` (YAML/JSON text or a mapping)
    with ``revision = expected_revision + 1``, validated exactly as every worker will load it (ConfigError).
    Every store writes through this (the file's :func:`apply`, etcd's transaction)."""
    if isinstance(expected_revision, bool) or not isinstance(expected_revision, int) or expected_revision < 0:
        raise ValueError(f"expected_revision must be an integer >= 0, got {expected_revision!r}")
    text = _with_revision(routes, expected_revision + 1, source)
    parse_routes(_load_yaml(text, source, exact=True), source, os.environ if environ is None else environ)
    return text


def apply(path: Path, routes: str | Mapping[str, Any], expected_revision: int, *,
          expected_digest: str | None = None, lock_timeout_s: float = LOCK_TIMEOUT_S,
          environ: Mapping[str, str] | None = None) -> int:
    """Replace the routes file with ``routes`` (YAML/JSON text or a mapping) if it is valid and the file is still
    at ``expected_revision`` (and, when given, its text still has ``expected_digest``); return the new revision
    (``expected_revision + 1``). Any ``revision`` in ``routes`` is replaced. Raises ConfigError (invalid),
    RevisionConflict (ContentConflict) or LockTimeout; nothing is written then."""
    path = _real(path)
    text = prepare(routes, expected_revision, str(path), environ=environ)
    with locked(path, lock_timeout_s):
        now, current = read(path)
        check_current(path, now, current, expected_revision, expected_digest)
        atomic_write(path, text)
    return expected_revision + 1


def set_default_version(path: Path, model: str, version: str | int, expected_revision: int, *,
                        expected_digest: str | None = None, lock_timeout_s: float = LOCK_TIMEOUT_S,
                        environ: Mapping[str, str] | None = None) -> int:
    """The instant switch: ``models.<model>.default_version = version``, applied with :func:`apply` (validated,
    compare-and-swap, atomic). Raises UnknownModel, ConfigError (e.g. a version not listed), RevisionConflict."""
    path = _real(path)
    text, current = read(path)
    check_current(path, text, current, expected_revision, expected_digest)  # fail fast; apply checks again
    # The edit is made to the text read: apply must find exactly that text, or a change made meanwhile is lost.
    return apply(path, with_default_version(text, model, version, str(path)), expected_revision,
                 expected_digest=digest(text), lock_timeout_s=lock_timeout_s, environ=environ)


def with_default_version(text: str, model: str, version: str | int, source: str) -> str | dict[str, Any]:
    """``text`` with ``models.<model>.default_version = version``: the one line edited in place when that is
    provably the same document, else the whole mapping. Raises UnknownModel, ConfigError (an experiment decides)."""
    raw = _load_yaml(text, source)
    models = raw.get("models") if isinstance(raw, dict) else None
    if not isinstance(models, dict) or not isinstance(models.get(model), dict):
        raise UnknownModel(model)
    if models[model].get("experiment") is not None:
        raise ConfigError(f"{source}: models.{model}: has an experiment: its variants, not default_version, decide "
                          "where requests go, so switching the default would not move traffic; edit the "
                          "experiment instead")
    value: str | int = version
    if isinstance(version, str) and version.isascii() and version.isdigit():
        value = int(version)
    intended = copy.deepcopy(raw)
    intended["models"][model]["default_version"] = value
    edited = _edit_default_version(text, model, value)
    if edited is None or _safe_load(edited) != intended:
        return intended  # type: ignore[no-any-return]
    return edited


def revision_of_text(text: str, source: str) -> int:
    """The revision a routes document's text names (0 when none), as :func:`read` reports it."""
    return _revision_of(_load_yaml(text, source), Path(source))


def splice_models(text: str, intended: Mapping[str, Any]) -> str:
    """``intended`` (the routes parsed from ``text`` with some ``models`` entries changed) as text that keeps
    everything else of ``text``: comments, layout, the other models. Each changed model's block is replaced by
    its dump at the same indentation (comments inside that block go). Falls back to dumping the whole mapping
    when anything else changed, the layout is not the simple block style this understands, or the spliced text
    does not parse back to exactly ``intended``."""
    raw = _load_yaml(text, "routes")
    whole = _yaml(dict(intended))
    if not isinstance(raw, dict):
        return whole
    old_models: Mapping[str, Any] = raw["models"] if isinstance(raw.get("models"), dict) else {}
    new_models: Mapping[str, Any] = intended["models"] if isinstance(intended.get("models"), Mapping) else {}
    others_same = {k: v for k, v in raw.items() if k != "models"} == \
        {k: v for k, v in intended.items() if k != "models"}
    edited: str | None = text
    if not others_same or list(old_models) != list(new_models):
        edited = None
    for name, spec in new_models.items():
        if edited is None:
            break
        if old_models.get(name) != spec:
            edited = _replace_model_block(edited, name, spec)
    if edited is not None and _safe_load(edited) == dict(intended):
        return edited
    return whole


# --- helpers ---------------------------------------------------------------------------------------------------

# libyaml's parser with PyYAML's own safe constructors (~6x faster) for the writer's bookkeeping parses; the text
# that will be written is always parsed once more with yaml.safe_load, exactly as every worker loads it.
_FAST_LOADER: Any = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


def _load_yaml(text: str, source: str, *, exact: bool = False) -> Any:
    try:
        return yaml.safe_load(text) if exact else yaml.load(text, Loader=_FAST_LOADER)
    except yaml.YAMLError as exc:
        if not exact:
            return _load_yaml(text, source, exact=True)  # the loader's message, as the workers would log it
        raise ConfigError(f"{source}: not valid YAML: {exc}") from exc


def _safe_load(text: str) -> Any:
    try:
        return yaml.load(text, Loader=_FAST_LOADER)
    except yaml.YAMLError:
        return None


def _revision_of(raw: Any, path: Path) -> int:
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: <top level>: must be a mapping, got {type(raw).__name__}")
    revision = raw.get("revision", 0)
    if isinstance(revision, bool) or not isinstance(revision, int) or revision < 0:
        raise ConfigError(f"{path}: revision: must be an integer >= 0, got {revision!r}")
    return revision


def _dump(raw: Mapping[str, Any], revision: int) -> str:
    ordered = {"revision": revision, **{k: v for k, v in raw.items() if k != "revision"}}
    return _yaml(ordered)


def _yaml(data: Mapping[str, Any]) -> str:
    """Block-style YAML in the mapping's own key order (how the writer dumps routes and model blocks)."""
    return yaml.safe_dump(dict(data), sort_keys=False, default_flow_style=False, allow_unicode=True)


def _with_revision(routes: str | Mapping[str, Any], revision: int, source: str) -> str:
    """The text to write: ``routes`` with its top-level revision set, edited in place when that is provably equal,
    else dumped."""
    if not isinstance(routes, str):
        if not isinstance(routes, Mapping):
            raise ConfigError(f"{source}: <top level>: must be a mapping, got {type(routes).__name__}")
        return _dump(routes, revision)
    raw = _load_yaml(routes, source)
    if not isinstance(raw, dict):
        return routes  # the parser refuses it, phrased as it is for the file itself
    intended = {**raw, "revision": revision}
    matches = list(_REVISION_LINE.finditer(routes))
    if len(matches) == 1:
        m = matches[0]
        edited = f"{routes[:m.start()]}revision: {revision}{m.group('comment') or ''}{routes[m.end():]}"
    elif not matches and "revision" not in raw:
        edited = f"revision: {revision}\n{routes}"
    else:
        edited = ""
    if edited and _safe_load(edited) == intended:
        return edited if edited.endswith("\n") else edited + "\n"
    return _dump(raw, revision)


def _indent(line: str) -> int:
    return len(line) - len(line.lstrip(" "))


def _significant(line: str) -> bool:
    stripped = line.strip()
    return bool(stripped) and not stripped.startswith("#")


def _edit_default_version(text: str, model: str, value: str | int) -> str | None:
    """``text`` with ``models.<model>.default_version`` set in place (block-style YAML), or None when the layout
    is not the simple one this understands (the caller then dumps the mapping)."""
    lines = text.splitlines(keepends=True)
    block = _model_block(lines, model)
    if block is None:
        return None
    model_at, end, _ = block
    child_indent = None
    default_at = None
    for i in range(model_at + 1, end):
        line = lines[i].rstrip("\r\n")
        if not _significant(line):
            continue
        if child_indent is None:
            child_indent = _indent(line)
        if _indent(line) == child_indent and re.match(r"^ *default_version[ \t]*:", line):
            default_at = i
    if child_indent is None:
        return None
    if default_at is not None:
        line = lines[default_at]
        m = re.match(r"^(?P<key> *default_version[ \t]*:)[^\n#]*?(?P<comment>[ \t]+#[^\r\n]*)?(?P<eol>\r?\n?)$",
                     line)
        if m is None:
            return None
        lines[default_at] = f"{m.group('key')} {value}{m.group('comment') or ''}{m.group('eol')}"
    else:
        lines.insert(model_at + 1, f"{' ' * child_indent}default_version: {value}\n")
    return "".join(lines)


def _model_block(lines: list[str], model: str) -> tuple[int, int, int] | None:
    """(first line, line after the last significant line, indent) of ``models.<model>`` in block-style YAML."""
    models_at = next((i for i, line in enumerate(lines) if re.match(r"^models[ \t]*:[ \t]*(#.*)?$", line.rstrip())),
                     None)
    if models_at is None:
        return None
    model_line = re.compile(rf"^(?P<indent> +){re.escape(model)}[ \t]*:[ \t]*(#.*)?$")
    model_at = None
    for i in range(models_at + 1, len(lines)):
        line = lines[i].rstrip("\r\n")
        if _significant(line) and _TOP_KEY.match(line):
            return None  # the models block ended
        if model_line.match(line):
            model_at = i
            break
    if model_at is None:
        return None
    indent = _indent(lines[model_at])
    end = model_at + 1
    for i in range(model_at + 1, len(lines)):
        line = lines[i].rstrip("\r\n")
        if not _significant(line):
            continue
        if _indent(line) <= indent:
            break
        end = i + 1
    return model_at, end, indent


def _replace_model_block(text: str, model: str, spec: Any) -> str | None:
    lines = text.splitlines(keepends=True)
    block = _model_block(lines, model)
    if block is None:
        return None
    start, end, indent = block
    dumped = _yaml({model: spec})
    new = [" " * indent + line if line.strip() else line for line in dumped.splitlines(keepends=True)]
    if end == len(lines) and lines and not lines[-1].endswith("\n"):
        lines[-1] += "\n"
    return "".join(lines[:start] + new + lines[end:])


def atomic_write(path: Path, text: str) -> None:
    """Temp file in the same directory, fsync, rename over the file, fsync the directory."""
    try:
        mode = stat.S_IMODE(path.stat().st_mode)
    except OSError:
        mode = 0o644
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fchmod(f.fileno(), mode)
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)
