"""Numeric identities: reserved numbers, scopes, persistence across restarts and processes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from cport.errors import IdentityError
from cport.identity import (
    HOST_ID,
    RESERVED_IDS,
    RESERVED_NAMES,
    WILDCARD_ID,
    WORLD_ID,
    IdentityAllocator,
    Label,
    Labels,
    reserved_labels,
)

WEB = Labels.parse("app=web,io.kubernetes.pod.namespace=shop")
DB = Labels.parse("app=db,io.kubernetes.pod.namespace=shop")
API = Labels.parse("app=api,io.kubernetes.pod.namespace=shop")
CIDR = Labels.parse("reserved:world,cidr:prefix=203.0.113.0/24")
CIDR2 = Labels.parse("reserved:world,cidr:prefix=198.51.100.0/24")


def _state(path: Path) -> dict[str, object]:
    data = json.loads((path / "identities.json").read_text())
    assert isinstance(data, dict)
    return data


# -- reserved ---------------------------------------------------------------------------------
def test_reserved_identity_numbers_follow_cilium() -> None:
    assert RESERVED_IDS == {
        "host": 1,
        "world": 2,
        "unmanaged": 3,
        "health": 4,
        "init": 5,
        "remote-node": 6,
        "kube-apiserver": 7,
        "ingress": 8,
    }
    assert (HOST_ID, WORLD_ID, WILDCARD_ID) == (1, 2, 0)
    assert RESERVED_NAMES[8] == "ingress"


def test_allocator_always_knows_the_reserved_identities() -> None:
    alloc = IdentityAllocator()
    for name, num in RESERVED_IDS.items():
        assert alloc.lookup(reserved_labels(name)) == num
        assert alloc.allocate(reserved_labels(name)) == num
        assert alloc.labels_of(num) == reserved_labels(name)
    assert len(alloc) == len(RESERVED_IDS)
    assert alloc.labels_of(0) is None
    assert alloc.lookup(WEB) is None


# -- allocation -------------------------------------------------------------------------------
def test_cluster_identities_start_at_256_and_are_stable_in_memory() -> None:
    alloc = IdentityAllocator()
    assert alloc.allocate(WEB) == 256
    assert alloc.allocate(DB) == 257
    assert alloc.allocate(WEB) == 256
    assert alloc.allocate(Labels.parse("io.kubernetes.pod.namespace=shop,app=web")) == 256
    assert alloc.allocate_many([API, DB, WEB]) == [258, 257, 256]
    assert alloc.lookup(DB) == 257
    assert alloc.labels_of(257) == DB
    assert dict(alloc)[258] == API
    assert len(alloc) == len(RESERVED_IDS) + 3


def test_cidr_identities_are_local_scope() -> None:
    alloc = IdentityAllocator()
    assert alloc.allocate(CIDR) == 1 << 24
    assert alloc.allocate(WEB) == 256  # the cluster scope is not consumed by CIDRs
    assert alloc.allocate(CIDR2) == (1 << 24) + 1
    assert alloc.allocate(CIDR) == 1 << 24


def test_in_memory_allocator_save_is_a_no_op(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    alloc = IdentityAllocator()
    alloc.allocate(WEB)
    assert list(tmp_path.iterdir()) == []


# -- persistence ------------------------------------------------------------------------------
def test_identities_survive_a_restart(tmp_path: Path) -> None:
    first = IdentityAllocator(tmp_path)
    ids = {labels: first.allocate(labels) for labels in (WEB, DB, CIDR, API)}
    second = IdentityAllocator(tmp_path)
    for labels, num in ids.items():
        assert second.lookup(labels) == num
        assert second.labels_of(num) == labels
    # Asking in another order after the restart changes nothing.
    assert [second.allocate(x) for x in (API, CIDR, DB, WEB)] == [
        ids[API],
        ids[CIDR],
        ids[DB],
        ids[WEB],
    ]
    # New label sets continue after the highest number, never reusing one.
    assert second.allocate(Labels.parse("app=new")) == 259
    assert second.allocate(CIDR2) == (1 << 24) + 1


def test_restart_keeps_numbers_even_when_earlier_sets_are_gone(tmp_path: Path) -> None:
    first = IdentityAllocator(tmp_path)
    first.allocate(WEB)
    first.allocate(DB)
    # A later run that only sees DB still gives it 257, not 256.
    second = IdentityAllocator(tmp_path)
    assert second.allocate(DB) == 257


def test_state_file_format(tmp_path: Path) -> None:
    alloc = IdentityAllocator(tmp_path / "nested" / "state")
    alloc.allocate(WEB)
    alloc.allocate(CIDR)
    data = _state(tmp_path / "nested" / "state")
    assert data["version"] == 2
    identities = data["identities"]
    assert isinstance(identities, list)
    by_id = {e["id"]: Labels(Label(*t) for t in e["labels"]) for e in identities}
    assert by_id == {256: WEB, 1 << 24: CIDR}
    # Reserved identities are implied, never written.
    assert all(e["id"] >= 256 for e in identities)


def test_allocating_only_known_labels_does_not_write(tmp_path: Path) -> None:
    alloc = IdentityAllocator(tmp_path)
    assert not (tmp_path / "identities.json").exists()
    alloc.allocate(WEB)
    stat = (tmp_path / "identities.json").stat()
    again = IdentityAllocator(tmp_path)
    again.allocate(WEB)
    assert (tmp_path / "identities.json").stat().st_mtime_ns == stat.st_mtime_ns


def test_two_processes_never_share_a_number_after_both_save(tmp_path: Path) -> None:
    one = IdentityAllocator(tmp_path)
    two = IdentityAllocator(tmp_path)
    # Each allocation is made against the file under a lock, so the second process sees the
    # first's number and takes the next one: a number, once returned, is final.
    assert one.allocate(WEB) == 256
    assert two.allocate(DB) == 257
    assert one.lookup(WEB) == 256
    assert two.lookup(DB) == 257
    assert one.allocate(DB) == 257
    assert two.allocate(WEB) == 256
    fresh = IdentityAllocator(tmp_path)
    assert fresh.lookup(WEB) == 256
    assert fresh.lookup(DB) == two.lookup(DB)
    nums = [n for n, _ in fresh if n >= 256]
    assert len(nums) == len(set(nums)) == 2
    on_disk = {
        e["id"]: Labels(Label(*t) for t in e["labels"]) for e in _state(tmp_path)["identities"]
    }  # type: ignore[attr-defined]
    assert on_disk == {256: WEB, two.lookup(DB): DB}


def test_a_later_save_keeps_the_other_processes_identities(tmp_path: Path) -> None:
    one = IdentityAllocator(tmp_path)
    two = IdentityAllocator(tmp_path)
    one.allocate(WEB)
    two.allocate(DB)
    one.allocate(API)
    fresh = IdentityAllocator(tmp_path)
    assert {fresh.lookup(x) for x in (WEB, DB, API)} == {256, 257, 258}
    assert fresh.lookup(DB) == two.lookup(DB)


def test_two_processes_allocating_the_same_labels_agree_after_save(tmp_path: Path) -> None:
    one = IdentityAllocator(tmp_path)
    two = IdentityAllocator(tmp_path)
    assert one.allocate(DB) == 256
    assert two.allocate(WEB) == 257  # two sees one's allocation on disk
    assert two.allocate(DB) == 256
    fresh = IdentityAllocator(tmp_path)
    assert one.lookup(DB) == two.lookup(DB) == fresh.lookup(DB)
    assert fresh.lookup(WEB) == two.lookup(WEB)
    assert fresh.lookup(WEB) != fresh.lookup(DB)


def test_label_values_with_commas_survive_a_restart(tmp_path: Path) -> None:
    odd = Labels([Label("k8s", "app", "a,b"), Label("k8s", "io.kubernetes.pod.namespace", "x")])
    first = IdentityAllocator(tmp_path)
    num = first.allocate(odd)
    assert IdentityAllocator(tmp_path).lookup(odd) == num


# -- corrupt state --------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "content",
    [
        "{not json",
        "",
        "[]",
        '{"version": 2, "identities": {}}',
        '{"version": 1}',
        '{"version": 2}',
        '"just a string"',
    ],
)
def test_corrupt_state_file_is_an_identity_error(tmp_path: Path, content: str) -> None:
    (tmp_path / "identities.json").write_text(content)
    with pytest.raises(IdentityError) as info:
        IdentityAllocator(tmp_path)
    assert info.value.code == "identity-state-corrupt"
    assert str(tmp_path / "identities.json") in info.value.message


@pytest.mark.parametrize(
    "content",
    [
        pytest.param('{"version": 2, "identities": [{"id": 256}]}', id="no-labels"),
        pytest.param(
            '{"version": 2, "identities": [{"id": "x", "labels": []}]}', id="number-string"
        ),
        pytest.param(
            '{"version": 2, "identities": [{"id": 300, "labels": [["", "x", ""]]}]}', id="bad-label"
        ),
        pytest.param(
            '{"version": 2, "identities": [{"id": 300, "labels": "k8s:a=1"}]}',
            id="labels-not-a-list",
        ),
        pytest.param('{"version": 2, "identities": [7]}', id="entry-not-a-mapping"),
        pytest.param(
            '{"version": 2, "identities": [{"id": 300, "labels": []}, '
            '{"id": 300, "labels": [["k8s", "a", "1"]]}]}',
            id="duplicate-id",
        ),
    ],
)
def test_structurally_corrupt_state_is_an_identity_error(tmp_path: Path, content: str) -> None:
    (tmp_path / "identities.json").write_text(content)
    with pytest.raises(IdentityError) as info:
        IdentityAllocator(tmp_path)
    assert info.value.code == "identity-state-corrupt"


def test_state_file_cannot_take_a_reserved_number(tmp_path: Path) -> None:
    (tmp_path / "identities.json").write_text(
        '{"version": 2, "identities": [{"id": 5, "labels": [["k8s", "a", "1"]]}]}'
    )
    try:
        alloc = IdentityAllocator(tmp_path)
    except IdentityError as exc:
        assert exc.code == "identity-state-corrupt"
    else:
        assert alloc.lookup(reserved_labels("init")) == 5
        assert alloc.labels_of(5) == reserved_labels("init")


def test_state_dir_that_is_a_file_is_an_identity_error(tmp_path: Path) -> None:
    blocker = tmp_path / "state"
    blocker.write_text("not a directory")
    with pytest.raises(IdentityError):
        IdentityAllocator(blocker)
