"""The S3 multipart upload holds no part in memory (issue 26 item 5): each part is streamed
from the file. Measured as the uploading process's peak RSS (a fresh process, moto_server
over HTTP), not by the clock."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import orjson

MIB = 1024 * 1024
PART_MB = 16

_UPLOAD = """
import os, resource, sys
import orjson
from bulkbackup.config import StoreSettings
from bulkbackup.store.s3 import S3Store

def peak_kb() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux

store = S3Store(StoreSettings(url="s3://memory-test", multipart_threshold_mb=5,
                              multipart_part_mb=int(sys.argv[3])))
store.put_file("u/warm.bundle", sys.argv[1], {"LastSync": "x"})  # boto's lazy imports, pools
before = peak_kb()
store.put_file("u/big.bundle", sys.argv[2], {"LastSync": "x"})
head = store.head("u/big.bundle")
print(orjson.dumps({"before_kb": before, "after_kb": peak_kb(),
                    "size": head.size if head else -1}).decode())
"""


def _file(path: Path, size: int) -> Path:
    with open(path, "wb") as f:
        block = os.urandom(MIB)  # incompressible, and not one repeated page
        for i in range(size // MIB):
            f.write(block[i % 7:] + block[: i % 7])
        f.write(os.urandom(size % MIB))
    return path


def test_multipart_upload_peak_memory_is_below_one_part(s3_endpoint: str, tmp_path: Path
                                                        ) -> None:
    warm = _file(tmp_path / "warm", 6 * MIB)  # multipart too (threshold 5 MiB), one part
    big = _file(tmp_path / "big", 4 * PART_MB * MIB + 123)  # five parts
    proc = subprocess.run([sys.executable, "-c", _UPLOAD, str(warm), str(big), str(PART_MB)],
                          capture_output=True, text=True, timeout=300,
                          env={**os.environ, "PYTHONPATH": str(Path(__file__).parents[1])})
    assert proc.returncode == 0, proc.stderr[-2000:]
    figures = orjson.loads(proc.stdout)
    assert figures["size"] == big.stat().st_size
    growth_kb = figures["after_kb"] - figures["before_kb"]
    # Reading parts into memory grows the peak by at least a part (two while the next is
    # read); streamed, by what boto and the socket buffer: well under one part.
    assert growth_kb * 1024 < PART_MB * MIB // 2, figures
