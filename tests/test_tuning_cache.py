"""The persistent tuning cache: atomic, locked, self-healing."""

import json
import multiprocessing

import pytest

from tritonconv import tuning_cache
from tritonconv.tuning_cache import FORMAT_VERSION, CacheKey, TuningCache


def key(i, source="abc"):
    return CacheKey("hetconv", "forward", f"shape{i}", "gpu", "3.6.0", source)


def test_store_and_lookup_across_instances(tmp_path):
    path = tmp_path / "sub" / "tuning.json"
    TuningCache(path).store(key(1), {"winner": "triton"})
    assert TuningCache(path).lookup(key(1)) == {"winner": "triton"}  # a new process sees it
    assert TuningCache(path).lookup(key(2)) is None
    assert json.loads(path.read_text())["format"] == FORMAT_VERSION


def test_reader_sees_writes_of_another_instance(tmp_path):
    path = tmp_path / "tuning.json"
    reader = TuningCache(path)
    assert reader.lookup(key(1)) is None
    TuningCache(path).store(key(1), {"winner": "fallback"})
    assert reader.lookup(key(1)) == {"winner": "fallback"}


def _writer(path, first, count):
    cache = TuningCache(path)
    for i in range(first, first + count):
        cache.store(key(i), {"winner": "triton", "i": i})


def test_two_processes_writing_at_once_lose_nothing(tmp_path):
    path = tmp_path / "tuning.json"
    context = multiprocessing.get_context("spawn")
    workers = [context.Process(target=_writer, args=(path, start, 25)) for start in (0, 100)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(60)
        assert worker.exitcode == 0
    entries = TuningCache(path).entries()
    assert len(entries) == 50
    assert not list(tmp_path.glob(".tuning-*.tmp"))  # no temporary file left behind


@pytest.mark.parametrize("content, problem", [
    (b"{not json", "not valid JSON"),
    (b'{"format": 999, "entries": {}}', "has format 999"),
    (b'["a list"]', "does not hold an 'entries' table"),
    (b'{"format": 1, "entries": {"\xff": {}}}', "is not UTF-8 text"),
    (b'{"format": 1, "entries": {"a": ' + b"1" * 5000 + b"}}", "is not valid JSON"),  # over int()'s digit limit
])
def test_corrupt_or_foreign_file_is_reported_and_rebuilt(tmp_path, content, problem):
    path = tmp_path / "tuning.json"
    path.write_bytes(content)
    cache = TuningCache(path)
    with pytest.warns(RuntimeWarning, match=problem):
        assert cache.lookup(key(1)) is None  # reading never crashes
    with pytest.warns(RuntimeWarning, match="moved it to .*corrupt"):
        cache.store(key(1), {"winner": "triton"})
    assert (tmp_path / "tuning.json.corrupt").read_bytes() == content
    assert TuningCache(path).lookup(key(1)) == {"winner": "triton"}


def test_entries_measured_on_older_kernel_source_are_dropped(tmp_path):
    path = tmp_path / "tuning.json"
    cache = TuningCache(path)
    cache.store(key(1, source="old"), {"winner": "fallback"})
    cache.store(key(2, source="old"), {"winner": "fallback"})
    cache.store(key(1, source="new"), {"winner": "triton"})
    entries = cache.entries()
    assert str(key(1, source="old")) not in entries
    assert str(key(2, source="old")) in entries  # another shape: kept until it is re-tuned
    assert entries[str(key(1, source="new"))] == {"winner": "triton"}


def test_failed_write_leaves_the_old_file_intact(tmp_path, monkeypatch):
    path = tmp_path / "tuning.json"
    cache = TuningCache(path)
    cache.store(key(1), {"winner": "triton"})
    before = path.read_text()

    def disk_full(fd):
        raise OSError("disk full")

    monkeypatch.setattr(tuning_cache.os, "fsync", disk_full)
    with pytest.raises(OSError, match="disk full"):
        cache.store(key(2), {"winner": "triton"})
    assert path.read_text() == before
    assert not list(tmp_path.glob(".tuning-*.tmp"))


def test_a_malformed_entry_is_answered_as_missing_and_reported_once(tmp_path, every_warning):
    path = tmp_path / "tuning.json"
    path.write_text(json.dumps({"format": FORMAT_VERSION, "entries": {
        str(key(1)): {"winner": "triton", "tiles": {"forward": {"block_rows": 20, "block_cols": 16, "block_reduce": 16}}},
        str(key(2)): {"winner": "fallback"}}}))
    cache = TuningCache(path)
    for _ in range(3):
        assert cache.lookup(key(1), ("forward",)) is None
        assert cache.lookup(key(2), ("forward",)) == {"winner": "fallback"}
    entry, problem = cache.lookup_checked(key(1), ("forward",))
    assert entry is None and problem == ("the cached entry was rejected: tile for 'forward': block_rows=20 is not "
                                         "a power of two >= 16")
    [warning] = every_warning
    assert str(path) in str(warning.message) and str(key(1)) in str(warning.message)
    assert str(key(1)) in cache.entries()  # kept in the file: only a new measurement replaces it
