"""nftables from inside this process: Debian's libnftables (the library ``nft`` is built on) through ctypes.

A rule change through the ``nft`` program costs a fork and an exec (2-10 ms
here); the same command through the library costs 0.05-0.2 ms, which is what
lets the pod network add a pod's policy elements on every boot. ``Nft`` runs
nft's own command language (the text ``nft -f`` reads), each ``run`` one atomic
transaction: all of it applies or none does.

A context keeps the netlink socket of the network namespace it was made in
(``netns``: made from a thread inside it), whichever thread uses it later.
Thread-safe. Needs root (CAP_NET_ADMIN) and the Debian package ``nftables``
(``libnftables1``).
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import functools
import json
import threading
from pathlib import Path
from typing import Any

from turbok.runtime import netns

__all__ = ["Nft", "NftError", "NftUnavailable"]


class NftError(Exception):
    """nftables refused a command; the message is nft's, with the command it points at."""


class NftUnavailable(NftError):
    """libnftables is not installed, or refused to start."""


@functools.cache
def _library() -> ctypes.CDLL:
    name = ctypes.util.find_library("nftables") or "libnftables.so.1"
    try:
        lib = ctypes.CDLL(name)
    except OSError as e:
        raise NftUnavailable(f"libnftables not found ({e}): install the Debian package nftables") from None
    lib.nft_ctx_new.restype = ctypes.c_void_p
    lib.nft_ctx_new.argtypes = [ctypes.c_uint32]
    lib.nft_ctx_free.argtypes = [ctypes.c_void_p]
    lib.nft_ctx_buffer_output.argtypes = [ctypes.c_void_p]
    lib.nft_ctx_buffer_error.argtypes = [ctypes.c_void_p]
    lib.nft_ctx_get_output_buffer.restype = ctypes.c_char_p
    lib.nft_ctx_get_output_buffer.argtypes = [ctypes.c_void_p]
    lib.nft_ctx_get_error_buffer.restype = ctypes.c_char_p
    lib.nft_ctx_get_error_buffer.argtypes = [ctypes.c_void_p]
    lib.nft_run_cmd_from_buffer.argtypes = [ctypes.c_void_p, ctypes.c_char_p]
    lib.nft_run_cmd_from_buffer.restype = ctypes.c_int
    lib.nft_ctx_output_set_flags.argtypes = [ctypes.c_void_p, ctypes.c_uint]
    lib.nft_ctx_output_get_flags.argtypes = [ctypes.c_void_p]
    lib.nft_ctx_output_get_flags.restype = ctypes.c_uint
    return lib


NFT_CTX_OUTPUT_JSON = 1 << 4


class Nft:
    """One libnftables context, bound to the network namespace ``netns`` (None: the caller's)."""

    def __init__(self, netns_path: Path | None = None) -> None:
        lib = _library()
        ctx = netns.call_in(netns_path, lambda: lib.nft_ctx_new(0)) if netns_path else lib.nft_ctx_new(0)
        if not ctx:
            raise NftUnavailable("libnftables could not make a context")
        lib.nft_ctx_buffer_output(ctx)
        lib.nft_ctx_buffer_error(ctx)
        self._lib = lib
        self._ctx: int | None = ctx
        self._lock = threading.Lock()

    def run(self, commands: str) -> str:
        """Run ``commands`` (nft's language, one transaction); what nft printed, or ``NftError``."""
        return self._run(commands, json_output=False)

    def list_json(self, what: str) -> list[dict[str, Any]]:
        """``list <what>`` as nft's JSON objects (``{"set": {...}}``, ``{"chain": {...}}``...)."""
        out = self._run(f"list {what}", json_output=True)
        items: list[dict[str, Any]] = json.loads(out or '{"nftables": []}')["nftables"]
        return items

    def _run(self, commands: str, *, json_output: bool) -> str:
        with self._lock:
            if self._ctx is None:
                raise NftError("nftables context closed")
            flags = self._lib.nft_ctx_output_get_flags(self._ctx)
            if json_output:
                self._lib.nft_ctx_output_set_flags(self._ctx, flags | NFT_CTX_OUTPUT_JSON)
            try:
                rc = self._lib.nft_run_cmd_from_buffer(self._ctx, commands.encode())
            finally:
                if json_output:
                    self._lib.nft_ctx_output_set_flags(self._ctx, flags)
            out = (self._lib.nft_ctx_get_output_buffer(self._ctx) or b"").decode(errors="replace")
            err = (self._lib.nft_ctx_get_error_buffer(self._ctx) or b"").decode(errors="replace")
        if rc != 0:
            raise NftError(err.strip() or f"nft failed ({rc})")
        return out

    def close(self) -> None:
        with self._lock:
            if self._ctx is not None:
                self._lib.nft_ctx_free(self._ctx)
                self._ctx = None

    def __del__(self) -> None:
        with contextlib.suppress(Exception):  # interpreter shutdown
            self.close()
