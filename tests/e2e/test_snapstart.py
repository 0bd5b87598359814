"""SnapStart through boto3 against ``kiln serve``: the configuration fields and their errors,
and published versions whose environments are forks of one post-INIT template -- INIT ran once,
yet every fork has its own random sequence, /tmp, processes and log stream, and none can reach
another."""

from __future__ import annotations

import base64
import json
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from tests.conftest import (
    ROLE,
    create_python_function,
    expect_error,
    make_zip,
    unique_name,
    wait_for,
)
from tests.e2e.test_isolation_cleanup import footprint

#: Module level is INIT: it counts its runs in the shared directory.  Each invocation waits at
#: a barrier (``wait``: how many must arrive) so that concurrent ones need two environments.
SNAPPED = r'''
import ctypes, errno, os, random, signal, time, uuid

TOKEN = uuid.uuid4().hex
SHARED = os.environ["SHARED"]
with open(os.path.join(SHARED, "inits"), "a") as f:
    f.write(TOKEN + "\n")
libc = ctypes.CDLL(None, use_errno=True)


def refused(call):
    ctypes.set_errno(0)
    return "ok" if call() == 0 else errno.errorcode.get(ctypes.get_errno(), "?")


def handler(event, context):
    if not os.path.exists("/tmp/marker"):
        with open("/tmp/marker", "w") as f:
            f.write(context.aws_request_id)
    mine = open("/tmp/marker").read()
    arrived = os.path.join(SHARED, f"{event['round']}-{context.aws_request_id}")
    open(arrived, "w").close()
    deadline = time.time() + 20
    while (len([n for n in os.listdir(SHARED) if n.startswith(event["round"] + "-")])
           < event["wait"] and time.time() < deadline):
        time.sleep(0.01)
    answer = {"token": TOKEN, "marker": mine, "random": random.random(),
              "stream": context.log_stream_name, "now": time.time()}
    if event.get("attack"):
        pids = sorted(int(n) for n in os.listdir("/proc") if n.isdigit())
        others = {}
        for pid in pids:
            try:
                others[pid] = open(f"/proc/{pid}/root/tmp/marker").read()
            except OSError as exc:
                others[pid] = errno.errorcode.get(exc.errno, "?")
        answer.update(pids=pids, others=others,
                      unshare=refused(lambda: libc.unshare(0x10000000)),
                      mount=refused(lambda: libc.mount(b"none", b"/tmp", b"tmpfs", 0, None)),
                      kill=refused(lambda: libc.kill(-1, signal.SIGKILL)))  # all it may, but itself
    return answer
'''

HANDLER = "def handler(event, context):\n    return 'ok'\n"


def _create(lambda_api: Any, function_name: str, **kwargs: Any) -> dict[str, Any]:
    return dict(lambda_api.create_function(
        FunctionName=function_name, Runtime=kwargs.pop("Runtime", "python3.11"), Role=ROLE,
        Handler="app.handler", Code={"ZipFile": make_zip({"app.py": HANDLER})}, **kwargs))


def test_snapstart_configuration_and_versions(lambda_client: Any) -> None:
    name = unique_name("snap")
    created = _create(lambda_client, name,
                      SnapStart={"ApplyOn": "PublishedVersions"})
    assert created["SnapStart"] == {"ApplyOn": "PublishedVersions", "OptimizationStatus": "Off"}
    version = lambda_client.publish_version(FunctionName=name)
    assert version["SnapStart"]["ApplyOn"] == "PublishedVersions"
    got = lambda_client.get_function_configuration(FunctionName=name, Qualifier=version["Version"])
    assert got["SnapStart"] == version["SnapStart"]
    latest = lambda_client.get_function_configuration(FunctionName=name)
    assert latest["SnapStart"] == {"ApplyOn": "PublishedVersions", "OptimizationStatus": "Off"}
    # Publishing again without a change answers the same version (OptimizationStatus aside).
    assert lambda_client.publish_version(FunctionName=name)["Version"] == version["Version"]

    updated = lambda_client.update_function_configuration(FunctionName=name,
                                                           SnapStart={"ApplyOn": "None"})
    assert updated["SnapStart"] == {"ApplyOn": "None", "OptimizationStatus": "Off"}
    plain = lambda_client.publish_version(FunctionName=name)
    assert plain["Version"] != version["Version"]
    assert plain["SnapStart"] == {"ApplyOn": "None", "OptimizationStatus": "Off"}

    default = _create(lambda_client, unique_name("snap"))
    assert default["SnapStart"] == {"ApplyOn": "None", "OptimizationStatus": "Off"}


def test_snapstart_errors(lambda_client: Any) -> None:
    name = unique_name("snap")
    error = expect_error(lambda_client, "ValidationException", 400, _create,
                         lambda_api=lambda_client, function_name=name,
                         SnapStart={"ApplyOn": "Always"})
    assert "'Always' at 'snapStart.applyOn'" in error.response["Error"]["Message"]
    error = expect_error(lambda_client, "InvalidParameterValueException", 400, _create,
                         lambda_api=lambda_client, function_name=name, Runtime="provided.al2023",
                         SnapStart={"ApplyOn": "PublishedVersions"})
    assert error.response["Error"]["Message"] == (
        "provided.al2023 is not supported for SnapStart enabled functions.")
    # Nothing was written by the rejected requests.
    expect_error(lambda_client, "ResourceNotFoundException", 404,
                 lambda_client.get_function, FunctionName=name)

    _create(lambda_client, name)
    expect_error(lambda_client, "ValidationException", 400,
                 lambda_client.update_function_configuration, FunctionName=name,
                 SnapStart={})
    expect_error(lambda_client, "InvalidParameterValueException", 400,
                 lambda_client.update_function_configuration, FunctionName=name,
                 Runtime="provided.al2023", SnapStart={"ApplyOn": "PublishedVersions"})
    unchanged = lambda_client.get_function_configuration(FunctionName=name)
    assert unchanged["Runtime"] == "python3.11"
    assert unchanged["SnapStart"] == {"ApplyOn": "None", "OptimizationStatus": "Off"}


def _invoke(client: Any, name: str, event: dict[str, Any]) -> tuple[dict[str, Any], str]:
    response = client.invoke(FunctionName=name, Payload=json.dumps(event).encode(),
                             LogType="Tail")
    body = json.loads(response["Payload"].read())
    assert "FunctionError" not in response, body
    return body, base64.b64decode(response["LogResult"]).decode()


def _together(client: Any, name: str, round_name: str,
              extra: dict[str, Any] | None = None) -> list[tuple[dict[str, Any], str]]:
    """Two invokes held at a barrier until both arrived: two environments serve them."""
    event = {"round": round_name, "wait": 2, **(extra or {})}
    with ThreadPoolExecutor(2) as pool:
        return list(pool.map(lambda _: _invoke(client, name, event), range(2)))


def test_forks_of_one_template(lambda_client: Any, shared_dir: Path) -> None:
    name = create_python_function(lambda_client, SNAPPED,
                                  Environment={"Variables": {"SHARED": str(shared_dir)}},
                                  SnapStart={"ApplyOn": "PublishedVersions"})
    version = lambda_client.publish_version(FunctionName=name)
    assert version["SnapStart"] == {"ApplyOn": "PublishedVersions", "OptimizationStatus": "On"}
    qualified = f"{name}:{version['Version']}"
    assert wait_for((shared_dir / "inits").exists)  # INIT ran on PublishVersion, no invoke yet

    first = _together(lambda_client, qualified, "one")
    answers = [body for body, _log in first]
    assert len({a["token"] for a in answers}) == 1  # the module's state came from one INIT
    assert len({a["stream"] for a in answers}) == 2  # ... in two environments
    assert len({a["marker"] for a in answers}) == 2  # each with its own /tmp
    assert answers[0]["random"] != answers[1]["random"]  # re-seeded per fork
    for _body, log in first:
        assert "Restore Duration: " in log and "Init Duration" not in log, log
    inits = (shared_dir / "inits").read_text().split()
    assert inits == [answers[0]["token"]]

    # Warm again: the same two forks, /tmp kept; no REPORT tells of a restore any more.
    again = _together(lambda_client, qualified, "two")
    assert {b["marker"] for b, _ in again} == {a["marker"] for a in answers}
    assert all("Restore Duration" not in log for _, log in again)

    # $LATEST is not optimised: its environment runs INIT itself.
    latest, log = _invoke(lambda_client, name, {"round": "latest", "wait": 1})
    assert latest["token"] != answers[0]["token"] and "Init Duration: " in log
    assert len((shared_dir / "inits").read_text().split()) == 2


def test_a_fork_cannot_reach_another(lambda_client: Any, shared_dir: Path) -> None:
    name = create_python_function(lambda_client, SNAPPED,
                                  Environment={"Variables": {"SHARED": str(shared_dir)}},
                                  SnapStart={"ApplyOn": "PublishedVersions"})
    qualified = f"{name}:{lambda_client.publish_version(FunctionName=name)['Version']}"
    before = {body["marker"] for body, _ in _together(lambda_client, qualified, "one")}
    attack, _log = _invoke(lambda_client, qualified, {"round": "attack", "wait": 1,
                                                      "attack": True})
    assert attack["marker"] in before
    assert attack["pids"] == [1]  # only itself: neither the template nor the other fork
    assert attack["others"] == {"1": attack["marker"]}
    assert attack["unshare"] == "EPERM" and attack["mount"] == "EPERM"  # the full filter
    assert attack["kill"] == "ESRCH"  # nobody to signal
    # Both forks survived the kill(-1) and kept their own /tmp.
    after = _together(lambda_client, qualified, "after")
    assert {body["marker"] for body, _ in after} == before


def test_snapstart_init_failure(lambda_client: Any) -> None:
    name = create_python_function(lambda_client, "raise ValueError('no config')\n",
                                  SnapStart={"ApplyOn": "PublishedVersions"})
    version = lambda_client.publish_version(FunctionName=name)["Version"]
    for _ in range(2):  # no template was kept: INIT runs (and fails) again
        response = lambda_client.invoke(FunctionName=f"{name}:{version}")
        body = json.loads(response["Payload"].read())
        assert response["FunctionError"] == "Unhandled"
        assert body["errorType"] == "ValueError" and body["errorMessage"] == "no config"


def _processes_of(function_name: str) -> list[int]:
    """Host pids of every process (template or fork) running ``function_name``."""
    marker = f"\0AWS_LAMBDA_FUNCTION_NAME={function_name}\0".encode()
    found = []
    for entry in Path("/proc").iterdir():
        try:
            if entry.name.isdigit() and marker in b"\0" + (entry / "environ").read_bytes():
                found.append(int(entry.name))
        except OSError:
            pass
    return found


def test_delete_leaves_no_fork_nor_template(lambda_client: Any, shared_dir: Path) -> None:
    name = create_python_function(lambda_client, SNAPPED,
                                  Environment={"Variables": {"SHARED": str(shared_dir)}},
                                  SnapStart={"ApplyOn": "PublishedVersions"})
    qualified = f"{name}:{lambda_client.publish_version(FunctionName=name)['Version']}"
    body, _log = _invoke(lambda_client, qualified, {"round": "one", "wait": 1})
    fork = footprint(body["stream"])
    assert len(fork.pids) == 2  # the fork's runtime and its supervisor, in its own cgroup
    assert set(fork.pids) < set(_processes_of(name))  # ... and the template (and a spare)
    lambda_client.delete_function(FunctionName=name)
    assert wait_for(fork.gone, 10), fork.left()
    assert wait_for(lambda: not _processes_of(name), 10)


#: What INIT may do in a template (documented: it runs with unshare and mount allowed, so
#: that its forks can make their namespaces), tried in a child so the template stays intact.
TEMPLATE_PROBE = r'''
import ctypes, errno, os

libc = ctypes.CDLL(None, use_errno=True)


def in_child(call):
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:
        ctypes.set_errno(0)
        result = "ok" if call() == 0 else errno.errorcode.get(ctypes.get_errno(), "?")
        os.write(write, result.encode())
        os._exit(0)
    os.close(write)
    os.waitpid(pid, 0)
    return os.read(read, 100).decode()


INIT = {"unshare_user": in_child(lambda: libc.unshare(0x10000000)),
        "unshare_net": in_child(lambda: libc.unshare(0x40000000)),
        "ptrace": in_child(lambda: libc.ptrace(0, 0, None, None)),
        "mount": in_child(lambda: libc.mount(b"none", b"/tmp", b"tmpfs", 0, None)),
        "setns": in_child(lambda: libc.setns(0, 0))}


def handler(event, context):
    return INIT
'''


def test_what_init_may_do_in_a_template(lambda_client: Any) -> None:
    name = create_python_function(lambda_client, TEMPLATE_PROBE,
                                  SnapStart={"ApplyOn": "PublishedVersions"})
    version = lambda_client.publish_version(FunctionName=name)["Version"]
    body, _log = _invoke(lambda_client, f"{name}:{version}", {})
    assert body == {"unshare_user": "ok",  # the larger surface: a user namespace of its own
                    "unshare_net": "EPERM",  # anything else needs one first
                    "ptrace": "EPERM", "mount": "EPERM", "setns": "EPERM"}


def test_a_version_kiln_cannot_fork_runs_init_per_environment(lambda_client: Any) -> None:
    layer = lambda_client.publish_layer_version(
        LayerName=unique_name("layer"), Content={"ZipFile": make_zip({"python/lib.py": "X = 1"})})
    name = create_python_function(
        lambda_client, "import lib\n\ndef handler(event, context):\n    return lib.X\n",
        Layers=[layer["LayerVersionArn"]], SnapStart={"ApplyOn": "PublishedVersions"})
    version = lambda_client.publish_version(FunctionName=name)
    assert version["SnapStart"]["OptimizationStatus"] == "On"
    response = lambda_client.invoke(FunctionName=f"{name}:{version['Version']}", LogType="Tail")
    assert json.loads(response["Payload"].read()) == 1
    # Layers keep a runtime off the zygote, so off SnapStart templates: INIT ran here.
    assert "Init Duration: " in base64.b64decode(response["LogResult"]).decode()
