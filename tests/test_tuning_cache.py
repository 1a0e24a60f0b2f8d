"""The persistent tuning cache: atomic, locked, self-healing."""

import json
import multiprocessing

import pytest

from tritonconv import tuning_cache
from tritonconv.tuning_cache import FORMAT_VERSION, CacheKey, CacheWriteError, TuningCache

from conftest import RUNNING_AS_ROOT


def key(i, source="abc"):
    return CacheKey("hetconv", "forward", f"shape{i}", "gpu", "2.9.0", "3.6.0", source)


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


def test_generation_checks_the_file_at_most_every_interval(tmp_path, monkeypatch):
    """generation(), asked on every CUDA call, trusts its last look at the file for STAMP_INTERVAL_S: a
    write by another instance (another process) shows once the interval has passed; its own writes and a
    changed path at once."""
    clock = [100.0]
    monkeypatch.setattr(tuning_cache.time, "monotonic", lambda: clock[0])
    path = tmp_path / "tuning.json"
    reader = TuningCache(path)
    first = reader.generation()
    TuningCache(path).store(key(1), {"winner": "triton"})
    assert reader.generation() == first  # within the interval: not looked at
    clock[0] += 2 * tuning_cache.STAMP_INTERVAL_S
    second = reader.generation()
    assert second != first and reader.lookup(key(1)) == {"winner": "triton"}
    reader.store(key(2), {"winner": "fallback"})
    third = reader.generation()  # its own write: at once
    assert third != second
    assert reader.generation() == third  # and steady
    elsewhere = TuningCache()
    monkeypatch.setenv("TRITONCONV_CACHE_DIR", str(tmp_path / "a"))
    before = elsewhere.generation()
    TuningCache(tmp_path / "b" / tuning_cache.FILE_NAME).store(key(3), {"winner": "triton"})
    monkeypatch.setenv("TRITONCONV_CACHE_DIR", str(tmp_path / "b"))
    assert elsewhere.generation() != before and elsewhere.lookup(key(3)) == {"winner": "triton"}


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
    with pytest.raises(CacheWriteError, match="disk full"):
        cache.store(key(2), {"winner": "triton"})
    assert path.read_text() == before
    assert not list(tmp_path.glob(".tuning-*.tmp"))


def test_a_malformed_entry_is_answered_as_missing_and_reported_once(tmp_path, every_warning):
    path = tmp_path / "tuning.json"
    path.write_text(json.dumps({"format": FORMAT_VERSION, "entries": {
        str(key(1)): {"winner": "triton",
                      "tiles": {"forward": {"block_rows": 20, "block_cols": 16, "block_reduce": 16}}},
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


def test_store_refuses_a_malformed_entry(tmp_path):
    cache = TuningCache(tmp_path / "tuning.json")
    with pytest.raises(ValueError, match="winner 'cudnn' is not one of"):
        cache.store(key(1), {"winner": "cudnn"})
    assert not (tmp_path / "tuning.json").exists()


def unwritable_folders():
    """name: (set-up(tmp_path) -> (cache path, folder to deny or None, read allowed), what the error says)."""
    def existing_cache(tmp_path):
        path = tmp_path / "cache" / "tuning.json"
        TuningCache(path).store(key(0), {"winner": "fallback"})
        return path

    def a_file_as_the_folder(tmp_path):
        (tmp_path / "cache").write_text("mine")
        return tmp_path / "cache" / "tuning.json", None, False

    def a_folder_as_the_file(tmp_path):
        (tmp_path / "cache" / "tuning.json").mkdir(parents=True)
        return tmp_path / "cache" / "tuning.json", None, False

    return {
        "read-only folder (simulated chmod 555)": (lambda t: (existing_cache(t), t / "cache", True),
                                                   "Permission denied"),
        "folder not searchable (simulated chmod 000)": (lambda t: (existing_cache(t), t / "cache", False),
                                                        "Permission denied"),
        "folder cannot be created (simulated)": (lambda t: (t / "cache" / "tuning.json", t, False),
                                                 "Permission denied"),
        "a file where the folder should be": (a_file_as_the_folder, "is a file, not a folder"),
        "a folder where the file should be": (a_folder_as_the_file, "Is a directory"),
    }


UNWRITABLE = unwritable_folders()


def listing(folder):
    """Every file and folder with its content; lock files, which every store leaves, are not counted."""
    return sorted((str(p), p.is_dir() or p.read_bytes()) for p in folder.rglob("*") if p.suffix != ".lock")


@pytest.mark.parametrize("name", UNWRITABLE)
def test_a_store_that_cannot_write_raises_our_error_and_leaves_the_cache_as_it_was(tmp_path, deny_access, name):
    set_up, problem = UNWRITABLE[name]
    path, denied, read = set_up(tmp_path)
    before = listing(tmp_path)
    if denied:
        deny_access(denied, read=read)
    with pytest.raises(CacheWriteError, match=f"cannot write the tuning cache {path}: .*{problem}"):
        TuningCache(path).store(key(1), {"winner": "triton"})
    deny_access.undo()
    assert listing(tmp_path) == before  # nothing set aside or replaced, no temporary file left


@pytest.mark.skipif(RUNNING_AS_ROOT, reason="root ignores permission bits; the simulated chmod 555 case covers it")
def test_a_store_into_a_read_only_folder_raises_our_error(tmp_path):
    path = tmp_path / "cache" / "tuning.json"
    TuningCache(path).store(key(0), {"winner": "fallback"})
    before = path.read_bytes()
    path.parent.chmod(0o555)
    try:
        with pytest.raises(CacheWriteError, match="Permission denied"):
            TuningCache(path).store(key(1), {"winner": "triton"})
    finally:
        path.parent.chmod(0o755)
    assert path.read_bytes() == before
