"""One level-triggered reconciler per kind, independent of the engine they run on.

Each reconciler reads desired state, observes actual state, makes one step
towards the first and writes status with conditions and reasons. They see a
``Client`` (``client``: typed access to objects, on either engine) and a
``turbok.runtime.base.Runtime``, never the apiserver, the CLI or sandboxd.

Modules: ``base`` (Result, errors, the Reconciler contract), ``manager``
(queues, workers, backoff, event routing), ``sandbox``, ``template``,
``warmpool``, ``claim``, ``namespace``, ``quota`` (ResourceQuota status),
``garbage`` (ownerReference garbage collection), ``podspec`` (pod template ->
SandboxSpec), ``restarts`` (how a sandbox ended, restart counts, back-off),
``labels`` (the upstream label and annotation keys).
"""
