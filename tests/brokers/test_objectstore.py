"""The object store behind the durable broker: conditional writes that Tansu's compare-and-swap
relies on, S3's listing order and pages, and a directory read back as it was left (pure: files
in a temporary directory, no server)."""

from __future__ import annotations

from pathlib import Path

import pytest

from brokers.objectstore import ObjectStore, ObjectStoreError, PreconditionFailed


def test_create_only_if_absent_and_update_only_if_unchanged(tmp_path: Path) -> None:
    store = ObjectStore(tmp_path)
    first = store.put("b", "w.json", b"1", if_none_match="*")
    with pytest.raises(PreconditionFailed):
        store.put("b", "w.json", b"other", if_none_match="*")
    second = store.put("b", "w.json", b"2", if_match=first.etag)
    with pytest.raises(PreconditionFailed):  # a stale ETag loses, even for the same bytes
        store.put("b", "w.json", b"2", if_match=first.etag)
    with pytest.raises(PreconditionFailed):
        store.put("b", "missing.json", b"x", if_match=second.etag)
    assert store.get("b", "w.json") == (second, b"2")
    assert second.etag != first.etag
    assert not [p for p in tmp_path.rglob("*") if p.name.startswith(".tmp-")]


def test_listing_is_in_key_order_with_pages_and_common_prefixes(tmp_path: Path) -> None:
    store = ObjectStore(tmp_path)
    keys = [f"t/p/{i:020d}.batch" for i in (3, 1, 2)] + ["t/q/0.batch", "t/meta.json", "u/x"]
    for key in keys:
        store.put("b", key, key.encode())
    page = store.list("b", "t/p/", max_keys=2)
    assert [m.key for m in page.objects] == [f"t/p/{i:020d}.batch" for i in (1, 2)]
    rest = store.list("b", "t/p/", after=page.next_after)
    assert [m.key for m in rest.objects] == [f"t/p/{3:020d}.batch"] and rest.next_after is None
    rolled = store.list("b", "t/", delimiter="/")
    assert [m.key for m in rolled.objects] == ["t/meta.json"]
    assert rolled.prefixes == ["t/p/", "t/q/"]
    pages, after = [], None
    while True:  # one entry a page: a page that ends on a prefix resumes past everything in it
        page = store.list("b", "t/", delimiter="/", after=after, max_keys=1)
        pages.append([m.key for m in page.objects] + page.prefixes)
        if (after := page.next_after) is None:
            break
    assert pages == [["t/meta.json"], ["t/p/"], ["t/q/"]]
    assert store.list("other", "").objects == []


def test_a_key_can_be_an_object_and_a_prefix_and_unsafe_names_are_refused(tmp_path: Path) -> None:
    store = ObjectStore(tmp_path)
    store.put("b", "a", b"object")
    store.put("b", "a/b", b"under it")
    assert store.get("b", "a") is not None and store.get("b", "a/b") is not None
    for key in ("../escape", "a//b", "/abs", "a/./b", "a.obj/b"):
        with pytest.raises(ObjectStoreError):
            store.put("b", key, b"x")
    assert store.delete("b", "a") and not store.delete("b", "a")
    assert [m.key for m in store.list("b").objects] == ["a/b"]


def test_a_reopened_directory_serves_what_was_written_and_drops_torn_writes(
    tmp_path: Path,
) -> None:
    store = ObjectStore(tmp_path, sync=True)
    old = store.put("b", "t/0", b"zero")
    store.put("b", "t/1", b"one")
    staged = store.write_temporary("b", "t/2", b"never committed")  # a crash before the rename
    assert staged.exists()
    with pytest.raises(ObjectStoreError, match="in use"):  # one store per directory
        ObjectStore(tmp_path, lock_timeout_s=0.3)
    store.close()
    again = ObjectStore(tmp_path)
    assert not staged.exists()
    assert [m.key for m in again.list("b", "t/").objects] == ["t/0", "t/1"]
    found = again.get("b", "t/0")
    assert found is not None and found[1] == b"zero"
    with pytest.raises(PreconditionFailed):  # ETags of another process never match
        again.put("b", "t/0", b"x", if_match=old.etag)
