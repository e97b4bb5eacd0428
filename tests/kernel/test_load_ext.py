"""`%load_ext cave` in the stock IPython kernel: agent cells run blocking, with the same results."""

from __future__ import annotations

import json
import os
from pathlib import Path

from jupyter_client.manager import start_new_kernel


def test_agent_cells_work_in_a_stock_kernel_with_load_ext(tmp_path: Path) -> None:
    script = tmp_path / "script.json"
    script.write_text(json.dumps([{"code": ["answer = 6 * 7\nprint('computed', answer)"]},
                                  {"text": "It is 42."}]))
    env = {**os.environ, "CAVE_SCRIPT": str(script)}
    km, kc = start_new_kernel(kernel_name="python3", env=env, cwd=str(tmp_path))
    try:
        outputs: list[str] = []

        def keep(msg: dict) -> None:
            if msg["msg_type"] not in ("stream", "display_data", "update_display_data", "error"):
                return
            content = msg["content"]
            outputs.append(content.get("text", "") + json.dumps(content.get("data", {})))

        assert kc.execute_interactive("%load_ext cave", timeout=60)["content"]["status"] == "ok"
        reply = kc.execute_interactive("%%agent -o answer\nwhat is 6 times 7?", timeout=120,
                                       output_hook=keep)
        assert reply["content"]["status"] == "ok", outputs
        text = "\n".join(outputs)
        assert "computed 42" in text and "It is 42." in text and "2 steps" in text
        check = kc.execute_interactive("print(answer)", timeout=30, output_hook=keep)
        assert check["content"]["status"] == "ok" and outputs[-1].startswith("42")
    finally:
        kc.stop_channels()
        km.shutdown_kernel(now=True)
