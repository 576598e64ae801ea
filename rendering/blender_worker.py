"""A persistent Blender worker process: imports bpy once, then runs jobs until stdin closes.

Protocol: one JSON request per line on stdin ``{"id", "fn": "rendering.module:function",
"kwargs"}``; one JSON reply per line on the file descriptor named by FLYWHEEL_RESULT_FD:
``{"id", "ok": true, "result"}`` or ``{"id", "ok": false, "error"}``. Replies do not use
stdout because Blender writes its own progress there; stdout and stderr go to the worker's
log file (see rendering/workers.py), never to /dev/null.
"""

from __future__ import annotations

import importlib
import json
import os
import sys
import time
import traceback


def main() -> None:
    replies = os.fdopen(int(os.environ["FLYWHEEL_RESULT_FD"]), "w", buffering=1)
    start = time.perf_counter()
    from rendering import blender_backend

    blender_backend.factory_reset()
    replies.write(json.dumps({"ready": True, "pid": os.getpid(), "startup_s": time.perf_counter() - start}) + "\n")
    for line in sys.stdin:
        request = json.loads(line)
        module_name, _, fn_name = request["fn"].partition(":")
        try:
            if not module_name.startswith("rendering."):
                raise ValueError(f"refusing job function outside rendering/: {request['fn']}")
            fn = getattr(importlib.import_module(module_name), fn_name)
            reply = {"id": request["id"], "ok": True, "result": fn(**request["kwargs"])}
        except Exception as e:  # the job failed; the worker lives on
            traceback.print_exc()
            reply = {"id": request["id"], "ok": False, "error": f"{type(e).__name__}: {e}"}
        sys.stdout.flush()
        replies.write(json.dumps(reply) + "\n")


if __name__ == "__main__":
    main()
