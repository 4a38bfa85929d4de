"""A real Orthanc with its DICOMweb plug-in for the tests (Debian's `orthanc` and `orthanc-dicomweb`; .ci/run installs
them): loopback only, its own free HTTP port, a temporary storage folder and no DICOM listener."""

import contextlib
import json
import os
import shutil
import socket
import subprocess
import time

import requests

PLUGIN_DIRS = ["/usr/share/orthanc/plugins", "/usr/lib/orthanc"]


def dicomweb_plugin() -> str:
    for d in PLUGIN_DIRS:
        if os.path.isdir(d):
            for name in sorted(os.listdir(d)):
                if name.startswith("libOrthancDicomWeb.so"):
                    return os.path.join(d, name)
    raise AssertionError(f"libOrthancDicomWeb.so not found in {PLUGIN_DIRS}: apt-get install orthanc-dicomweb")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def running_orthanc(tmp):
    """A fresh Orthanc with DICOMweb on a free loopback port, storing under ``tmp``; yields its URLs."""
    os.makedirs(tmp, exist_ok=True)
    exe = shutil.which("Orthanc")
    assert exe, "Orthanc not found: apt-get install orthanc orthanc-dicomweb (the CI script does)"
    port = free_port()
    config = {
        "Name": "monai-vlseg-test", "StorageDirectory": str(tmp / "db"), "IndexDirectory": str(tmp / "db"),
        "HttpPort": port, "RemoteAccessAllowed": False, "AuthenticationEnabled": False,
        "DicomServerEnabled": False, "Plugins": [dicomweb_plugin()],
        "DicomWeb": {"Enable": True, "Root": "/dicom-web/"},
    }  # fmt: skip
    (tmp / "orthanc.json").write_text(json.dumps(config))
    log = open(tmp / "orthanc.log", "w")
    proc = subprocess.Popen([exe, str(tmp / "orthanc.json")], stdout=log, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            log_tail = (tmp / "orthanc.log").read_text()[-2000:] if proc.poll() is not None else ""
            assert proc.poll() is None, f"Orthanc exited ({proc.returncode}): {log_tail}"
            try:
                if requests.get(f"{base}/system", timeout=2).ok:
                    break
            except requests.exceptions.ConnectionError:
                pass
            assert time.monotonic() < deadline, f"Orthanc did not answer on {base}/system within 60 s"
            time.sleep(0.2)
        plugins = requests.get(f"{base}/plugins", timeout=5).json()
        assert "dicom-web" in plugins, plugins
        yield {"base": base, "dicomweb": f"{base}/dicom-web"}
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()
