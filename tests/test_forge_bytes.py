"""The stand-in counts the bytes its git endpoints send (benchmarks/increments.py measures
what a sync fetches with it)."""

from __future__ import annotations

import random
import urllib.request
from pathlib import Path

from bulkbackup.testing.forge import Forge, RepoSpec
from tests.helpers import git


def test_git_bytes_sent_counts_a_ref_listing_exactly(forge: Forge) -> None:
    forge.add_user("u", [RepoSpec("a")])
    url = f"{forge.url}/u/a.git/info/refs?service=git-upload-pack"
    with urllib.request.urlopen(url, timeout=30) as answer:
        body = answer.read()
    assert body and forge.counters["git_bytes_sent"] == len(body)


def test_git_bytes_sent_is_about_a_clone_s_pack(forge: Forge, tmp_path: Path) -> None:
    # Random data does not compress: the pack on the wire is about the blob's size.
    blob = random.Random(7).randbytes(1 << 20)
    forge.add_user("u", [RepoSpec("big", files={"blob.bin": blob, "README": b"hi\n"})])
    forge.reset_counters()
    mirror = tmp_path / "m.git"
    git("clone", "--mirror", "-q", f"{forge.url}/u/big.git", str(mirror))
    packs = list((mirror / "objects" / "pack").glob("*.pack"))
    pack = sum(p.stat().st_size for p in packs)
    assert pack > len(blob)
    sent = forge.counters["git_bytes_sent"]
    # The pack plus the protocol around it: ref advertisements, pkt-line and side-band
    # headers (5 bytes per packet of at most 64 KB), progress messages.
    assert pack < sent < pack * 1.01 + 16_384
    assert forge.counters["git_bytes_sent_shallow"] == 0


def test_a_shallow_fetch_s_bytes_are_counted_apart(forge: Forge, tmp_path: Path) -> None:
    # A zip's tree is fetched with --depth=1: counted apart from the history a sync fetches.
    blob = random.Random(8).randbytes(1 << 20)
    forge.add_user("u", [RepoSpec("big", files={"blob.bin": blob})])
    forge.push("u", "big", {"blob.bin": blob[::-1]})
    forge.reset_counters()
    git("clone", "--bare", "-q", "--depth=1", f"{forge.url}/u/big.git", str(tmp_path / "s"))
    sent, shallow = forge.counters["git_bytes_sent"], forge.counters["git_bytes_sent_shallow"]
    # The tip's blob only, not its parent's; the ref listing is not shallow.
    assert len(blob) < shallow < sent < 2 * len(blob)
