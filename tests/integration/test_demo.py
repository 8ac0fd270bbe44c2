"""``freshet demo`` ends (on its own, or on Ctrl-C) with every emitted row in the offline log,
and says so only when it checked it."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from pipeline_harness import LABEL, VIEW, offline_rows, scrape, wait_until
from redis_servers import free_port

_FRESHET = [sys.executable, "-c", "import sys; from freshet.cli import main; sys.exit(main())"]
_DONE = re.compile(r"all ([\d,]+)\s+rows it emitted are in Redis and in the offline log")


@pytest.mark.parametrize("interrupt", [False, True], ids=["to_the_end", "ctrl_c"])
def test_the_demo_ends_with_every_emitted_row_in_the_offline_log(
    interrupt: bool, kafka_bootstrap: str, redis_url: str, tmp_path: Path
) -> None:
    offline = tmp_path / "data" / "offline"
    env = {
        **os.environ,
        "FRESHET_KAFKA_BOOTSTRAP": kafka_bootstrap,
        "FRESHET_REDIS_URL": redis_url,
        "FRESHET_OFFLINE_DIR": str(offline),
        "COLUMNS": "200",
    }
    out = tmp_path / "demo.out"
    port = free_port()
    with open(out, "wb") as sink:
        demo = subprocess.Popen(
            [*_FRESHET, "demo", "--seconds", "4" if not interrupt else "60", "--rate", "300",
             "--metrics-port", str(port)],
            env=env, stdout=sink, stderr=subprocess.STDOUT, cwd=tmp_path,
        )  # fmt: skip
        try:
            if interrupt:
                # Mid-stream: the flow has emitted rows and the producer is still going.
                wait_until(
                    lambda: scrape(port).get(f"freshet_rows_emitted_total{LABEL}", 0) > 0,
                    timeout=90,
                    what="the flow's first rows",
                )
                demo.send_signal(signal.SIGINT)
            code = demo.wait(timeout=120)
        finally:
            if demo.poll() is None:
                demo.kill()
    text = out.read_text(errors="replace")
    assert code == 0, text[-3000:]
    assert "Traceback" not in text, text[-3000:]
    found = _DONE.findall(text)
    assert len(found) == 1, text[-3000:]
    emitted = int(found[0].replace(",", ""))
    assert emitted > 0
    assert len(offline_rows(offline, VIEW, dedupe=False)) == emitted
