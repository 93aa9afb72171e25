"""Imported at start-up only by daemons that a test starts with this folder on
PYTHONPATH (`tests.support.aws_call_log.recording`): every AWS call the daemon
makes is appended to $POLLER_TEST_AWS_CALL_LOG as `service operation`, taken
from botocore's `before-call` event — the client's own record of each call."""

import os

_path = os.environ.get("POLLER_TEST_AWS_CALL_LOG")
if _path:
    import botocore.handlers

    def _record(model: object, **_: object) -> None:
        service = model.service_model.service_name  # type: ignore[attr-defined]
        with open(_path, "a", encoding="utf-8") as fh:  # type: ignore[arg-type]
            fh.write(f"{service} {model.name}\n")  # type: ignore[attr-defined]

    botocore.handlers.BUILTIN_HANDLERS.append(("before-call", _record))
