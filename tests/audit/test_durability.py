"""Crash durability of the SQLite audit store: an acknowledged event survives SIGKILL.

A writer process appends deterministic events (`make_event(seq)`) in batches of varying size
and prints each batch's sequence numbers right after `append` returns — the acknowledgement.
The test SIGKILLs it mid-stream, reopens the store and checks that every acknowledged event is
there and intact, that the chain (and the writer's signed checkpoints) verify, that the store
holds whole batches only (contiguous from 1, ending on a batch boundary) and at most one
committed-but-unacknowledged batch. The next round's writer continues the recovered chain.

SIGKILL loses the process, not the page cache: this checks transaction atomicity and that
`append` returns only after COMMIT, not fsync against power loss (synchronous=FULL's job).
"""

from __future__ import annotations

import hashlib
import os
import select
import signal
import subprocess
import sys
import time
from pathlib import Path

from cport.audit import AuditEvent, AuditFilter, PolicyRef, Signer, SQLiteStore

ROOT = Path(__file__).resolve().parents[2]
LIMIT = 200_000  # the writer never appends past this sequence number ...
WRITER_SECONDS = 60.0  # ... nor for longer than this
_SIZES = (500, 1, 37, 500, 200, 3, 500, 64)

# argv: repo root, store path, state dir, sequence limit, seconds.
WRITER = """
import sys, time
sys.path.insert(0, sys.argv[1])
from pathlib import Path
from cport.audit import AuditFilter, Signer, SQLiteStore
from tests.audit.test_durability import batch_size, make_event

path, state, limit, seconds = sys.argv[2], Path(sys.argv[3]), int(sys.argv[4]), float(sys.argv[5])
store = SQLiteStore(path, Signer.load_or_create(state))
nxt = store.count(AuditFilter()) + 1
out = sys.stdout
out.write(f"start {nxt}\\n")
out.flush()
deadline = time.monotonic() + seconds
batches = 0
while nxt <= limit and time.monotonic() < deadline:
    n = batch_size(nxt)
    seqs = store.append([make_event(k) for k in range(nxt, nxt + n)])
    if seqs != list(range(nxt, nxt + n)):
        sys.exit(f"append returned {seqs[:3]}... for events {nxt}..{nxt + n - 1}")
    out.write(f"ack {seqs[0]} {seqs[-1]}\\n")
    out.flush()
    nxt += n
    batches += 1
    if batches % 10 == 0:
        store.checkpoint()
out.write("done\\n")
out.flush()
"""


def batch_size(first: int) -> int:
    """The size of the batch whose first event is `first` (batches vary: 1 to 500)."""
    return _SIZES[first % len(_SIZES)]


def make_event(seq: int) -> AuditEvent:
    """The event the writer appends as record `seq` — a pure function of `seq`."""
    k = seq
    authed = k % 4 != 0
    denied = k % 5 == 0
    pols: tuple[PolicyRef, ...] = (PolicyRef("PortPolicy", f"ns{k % 5}", "db-access", k % 9),)
    if k % 3 == 0:
        pols += (PolicyRef("CiliumNetworkPolicy", f"ns{k % 5}", "baseline", 1),)
    return AuditEvent(
        time_ns=1_700_000_000_000_000_000 + k * 1_000,
        kind="close" if k % 10 == 0 else "decision",
        node=f"node-{k % 3}",
        enforcer=("proxy", "ebpf")[k % 2],
        verdict="denied" if denied else "allowed",
        reason="no-matching-rule" if denied else "policy-allowed",
        src_ip=f"10.0.{k // 256 % 256}.{k % 256}",
        src_port=32768 + k % 28000,
        dst_ip="198.51.100.7",
        dst_port=5432,
        peer_identity=256 + k % 3000,
        peer_labels=("k8s:app=api", f"k8s:team=t{k % 7}"),
        subject=f"user{k % 300}@corp.example" if authed else "",
        issuer="https://idp.corp.example" if authed else "",
        credential_kind="jwt" if authed else "",
        token_id=hashlib.sha256(b"%d" % k).hexdigest() if authed else "",
        workload=f"ns{k % 5}/db-{k % 11}",
        port=5432,
        policies=pols,
        table_revision=k // 1000,
        bytes_in=k * 7 if k % 10 == 0 else 0,
        bytes_out=k * 13 if k % 10 == 0 else 0,
        duration_ns=k * 1_000_003 if k % 10 == 0 else 0,
        termination="client-closed" if k % 10 == 0 else "",
        extra={"k": k, "note": "ünïcødé ✓"} if k % 17 == 0 else {},
    )


def batch_ends(upto: int) -> set[int]:
    """The last sequence number of every whole batch ending at or before `upto`."""
    ends = {0}
    first = 1
    while first <= upto:
        first += batch_size(first)
        ends.add(first - 1)
    return ends


class _Lines:
    """Lines from a pipe, read with a deadline (a stuck writer fails the test, not hangs it)."""

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self.buf = b""
        self.eof = False

    def next(self, deadline: float) -> str | None:
        while b"\n" not in self.buf:
            if self.eof:
                return None
            left = deadline - time.monotonic()
            assert left > 0, "the writer stopped acknowledging"
            ready, _, _ = select.select([self.fd], [], [], left)
            if ready:
                chunk = os.read(self.fd, 65536)
                self.buf += chunk
                self.eof = not chunk
        line, _, self.buf = self.buf.partition(b"\n")
        return line.decode()


def _acks(line: str) -> tuple[int, int]:
    tag, first, last = line.split()
    assert tag == "ack", line
    return int(first), int(last)


def run_and_kill(db: Path, state: Path, kill_after: int, delay: float) -> tuple[int, int]:
    """Start a writer, SIGKILL it once it has acknowledged `kill_after` events (plus `delay`
    seconds), reap it; return (its first sequence number, the last one it acknowledged)."""
    argv = [str(ROOT), str(db), str(state), str(LIMIT), str(WRITER_SECONDS)]
    with (state / "writer.stderr").open("wb") as err:
        proc = subprocess.Popen(
            [sys.executable, "-c", WRITER, *argv],
            stdout=subprocess.PIPE,
            stderr=err,
        )
    assert proc.stdout is not None
    lines = _Lines(proc.stdout.fileno())
    start = last = -1
    try:
        deadline = time.monotonic() + 20
        first_line = lines.next(deadline)
        assert first_line is not None and first_line.startswith("start "), first_line
        start = int(first_line.split()[1])
        last = start - 1
        while last - start + 1 < kill_after:
            line = lines.next(deadline)
            assert line is not None and line != "done", "the writer ended before the kill"
            first, last_now = _acks(line)
            assert first == last + 1, (first, last)
            last = last_now
        if delay:
            time.sleep(delay)
        assert proc.poll() is None, "the writer ended before the kill"
        os.kill(proc.pid, signal.SIGKILL)  # not yet reaped, so the pid is still the writer's
    finally:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)
        # Acknowledgements written before death are still in the pipe: they count too.
        while (line := lines.next(time.monotonic() + 10)) is not None:
            if line == "done":
                raise AssertionError("the writer finished: the kill was not mid-stream")
            first, last_now = _acks(line)
            assert first == last + 1, (first, last)
            last = last_now
        proc.stdout.close()
    stderr = (state / "writer.stderr").read_text()
    assert proc.returncode == -signal.SIGKILL, (proc.returncode, stderr)
    return start, last


def check_store(db: Path, signer: Signer, acked: int) -> int:
    """Everything acknowledged is present and intact, the chain verifies, no partial batch."""
    store = SQLiteStore(db)
    try:
        stored = list(store.query(AuditFilter()))
        total = len(stored)
        assert [s.seq for s in stored] == list(range(1, total + 1)), "sequence has gaps"
        assert total >= acked, f"acknowledged {acked} events, only {total} survived"
        for s in stored:
            assert s.event == make_event(s.seq), f"record {s.seq} differs from what was written"
        assert total in batch_ends(total), f"store ends at {total}, inside a batch"
        assert total <= acked + batch_size(acked + 1), "more than one unacknowledged batch"
        report = store.verify(public_key=signer.public_key)
        assert report.ok, report
        assert (report.first_seq, report.last_seq, report.records) == (1, total, total)
        assert report.checkpoints >= 1
        assert store.count(AuditFilter()) == total
    finally:
        store.close()
    return total


def test_acknowledged_events_survive_sigkill(tmp_path: Path) -> None:
    db = tmp_path / "audit.db"
    signer = Signer.load_or_create(tmp_path)  # before any writer, so none dies creating it
    total = 0
    # (events acknowledged before the kill, extra delay): a few different kill points.
    for kill_after, delay in ((3000, 0.0), (2000, 0.003), (3500, 0.011), (1200, 0.0)):
        start, last = run_and_kill(db, tmp_path, kill_after, delay)
        assert start == total + 1, "the writer did not continue the recovered store"
        assert last - start + 1 >= kill_after
        assert last < LIMIT
        total = check_store(db, signer, last)
    assert total >= 9700
