"""gateway.routes.writer: validated, compare-and-swap, atomic and locked writes of the routes file."""

from __future__ import annotations

import multiprocessing
import os
import re
import threading
import time
from pathlib import Path

import pytest
import yaml

from gateway.errors import ConfigError, ContentConflict, LockTimeout, RevisionConflict, UnknownModel
from gateway.routes import writer
from gateway.routes.schema import load_routes

ROUTES = """\
# Routes for the tests: comments must survive writes.
revision: 3  # bumped by every write

backends:
  ts:
    kind: torchserve
    url: http://127.0.0.1:8080

models:
  scale:
    labels: {stable: 1}
    default_version: 1   # the instant switch edits this line
    versions:
      1: {backend: ts, model: scale, version: "1"}
      2: {backend: ts, model: scale, version: "2"}
  plain:
    versions:
      1: {backend: ts, model: plain, version: "1"}
      2: {backend: ts, model: plain, version: "2"}
  ab:
    versions:
      1: {backend: ts, model: ab, version: "1"}
      2: {backend: ts, model: ab, version: "2"}
    experiment:
      variants: [{name: a, version: 1, weight: 50}, {name: b, version: 2, weight: 50}]
"""


@pytest.fixture()
def routes(tmp_path: Path) -> Path:
    path = tmp_path / "routes.yaml"
    path.write_text(ROUTES)
    return path


def snapshot(path: Path) -> tuple[bytes, int, int]:
    st = path.stat()
    return path.read_bytes(), st.st_ino, st.st_mtime_ns


def test_apply_bumps_the_revision_and_keeps_comments(routes: Path) -> None:
    text = ROUTES.replace('version: "2"}\n  plain', 'version: "2"}\n  # scale v2 stays\n  plain')
    assert writer.apply(routes, text, expected_revision=3) == 4
    written = routes.read_text()
    assert written.startswith("# Routes for the tests") and "revision: 4  # bumped by every write" in written
    assert "# scale v2 stays" in written
    assert load_routes(routes).revision == 4
    assert writer.read(routes) == (written, 4)
    assert not list(routes.parent.glob(".routes.yaml.*.tmp"))  # no temp file left behind


def test_apply_ignores_the_bodys_own_revision_and_accepts_mappings(routes: Path) -> None:
    assert writer.apply(routes, ROUTES.replace("revision: 3", "revision: 999"), 3) == 4
    raw = yaml.safe_load(ROUTES)
    raw["models"]["scale"]["default_version"] = 2
    del raw["revision"]
    assert writer.apply(routes, raw, 4) == 5
    config = load_routes(routes)
    assert config.revision == 5 and config.models["scale"].default_version == "2"
    # Text without a revision line gets one.
    no_revision = ROUTES.replace("revision: 3  # bumped by every write\n", "")
    assert writer.apply(routes, no_revision, 5) == 6 and load_routes(routes).revision == 6


def test_a_file_without_revision_is_revision_zero(routes: Path) -> None:
    routes.write_text(ROUTES.replace("revision: 3  # bumped by every write\n", ""))
    assert writer.read(routes)[1] == 0
    with pytest.raises(RevisionConflict):
        writer.apply(routes, ROUTES, 3)
    assert writer.apply(routes, ROUTES, 0) == 1


def test_conflict_carries_the_current_revision_and_writes_nothing(routes: Path) -> None:
    before = snapshot(routes)
    with pytest.raises(RevisionConflict) as info:
        writer.apply(routes, ROUTES, expected_revision=2)
    assert info.value.current == 3 and info.value.expected == 2
    assert "expected revision 2, the routes are at revision 3" in str(info.value)
    assert snapshot(routes) == before
    # Two writers that read the same revision: the second loses.
    assert writer.apply(routes, ROUTES, 3) == 4
    with pytest.raises(RevisionConflict) as info:
        writer.apply(routes, ROUTES, 3)
    assert info.value.current == 4


def test_the_digest_of_the_text_read_guards_against_hand_edits_that_keep_the_revision(routes: Path) -> None:
    text, revision = writer.read(routes)
    assert writer.etag(text, revision) == f"3-{writer.digest(text)}" and len(writer.digest(text)) == 16
    by_hand = text.replace("labels: {stable: 1}", "labels: {stable: 1, pinned: 2}")  # still `revision: 3`
    routes.write_text(by_hand)
    with pytest.raises(ContentConflict) as info:
        writer.apply(routes, text, revision, expected_digest=writer.digest(text))
    assert info.value.http_status == 409 and info.value.current == 3 and "edited by hand?" in info.value.message
    with pytest.raises(ContentConflict):
        writer.set_default_version(routes, "scale", "2", revision, expected_digest=writer.digest(text))
    assert routes.read_text() == by_hand
    assert writer.apply(routes, by_hand, revision, expected_digest=writer.digest(by_hand)) == 4
    assert writer.apply(routes, by_hand, 4) == 5  # the plain revision checks the number only, as before


@pytest.mark.parametrize(("change", "message"), [
    (lambda t: t.replace("default_version: 1", "default_version: 7"),
     r"models\.scale\.default_version: version 7 is not listed under versions"),
    (lambda t: t.replace("kind: torchserve", "kind: triton"), r"backends\.ts\.kind: 'triton' is not one of"),
    (lambda t: t + "  broken: [unclosed\n", r"not valid YAML"),
    (lambda t: "- just\n- a list\n", r"<top level>: must be a mapping, got list"),
])
def test_invalid_routes_are_refused_with_the_validators_message(routes: Path, change, message) -> None:  # type: ignore[no-untyped-def]
    before = snapshot(routes)
    with pytest.raises(ConfigError, match=message) as info:
        writer.apply(routes, change(ROUTES), expected_revision=3)
    assert str(info.value).startswith(str(routes))  # names the file, like the loader does
    assert snapshot(routes) == before


def test_invalid_is_refused_before_the_revision_check(routes: Path) -> None:
    with pytest.raises(ConfigError):
        writer.apply(routes, ROUTES.replace("kind: torchserve", "kind: nope"), expected_revision=1)


def test_set_default_version_edits_one_line(routes: Path) -> None:
    assert writer.set_default_version(routes, "scale", "2", expected_revision=3) == 4
    written = routes.read_text()
    assert "\n    default_version: 2   # the instant switch edits this line\n" in written  # the comment stayed
    assert written.count("default_version") == 1
    config = load_routes(routes)
    assert config.revision == 4 and config.models["scale"].default_version == "2"
    # A model without default_version gets the line.
    assert writer.set_default_version(routes, "plain", 1, expected_revision=4) == 5
    assert load_routes(routes).models["plain"].default_version == "1"
    assert "# Routes for the tests" in routes.read_text()


def test_set_default_version_refusals(routes: Path) -> None:
    before = snapshot(routes)
    with pytest.raises(UnknownModel):
        writer.set_default_version(routes, "nope", "1", 3)
    with pytest.raises(ConfigError, match=r"models\.scale\.default_version: version 9 is not listed"):
        writer.set_default_version(routes, "scale", "9", 3)
    with pytest.raises(ConfigError, match=r"models\.ab: has an experiment"):
        writer.set_default_version(routes, "ab", "2", 3)
    with pytest.raises(RevisionConflict):
        writer.set_default_version(routes, "scale", "2", 2)
    assert snapshot(routes) == before


def test_set_default_version_on_a_layout_it_cannot_edit_falls_back_to_a_dump(routes: Path) -> None:
    routes.write_text(yaml.safe_dump(yaml.safe_load(ROUTES), default_flow_style=True))  # one flow mapping
    assert writer.set_default_version(routes, "scale", "2", 3) == 4
    config = load_routes(routes)
    assert config.revision == 4 and config.models["scale"].default_version == "2"
    assert config.models["plain"].default_version == "2" and config.models["ab"].experiment is not None


def test_splice_models_rewrites_only_the_changed_models(routes: Path) -> None:
    # A rollout step: `plain` gets an experiment; the rest of the file keeps its text, comments included.
    raw = yaml.safe_load(ROUTES)
    raw["models"]["plain"]["experiment"] = {"name": "canary", "variants": [
        {"name": "stable", "version": 1, "weight": 80}, {"name": "canary", "version": 2, "weight": 20}]}
    raw["models"]["plain"]["default_version"] = 1
    text = writer.splice_models(ROUTES, raw)
    assert yaml.safe_load(text) == raw
    assert text.startswith("# Routes for the tests") and "revision: 3  # bumped by every write" in text
    assert "default_version: 1   # the instant switch edits this line" in text  # scale untouched
    assert "      variants: [{name: a, version: 1, weight: 50}" in text  # ab untouched, flow style kept
    assert writer.apply(routes, text, 3) == 4
    assert load_routes(routes).models["plain"].experiment is not None
    # The last model of the file, and a file without a final newline.
    raw2 = yaml.safe_load(ROUTES)
    raw2["models"]["ab"]["experiment"]["variants"][0]["weight"] = 90
    raw2["models"]["ab"]["experiment"]["variants"][1]["weight"] = 10
    spliced = writer.splice_models(ROUTES.rstrip("\n"), raw2)
    assert yaml.safe_load(spliced) == raw2 and "# the instant switch edits this line" in spliced


def test_splice_models_falls_back_to_a_dump_when_more_than_models_changed() -> None:
    raw = yaml.safe_load(ROUTES)
    raw["backends"]["ts"]["timeout_s"] = 5
    raw["models"]["plain"]["default_version"] = 2
    text = writer.splice_models(ROUTES, raw)
    assert yaml.safe_load(text) == raw and "#" not in text  # dumped whole
    flow = "models: {plain: {versions: {1: {backend: ts, model: plain, version: '1'}}}}\nbackends: {ts: " \
           "{kind: torchserve, url: 'http://x:1'}}\n"
    raw = yaml.safe_load(flow)
    raw["models"]["plain"]["default_version"] = 1
    assert yaml.safe_load(writer.splice_models(flow, raw)) == raw  # a layout it cannot splice: dumped


def test_readers_never_see_a_partial_file(routes: Path) -> None:
    """Readers poll the file while it is rewritten 100 times (each version ~7 KB, so a torn or truncated write
    would show): every read is a whole file, and revisions only go up."""
    padding = "".join(f"  # padding line {i:05d} {'x' * 80}\n" for i in range(60))
    base = ROUTES + padding
    stop = threading.Event()
    problems: list[str] = []
    seen: list[int] = []

    def reader() -> None:
        last = 0
        while not stop.is_set():
            text = routes.read_text()
            found = re.search(r"^revision: (\d+)  # bumped by every write$", text, re.MULTILINE)
            if not (text.startswith("# Routes for the tests") and text.endswith(padding)) or found is None:
                problems.append(f"partial read of {len(text)} chars")
                continue
            revision = int(found.group(1))
            if revision < last:
                problems.append(f"revision went back from {last} to {revision}")
            last = revision
            seen.append(revision)

    routes.write_text(base)
    threads = [threading.Thread(target=reader) for _ in range(3)]
    for t in threads:
        t.start()
    try:
        revision = 3
        for i in range(100):
            version = 1 + i % 2
            revision = writer.apply(routes, base.replace("default_version: 1", f"default_version: {version}"),
                                    revision)
    finally:
        stop.set()
        for t in threads:
            t.join(timeout=10)
    assert problems == []
    assert revision == 103 and load_routes(routes).revision == 103
    assert len(seen) > 50 and len(set(seen)) > 10  # the readers really raced the writer
    yaml.safe_load(routes.read_text())  # and the last one parses


def test_lock_excludes_other_writers_until_released(routes: Path) -> None:
    with writer.locked(routes):
        started = time.monotonic()
        with pytest.raises(LockTimeout, match="another writer held"):
            writer.apply(routes, ROUTES, 3, lock_timeout_s=0.2)
        assert time.monotonic() - started >= 0.2
    assert load_routes(routes).revision == 3  # nothing written while locked
    # A writer waiting for the lock proceeds as soon as it is released.
    result: list[int] = []
    with writer.locked(routes):
        t = threading.Thread(target=lambda: result.append(writer.apply(routes, ROUTES, 3, lock_timeout_s=10)))
        t.start()
        time.sleep(0.3)
        assert result == []  # still waiting
    t.join(timeout=10)
    assert result == [4]


def _increment(path: str, times: int, counter: multiprocessing.Value) -> None:  # type: ignore[valid-type]
    """Read-modify-write with compare-and-swap, retried on conflict: no update may be lost."""
    p = Path(path)
    done = 0
    while done < times:
        text, revision = writer.read(p)
        raw = yaml.safe_load(text)
        raw["models"]["scale"]["labels"]["stable"] = 1 + (revision % 2)
        try:
            writer.apply(p, raw, revision)
        except RevisionConflict:
            with counter.get_lock():  # type: ignore[attr-defined]
                counter.value += 1  # type: ignore[attr-defined]
            continue
        done += 1


def test_concurrent_writers_in_separate_processes_lose_no_update(routes: Path) -> None:
    ctx = multiprocessing.get_context("spawn")
    conflicts = ctx.Value("i", 0)
    procs = [ctx.Process(target=_increment, args=(str(routes), 15, conflicts)) for _ in range(4)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=120)
        assert p.exitcode == 0
    assert load_routes(routes).revision == 3 + 4 * 15  # every write counted exactly once
    assert os.path.exists(writer.lock_path(routes))
    print(f"4 processes x 15 writes: {conflicts.value} compare-and-swap conflicts retried")


def test_a_symlinked_routes_file_keeps_its_link(routes: Path, tmp_path: Path) -> None:
    link = tmp_path / "current.yaml"
    link.symlink_to(routes)
    assert writer.set_default_version(link, "scale", "2", 3) == 4
    assert link.is_symlink() and os.readlink(link) == str(routes)
    assert load_routes(routes).models["scale"].default_version == "2"
    assert writer.lock_path(link) == writer.lock_path(routes)  # both names share one lock
