"""What provisioned concurrency and layers do to the first invoke, as ratios to a warm invoke
measured in the same run.

    python bench/provisioned.py [--rounds 10] [--init-ms 200]

Per round, three new functions whose module INIT takes ``--init-ms``:
- on demand: the first invoke of a published version (a cold start, INIT included);
- provisioned: the first invoke of a version with provisioned concurrency 1, once READY;
- layers: the first invoke of a function with three layers (Python modules in each), which also
  merges the layers into its /opt the first time;
and the warm invoke (second invoke of the on-demand version) as the baseline.
"""

from __future__ import annotations

import argparse
import io
import json
import statistics
import sys
import tempfile
import time
import zipfile
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.conftest import start_server

ROLE = "arn:aws:iam::000000000000:role/bench"
APP = "import time\ntime.sleep({seconds})\n\ndef handler(event, context):\n    return 1\n"


def zipped(files: dict[str, str]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, content in files.items():
            archive.writestr(name, content)
    return buffer.getvalue()


def timed_invoke(client: Any, name: str, qualifier: str = "$LATEST") -> float:
    started = time.perf_counter()
    response = client.invoke(FunctionName=name, Qualifier=qualifier, Payload=b"{}")
    elapsed = (time.perf_counter() - started) * 1000
    assert "FunctionError" not in response, response["Payload"].read()
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--init-ms", type=int, default=200)
    args = parser.parse_args()
    app = APP.format(seconds=args.init_ms / 1000)
    server = start_server(Path(tempfile.mkdtemp()) / "data")
    samples: dict[str, list[float]] = {"warm": [], "on demand": [], "provisioned": [],
                                       "layers": []}
    try:
        client = server.client()
        layers = [client.publish_layer_version(
            LayerName=f"bench-{i}", Content={"ZipFile": zipped(
                {f"python/mod{i}_{j}.py": f"X = {j}\n" for j in range(50)})})["LayerVersionArn"]
            for i in range(3)]
        for round_ in range(args.rounds):
            names = [f"bench-{kind}-{round_}" for kind in ("cold", "prov", "layers")]
            for name in names:
                client.create_function(
                    FunctionName=name, Runtime="python3.11", Role=ROLE, Handler="app.handler",
                    Code={"ZipFile": zipped({"app.py": app})}, Publish=True,
                    Layers=layers if name == names[2] else [])
            client.put_provisioned_concurrency_config(
                FunctionName=names[1], Qualifier="1", ProvisionedConcurrentExecutions=1)
            while client.get_provisioned_concurrency_config(
                    FunctionName=names[1], Qualifier="1")["Status"] != "READY":
                time.sleep(0.02)
            samples["on demand"].append(timed_invoke(client, names[0], "1"))
            samples["warm"].append(timed_invoke(client, names[0], "1"))
            samples["provisioned"].append(timed_invoke(client, names[1], "1"))
            samples["layers"].append(timed_invoke(client, names[2]))
            for name in names:
                client.delete_function(FunctionName=name)
    finally:
        server.stop()
    warm = statistics.median(samples["warm"])
    report = {kind: {"median_ms": round(statistics.median(values), 2),
                     "x_warm": round(statistics.median(values) / warm, 2)}
              for kind, values in samples.items()}
    print(json.dumps({"rounds": args.rounds, "init_ms": args.init_ms, **report}, indent=2))


if __name__ == "__main__":
    main()
