"""Library pages mapped only by imports are unmapped, and nothing that holds data is."""
from __future__ import annotations

import json
import subprocess
import sys
import textwrap

from mxserve.common.import_pages import parse_smaps

SMAPS = """\
7f0000000000-7f0000100000 r-xp 00010000 08:01 123  /lib/libmxnet.so
Rss:                 800 kB
Anonymous:             0 kB
Locked:                0 kB
VmFlags: rd ex mr mw me
7f0000100000-7f0000110000 r--p 00110000 08:01 123  /lib/libmxnet.so
Rss:                  64 kB
Anonymous:            64 kB
7f0000110000-7f0000120000 rw-p 00120000 08:01 123  /lib/libmxnet.so
Rss:                  64 kB
Anonymous:             0 kB
7f0000120000-7f0000130000 r--s 00000000 08:01 456  /dev/shm/metrics db
Rss:                  64 kB
Anonymous:             0 kB
7f0000130000-7f0000140000 r-xp 00000000 08:01 789  /lib/not touched.so
Rss:                   0 kB
Anonymous:             0 kB
7f0000140000-7f0000150000 r-xp 00000000 00:00 0    [vdso]
Rss:                   4 kB
Anonymous:             0 kB
7f0000150000-7f0000160000 rw-p 00000000 00:00 0
Rss:                  64 kB
Anonymous:            64 kB
"""


def test_only_clean_read_only_private_file_regions_are_releasable():
    regions = parse_smaps(SMAPS.splitlines(keepends=True))
    assert [(r.path, r.perms) for r in regions] == [
        ("/lib/libmxnet.so", "r-xp"), ("/lib/libmxnet.so", "r--p"),
        ("/lib/libmxnet.so", "rw-p"), ("/dev/shm/metrics db", "r--s"),
        ("/lib/not touched.so", "r-xp"), ("[vdso]", "r-xp"), ("", "rw-p")]
    assert regions[0].start == 0x7F0000000000 and regions[0].kib["Rss"] == 800
    # Relocated read-only data holds copy-on-write pages; writable and shared regions and
    # the kernel's own are never touched; nothing mapped, nothing to do.
    assert [r.releasable for r in regions] == [True, False, False, False, False, False, False]


def test_a_process_keeps_working_after_its_import_pages_are_released():
    """A real interpreter that imported numpy: its import-only pages are unmapped, and
    numpy's FFT, whose code was unmapped, maps it back and computes the right answer."""
    script = textwrap.dedent("""
        import json
        import numpy as np
        from mxserve.common.import_pages import read_regions, release_import_pages

        def kib(releasable_only=False, path_part=""):
            return sum(r.kib.get("Rss", 0) for r in read_regions()
                       if path_part in r.path and (r.releasable or not releasable_only)
                       and (not path_part or "x" in r.perms))  # a library's code

        before = kib(releasable_only=True)
        fft_before = kib(path_part="_pocketfft_internal")
        released = release_import_pages()
        # OpenBLAS's threads run their code meanwhile: not every page stays unmapped.
        left = kib(releasable_only=True)
        fft_released = kib(path_part="_pocketfft_internal")
        spectrum = np.fft.rfft(np.ones(64))
        print(json.dumps({"before": before, "released": released, "left": left,
                          "fft": [fft_before, fft_released,
                                  kib(path_part="_pocketfft_internal")],
                          "dc": float(spectrum[0].real), "rest": float(abs(spectrum[1:]).max())}))
    """)
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                         check=True, timeout=60)
    figures = json.loads(out.stdout)
    assert figures["released"] > 1000  # KiB: numpy, the interpreter's own modules, libc...
    assert figures["released"] == figures["before"]
    assert figures["left"] < figures["before"] / 4
    fft_before, fft_released, fft_used = figures["fft"]
    assert fft_before > 0 and fft_released == 0 and fft_used > 0
    assert figures["dc"] == 64.0 and figures["rest"] < 1e-9
