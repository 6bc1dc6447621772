"""Dynamic Resource Allocation on the embedded node: kube-scheduler's, the controller-manager's and the
kubelet's parts of DRA, and turbok's own GPU driver.

- ``allocator``: claims allocated from ResourceSlices (structured parameters, CEL selectors, counts,
  ``All``, constraints, ``firstAvailable``, admin access, shared counters, multiple allocations, taints);
  pure, shared by the scheduler, the benchmark and the differential tests.
- ``scheduling``: the scheduler's step that allocates and reserves a Pod's claims before it binds.
- ``claims``: claims made from templates for Pods, reservations of gone Pods dropped, deallocation.
- ``plugins``: the kubelet's plugin registration (a Unix socket per plugin) and the DRA v1 gRPC client;
  ``protos``: those gRPC messages; ``kubeletplugin``: the driver's side, serving turbok's drivers the
  same way; ``cdi``: CDI specs turned into container edits; ``manager``: a Pod's claims prepared before
  its sandbox starts and unprepared after.
- ``nvidia``: the ``gpu.nvidia.com`` driver, real (nvidia-smi, nvproxy) or simulated (``--simulated-gpus``).
- ``setup``: all of it put together for ``turbok.node.node.Node`` (``DraSettings``, ``NodeDraStack``).

Imports what ``turbok.node`` may (``api``, the runtime contract, the Client protocol); docs/dra.md.
"""
