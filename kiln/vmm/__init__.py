"""MicroVM monitors speaking Firecracker's REST API (one process per microVM).

* ``monitor.py``  the process: ``python -m kiln.vmm --api-sock PATH --id ID [--jail ...]``
* ``api.py``      Firecracker's API over the QEMU engine (``qemu.py``); ``firecracker.py`` passes
                  it through to a real ``firecracker`` binary instead (and serves the guest's
                  MMDS where Firecracker's vsock forwards it)
* ``model.py``    request bodies parsed and checked as Firecracker does
* ``mux.py``      the guest channel (vsock semantics over virtio-serial; copied into guests)
* ``vsock.py``, ``mmds.py``  the host side of vsock and the metadata service
* ``jail.py``     namespaces, cgroup, pivot_root, unprivileged uid, as Firecracker's jailer
* ``launch.py``   ``start_monitor`` and the startup ``sweep``; ``client.py`` an API client
"""
