"""OpenAI's Batch API, for the suite's OpenAI-compatible server (tests/fakes/openai_server.py): `/v1/files`
(multipart upload, content download) and `/v1/batches` (create, retrieve). A batch is worked through in a thread of
its own, one request every `seconds_per_request`, after `delay_s` in `validating`; then its output and error files
are JSONL as OpenAI writes them. On demand a batch expires after `expire_after` requests (its output holds those
done so far, as OpenAI's does), fails validation (`fail_validation`), and single requests fail
(`line_faults`: a marker found in the document -> an HTTP status for that line, in the error file).
"""

from __future__ import annotations

import email.parser
import json
import threading
import time
import uuid
from collections import Counter
from typing import Any


class BatchAPI:
    def __init__(self, answer: Any):
        # (request body) -> (document key, body, status): the fake's own model, its chat completion (200) or refusal
        self.answer = answer
        self.lock = threading.Lock()
        self.files: dict[str, dict[str, Any]] = {}
        self.batches: dict[str, dict[str, Any]] = {}
        self.lines: Counter[str] = Counter()  # document key -> requests answered through a batch
        self.billed = {"prompt_tokens": 0, "completion_tokens": 0}
        self.delay_s = 0.2
        self.seconds_per_request = 0.0
        self.expire_after: int | None = None
        self.fail_validation = False
        self.line_faults: dict[str, int] = {}

    # --- HTTP ------------------------------------------------------------------------------------------------
    def get(self, path: str) -> tuple[int, bytes, str] | None:
        parts = path.split("?")[0].rstrip("/").split("/")
        if "files" in parts and parts[-1] == "content":
            found = self.files.get(parts[-2])
            return (200, found["content"], "application/octet-stream") if found else _missing("file")
        if "batches" in parts and parts[-1] != "batches":
            with self.lock:
                batch = self.batches.get(parts[-1])
                return (200, json.dumps(batch).encode(), "application/json") if batch else _missing("batch")
        return None

    def post(self, path: str, content_type: str, raw: bytes) -> tuple[int, bytes, str] | None:
        tail = path.split("?")[0].rstrip("/")
        if tail.endswith("/files"):
            return self._upload(content_type, raw)
        if tail.endswith("/batches"):
            return self._create(json.loads(raw))
        return None

    def _upload(self, content_type: str, raw: bytes) -> tuple[int, bytes, str]:
        message = email.parser.BytesParser().parsebytes(b"Content-Type: " + content_type.encode() + b"\r\n\r\n" + raw)
        fields = {part.get_param("name", header="content-disposition"): part for part in message.get_payload()}
        content = fields["file"].get_payload(decode=True)
        file = {
            "id": f"file-{uuid.uuid4().hex[:12]}",
            "object": "file",
            "bytes": len(content),
            "created_at": int(time.time()),
            "filename": fields["file"].get_filename() or "upload.jsonl",
            "purpose": fields["purpose"].get_payload(decode=True).decode(),
            "status": "processed",
        }
        self.files[file["id"]] = {**file, "content": content}
        return 200, json.dumps(file).encode(), "application/json"

    def _create(self, request: dict[str, Any]) -> tuple[int, bytes, str]:
        if request.get("input_file_id") not in self.files:
            return _missing("file")
        now = int(time.time())
        batch = {
            "id": f"batch_{uuid.uuid4().hex[:12]}",
            "object": "batch",
            "endpoint": request["endpoint"],
            "input_file_id": request["input_file_id"],
            "completion_window": request.get("completion_window", "24h"),
            "status": "validating",
            "created_at": now,
            "expires_at": now + 86400,
            "output_file_id": None,
            "error_file_id": None,
            "errors": None,
            "request_counts": {"total": 0, "completed": 0, "failed": 0},
        }
        with self.lock:
            self.batches[batch["id"]] = batch
        threading.Thread(target=self._work, args=(batch["id"],), daemon=True).start()
        return 200, json.dumps(batch).encode(), "application/json"

    # --- the batch's own progress ---------------------------------------------------------------------------
    def _set(self, batch_id: str, **changes: Any) -> dict[str, Any]:
        with self.lock:
            self.batches[batch_id].update(changes)
            return dict(self.batches[batch_id])

    def _work(self, batch_id: str) -> None:
        time.sleep(self.delay_s)
        batch = self._set(batch_id)
        if self.fail_validation:
            errors = {"object": "list", "data": [{"code": "invalid_request", "message": "bad input file", "line": 1}]}
            self._set(batch_id, status="failed", failed_at=int(time.time()), errors=errors)
            return
        requests = [json.loads(line) for line in self.files[batch["input_file_id"]]["content"].splitlines() if line]
        self._set(batch_id, status="in_progress", request_counts={"total": len(requests), "completed": 0, "failed": 0})
        output, errors = [], []
        for done, request in enumerate(requests):
            if self.expire_after is not None and done >= self.expire_after:
                self._finish(batch_id, "expired", output, errors, len(requests))
                return
            time.sleep(self.seconds_per_request)
            key, body, answered = self.answer(request["body"])
            text = json.dumps(request["body"].get("messages", []))
            status = next((s for marker, s in self.line_faults.items() if marker in text), answered)
            line: dict[str, Any] = {"id": f"batch_req_{uuid.uuid4().hex[:8]}", "custom_id": request["custom_id"]}
            with self.lock:
                self.lines[key] += 1
            if status == 200:
                with self.lock:
                    for name in self.billed:
                        self.billed[name] += body["usage"][name]
                line |= {"response": {"status_code": 200, "request_id": "req", "body": body}, "error": None}
                output.append(line)
            else:
                error = {"message": f"status {status}", "type": "server_error" if status >= 500 else "invalid"}
                refused = body if status == answered else {"error": error}  # the model's own refusal, or a fault's
                line |= {"response": {"status_code": status, "request_id": "req", "body": refused}}
                errors.append(line | {"error": None})
        self._finish(batch_id, "completed", output, errors, len(requests))

    def _finish(self, batch_id: str, status: str, output: list[Any], errors: list[Any], total: int) -> None:
        ids: dict[str, Any] = {"output_file_id": None, "error_file_id": None}
        for name, lines in (("output_file_id", output), ("error_file_id", errors)):
            if lines:
                file_id = f"file-{uuid.uuid4().hex[:12]}"
                content = "".join(json.dumps(line) + "\n" for line in lines).encode()
                self.files[file_id] = {"id": file_id, "object": "file", "bytes": len(content), "content": content}
                ids[name] = file_id
        counts = {"total": total, "completed": len(output), "failed": len(errors)}
        self._set(batch_id, status=status, request_counts=counts, **{f"{status}_at": int(time.time())}, **ids)


def _missing(what: str) -> tuple[int, bytes, str]:
    body = {"error": {"message": f"no such {what}", "type": "invalid_request_error", "param": None, "code": None}}
    return 404, json.dumps(body).encode(), "application/json"
