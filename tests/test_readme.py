"""The README's curl walk-through, run as written against a fresh ``aos serve``.

The blocks marked ``sh walkthrough`` run in order in one bash; the block
marked ``sh walkthrough-background`` (the SSE watcher, "in a third terminal")
runs in the background from where it appears. The only change made to the
text is the port, since 8080 may be taken on a test machine.
"""

from __future__ import annotations

import hashlib
import re
import subprocess
from pathlib import Path

from .support import Server

README = Path(__file__).resolve().parent.parent / "README.md"
BLOCK = re.compile(r"```sh (walkthrough(?:-background)?)\n(.*?)```", re.S)


def walkthrough_script(port: int) -> str:
    lines = ["set -euo pipefail"]
    for kind, body in BLOCK.findall(README.read_text()):
        body = body.replace("127.0.0.1:8080", f"127.0.0.1:{port}")
        if kind == "walkthrough-background":
            lines.append(f"( timeout 30 {body.strip()} > stream.out ) &")
            lines.append("STREAM=$!; sleep 0.5")
        else:
            lines.append(body)
        lines.append('echo "<<block>>"')
    lines.append("wait $STREAM")
    return "\n".join(lines)


def test_readme_walkthrough_works_verbatim(tmp_path: Path) -> None:
    # Like `make run`: defaults for everything but the port, no token configured.
    server = Server("sqlite:///aos.db", tmp_path, admin_token=None).start()
    try:
        token_file = tmp_path / ".aos-admin-token"
        assert token_file.is_file() and oct(token_file.stat().st_mode)[-3:] == "600"
        assert token_file.read_text().strip() in server.log(), "printed once at start"
        script = walkthrough_script(server.port)
        result = subprocess.run(
            ["bash", "-c", script], cwd=tmp_path, capture_output=True, text=True, timeout=60
        )
        assert result.returncode == 0, result.stderr + result.stdout
    finally:
        server.stop()
    outputs = result.stdout.split("<<block>>")
    assert '"name":"demo"' in outputs[1]
    assert '"jobId":"hello"' in outputs[2] and '"status":"Queued"' in outputs[2]
    assert '"seq":3' in outputs[4] and '"index":1' in outputs[4]
    assert '"status":"Succeeded"' in outputs[5]
    assert '"output":"Hello, world!"' in outputs[6] and outputs[6].endswith("Hello, world!")
    numbers = "".join(f"{n}\n" for n in range(1, 500_001)).encode()
    uploaded = outputs[7]
    assert f'"size":{len(numbers)}' in uploaded and '"complete":true' in uploaded
    assert f'"sha256":"{hashlib.sha256(numbers).hexdigest()}"' in uploaded
    assert uploaded.endswith("1\n2\n3\n4\n5\n6\n")
    stream = (tmp_path / "stream.out").read_text()
    assert stream.count("event: chunk") == 2 and "event: end" in stream
    assert (tmp_path / "aos.db").is_file(), "the embedded default store"
