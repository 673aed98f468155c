"""A minimal MLflow REST server, enough for MlflowClient's experiments, runs, updates and log-batch.

usage: fake_mlflow_server.py PORT_FILE    serves on a free port of 127.0.0.1 and writes the port to PORT_FILE;
GET /status answers {run_id: {"status": ..., "metrics": {name: [steps]}, "params": {...}, "tags": {...}}}.
MLflow's own server is not part of mlflow-skinny; this stands in for a team's tracking server.
"""
import json
import sys
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlparse

experiments, runs = {}, {}
MISSING = {"error_code": "RESOURCE_DOES_NOT_EXIST", "message": "not found"}


def run_json(r):
    pairs = lambda d: [{"key": k, "value": v} for k, v in d.items()]  # noqa: E731
    return {"info": r["info"], "data": {"params": pairs(r["params"]), "tags": pairs(r["tags"]), "metrics": []}}


class Handler(BaseHTTPRequestHandler):
    def log_message(self, *args): pass

    def answer(self, code, obj):
        body = json.dumps(obj).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def handle_request(self, body):
        url = urlparse(self.path)
        query, path = {k: v[0] for k, v in parse_qs(url.query).items()}, url.path
        if path.endswith("/experiments/get-by-name"):
            e = experiments.get(query.get("experiment_name"))
            return self.answer(200, {"experiment": e}) if e else self.answer(404, MISSING)
        if path.endswith("/experiments/create"):
            e = {"experiment_id": str(len(experiments) + 1), "name": body["name"], "lifecycle_stage": "active",
                 "artifact_location": "/nonexistent"}
            experiments[body["name"]] = e
            return self.answer(200, {"experiment_id": e["experiment_id"]})
        if path.endswith("/runs/create"):
            rid = uuid.uuid4().hex
            info = {"run_id": rid, "run_uuid": rid, "experiment_id": body["experiment_id"], "status": "RUNNING",
                    "run_name": body.get("run_name", "run"), "start_time": int(time.time() * 1000),
                    "lifecycle_stage": "active", "artifact_uri": "/nonexistent/" + rid}
            runs[rid] = {"info": info, "params": {}, "tags": {}, "metrics": {}}
            return self.answer(200, {"run": run_json(runs[rid])})
        if path.endswith("/runs/get"):
            r = runs.get(query.get("run_id"))
            return self.answer(200, {"run": run_json(r)}) if r else self.answer(404, MISSING)
        if path.endswith("/runs/update"):
            r = runs[body["run_id"]]
            r["info"]["status"] = body.get("status", r["info"]["status"])
            return self.answer(200, {"run_info": r["info"]})
        if path.endswith("/runs/log-batch"):
            r = runs[body["run_id"]]
            for m in body.get("metrics", []): r["metrics"].setdefault(m["key"], []).append(int(m.get("step", 0)))
            for kind in ("params", "tags"):
                for p in body.get(kind, []): r[kind][p["key"]] = p["value"]
            return self.answer(200, {})
        if path == "/status":
            return self.answer(200, {rid: {"status": r["info"]["status"], "metrics": r["metrics"], "params": r["params"],
                                           "tags": r["tags"]} for rid, r in runs.items()})
        return self.answer(404, {"error_code": "ENDPOINT_NOT_FOUND", "message": path})

    def do_GET(self): self.handle_request({})

    def do_POST(self):
        length = int(self.headers.get("Content-Length") or 0)
        self.handle_request(json.loads(self.rfile.read(length) or b"{}"))


server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
with open(sys.argv[1], "w") as f: f.write(str(server.server_address[1]))
server.serve_forever()
