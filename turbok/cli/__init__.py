"""The ``turbok`` command: one typer sub-app per noun, wired in ``main.py``.

Each module here owns the commands of one part (``control`` for the embedded
control plane, ``objects`` for get/apply/delete, ``sandbox``, ``checkpoint``,
``conformance``, ``upgrade``). Commands parse arguments, call the library and
render; the work itself lives in the library. Heavy imports stay inside the
command functions so that ``turbok --help`` and ``turbok sandbox exec`` start
fast.
"""
