"""Decoding untrusted images in worker processes with memory and time limits.

OpenCV's decoders (libjpeg-turbo, libpng, libtiff, libwebp ...) are native code:
a crash there ends the process that called them, and no Python ``try`` catches
it (docs/reliability.md).  The server therefore never decodes in its own
process.  :class:`DecoderPool` keeps a few worker processes that each:

* are started as ``python -m fastimg.serve.sandbox`` (not with
  :mod:`multiprocessing`: its ``spawn`` re-imports the caller's main script,
  and ``fork`` is unsafe in a threaded server), talk over a socket pair, and
  exit when the server process is gone (even in the middle of a decode),
* run with one thread (``OMP_NUM_THREADS=1`` ..., ``cv2.setNumThreads(1)``),
* load their modules once, then cap their address space
  at what they use plus ``memory`` bytes (``RLIMIT_AS``: an allocation past it
  fails inside the worker -- a ``MemoryError`` or a native abort -- instead of
  taking the machine's memory),
* decode with :func:`fastimg.image.load_image` and its limits (the pixel limit,
  checked from the header before decoding; reduced JPEG decoding to the
  working size) and send back the pixels (``decode``), a JPEG thumbnail
  (``thumbnail``), or the image's descriptor vector (``describe``).

``describe`` is what a search by an uploaded image uses: the worker decodes the
file and describes it with the index's descriptor (rebuilt from the spec the
caller passes, :func:`fastimg.features.registry.descriptor_from_spec`, and its
:meth:`~fastimg.features.base.Descriptor.compute`: the compiled kernels, loaded
once at start-up when the pool is given the spec -- the same values bit for bit
as the library's single-image path), and sends back ``dim`` float32 values
instead of the pixels.  The caller then searches by that vector
(``Index.search(vector)``, which ranks it exactly as it ranks the pixels it
would have described itself).  The serving process thus runs neither the
decoder nor the descriptor: the CPU-heavy part of an upload search runs in the
workers, in parallel, outside the server's GIL.

The calling thread sends one task to an idle worker and waits at most
``timeout`` seconds.  A worker that dies (a native crash, the memory cap) or
overruns the timeout is killed and replaced; the call raises
:class:`DecodeFailed` (``reason`` ``"decoder crashed"`` or ``"timeout"``), which
the server answers with a JSON error: the server lives on.  An
:class:`~fastimg.errors.ImageError` raised in the worker (not an image,
truncated, too large ...) is raised again in the caller with its reason.

Nothing here imports FastAPI: the pool is a plain library piece, and the tests
drive it directly (a planted crash, a planted hang).
"""
from __future__ import annotations

import logging
import os
import queue
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from typing import Any, Callable, Optional

from fastimg.errors import ArgumentError, FastimgError, ImageError

__all__ = ["DecoderPool", "DecodeFailed", "PoolClosed"]

log = logging.getLogger("fastimg.serve")

_THREAD_VARS = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMBA_NUM_THREADS",
                "FASTIMG_NUM_THREADS")


class DecodeFailed(FastimgError, RuntimeError):
    """A worker process died or ran out of time on a task (it was replaced).

    Attributes
    ----------
    source : str
        What was being decoded (the name the caller gave).
    reason : str
        ``"decoder crashed"`` (the process died: a native crash or the memory
        cap) or ``"timeout"``.
    """

    def __init__(self, source: str, reason: str, detail: str):
        self.source, self.reason, self.detail = source, reason, detail
        super().__init__(f"{source}: {reason} ({detail})")


class PoolClosed(FastimgError, RuntimeError):
    """The pool was closed (the server is shutting down)."""


# --------------------------------------------------------------------------- #
# the worker process
# --------------------------------------------------------------------------- #

def _vm_size() -> Optional[int]:
    """This process' virtual memory size in bytes (Linux), else None."""
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("VmSize:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def _cap_memory(extra: Optional[int]) -> None:
    if not extra:
        return
    try:
        import resource
    except ImportError:  # pragma: no cover - not POSIX
        return
    used = _vm_size()
    if used is None:  # pragma: no cover - not Linux
        return
    limit = used + int(extra)
    soft, hard = resource.getrlimit(resource.RLIMIT_AS)
    if hard != resource.RLIM_INFINITY:
        limit = min(limit, hard)
    resource.setrlimit(resource.RLIMIT_AS, (limit, hard))


def _die_with_parent() -> None:
    """Exit when the parent process is gone (checked every second by a daemon
    thread: a worker stuck in a decode also goes)."""
    parent = os.getppid()

    def watch() -> None:
        while True:
            time.sleep(1.0)
            if os.getppid() != parent:
                os._exit(0)

    threading.Thread(target=watch, name="fastimg-decoder-watchdog", daemon=True).start()


def _worker_main(fd: int) -> None:
    """Entry point of a worker process: read its settings, warm up, cap memory, then serve tasks."""
    from multiprocessing.connection import Connection

    _die_with_parent()
    for var in _THREAD_VARS:
        os.environ[var] = "1"
    os.environ.setdefault("OPENCV_LOG_LEVEL", "ERROR")
    conn = Connection(fd)
    try:
        max_pixels, memory, test_hooks, warm_spec = conn.recv()
    except (EOFError, OSError):
        return
    import json

    import numpy as np
    import cv2

    from fastimg.errors import DescriptorError
    from fastimg.image import load_image

    cv2.setNumThreads(1)
    descriptors: dict[str, Any] = {}

    def descriptor(spec: dict) -> Any:
        from fastimg.features.registry import descriptor_from_spec

        key = json.dumps(spec, sort_keys=True)
        d = descriptors.get(key)
        if d is None:
            d = descriptors[key] = descriptor_from_spec(spec)
        return d

    # load the decoders, the encoder and the descriptor's kernels once, before the memory cap
    ok, buf = cv2.imencode(".jpg", np.zeros((8, 8, 3), np.uint8))
    load_image(buf.tobytes())
    if warm_spec is not None:
        try:
            descriptor(warm_spec).compute(np.full((64, 64, 3), 128, np.uint8))
        except DescriptorError:  # reported by the first describe task
            pass
    _cap_memory(memory)
    conn.send(("ready", os.getpid()))

    def decode(path: str, max_side: Optional[int]) -> Any:
        return load_image(path, max_pixels=max_pixels, max_side=max_side)

    def describe(path: str, spec: dict) -> Any:
        d = descriptor(spec)
        return d.compute(load_image(path, max_pixels=max_pixels, max_side=d.max_side))

    def thumbnail(path: str, side: int, quality: int) -> bytes:
        img = load_image(path, max_pixels=max_pixels, max_side=side)
        ok, buf = cv2.imencode(".jpg", img, [cv2.IMWRITE_JPEG_QUALITY, int(quality)])
        if not ok:  # pragma: no cover - OpenCV always encodes a BGR uint8 array
            raise ImageError(path, "corrupt", "could not encode the thumbnail")
        return buf.tobytes()

    ops: dict[str, Callable[..., Any]] = {"decode": decode, "thumbnail": thumbnail, "describe": describe}
    if test_hooks:  # planted failures for the tests (a native crash, a hang, an allocation)
        import ctypes

        ops["crash"] = lambda: ctypes.string_at(0)
        ops["sleep"] = lambda s: time.sleep(s)
        ops["allocate"] = lambda n: len(bytearray(int(n)))
    while True:
        try:
            task = conn.recv()
        except (EOFError, OSError):
            return
        if task is None:
            return
        op, args = task
        try:
            conn.send(("ok", ops[op](*args)))
        except ImageError as exc:
            conn.send(("image_error", exc.reason, exc.detail))
        except DescriptorError as exc:  # the spec names no descriptor this fastimg builds alike
            conn.send(("descriptor_error", str(exc)))
        except MemoryError:
            conn.send(("image_error", "too large", "out of memory while decoding (the server's memory limit)"))
        except Exception as exc:  # cv2.error and the like: the image is at fault
            conn.send(("image_error", "corrupt", f"{type(exc).__name__}: {exc}"))


# --------------------------------------------------------------------------- #
# the pool
# --------------------------------------------------------------------------- #

@dataclass
class _Worker:
    proc: "subprocess.Popen[bytes]"
    conn: Any
    ready: bool = False

    @property
    def pid(self) -> int:
        return self.proc.pid


class DecoderPool:
    """Worker processes that decode images and make thumbnails (see the module docstring).

    Parameters
    ----------
    workers : int
        Worker processes.
    timeout : float
        Seconds a task may take before its worker is killed.
    memory : int or None
        Bytes a worker may allocate beyond what it uses after start-up (None:
        no cap).
    max_pixels : int or None
        The loader's pixel limit (:func:`fastimg.image.load_image`).
    start_timeout : float
        Seconds a new worker may take to start (import, warm-up).
    descriptor : dict or None
        A descriptor spec (``Index.descriptor_spec``) whose kernels each worker
        loads at start-up, before its memory cap, so that :meth:`describe` with
        that spec pays no start-up (about a second of Numba loading); None: none.
    """

    def __init__(self, *, workers: int = 2, timeout: float = 10.0,
                 memory: Optional[int] = 1 << 30, max_pixels: Optional[int] = None,
                 start_timeout: float = 120.0, descriptor: Optional[dict] = None, _test_hooks: bool = False):
        from fastimg.image import DEFAULT_MAX_PIXELS

        if workers < 1:
            raise ArgumentError(f"workers must be >= 1; got {workers}")
        self._args = (DEFAULT_MAX_PIXELS if max_pixels is None else max_pixels, memory, _test_hooks,
                      None if descriptor is None else dict(descriptor))
        self.timeout = float(timeout)
        self.start_timeout = float(start_timeout)
        self.size = int(workers)
        self._idle: "queue.Queue[_Worker]" = queue.Queue()
        self._lock = threading.Lock()
        self._all: list[_Worker] = []
        self._closed = False
        self.restarts = 0  # workers replaced after a crash or a timeout
        self.failures: dict[str, int] = {}
        for _ in range(self.size):
            self._idle.put(self._spawn())

    def _spawn(self) -> _Worker:
        from multiprocessing.connection import Connection

        ours, theirs = socket.socketpair()
        env = dict(os.environ)
        # the child imports this very fastimg (a source checkout on sys.path too)
        top = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
        env["PYTHONPATH"] = os.pathsep.join([top] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p])
        try:
            proc = subprocess.Popen([sys.executable, "-m", "fastimg.serve.sandbox", str(theirs.fileno())],
                                    pass_fds=(theirs.fileno(),), stdin=subprocess.DEVNULL,
                                    stdout=subprocess.DEVNULL, env=env, close_fds=True)
        finally:
            theirs.close()
        conn = Connection(ours.detach())
        conn.send(self._args)
        w = _Worker(proc, conn)
        with self._lock:
            self._all.append(w)
        return w

    def _kill(self, w: _Worker) -> None:
        with self._lock:
            if w in self._all:
                self._all.remove(w)
        try:
            if w.proc.poll() is None:
                w.proc.kill()
            w.proc.wait(5)
        except subprocess.TimeoutExpired:  # pragma: no cover - SIGKILL is not ignored
            pass
        finally:
            w.conn.close()

    def wait_ready(self, timeout: Optional[float] = None) -> None:
        """Block until every worker has started (optional: tasks wait for it anyway)."""
        deadline = time.monotonic() + (self.start_timeout if timeout is None else timeout)
        taken = []
        try:
            for _ in range(self.size):
                w = self._idle.get(timeout=max(0.0, deadline - time.monotonic()))
                taken.append(w)
                self._ensure_ready(w, deadline)
        finally:
            for w in taken:
                self._idle.put(w)

    def _ensure_ready(self, w: _Worker, deadline: float) -> None:
        if w.ready:
            return
        if not w.conn.poll(max(0.0, deadline - time.monotonic())):
            raise TimeoutError("a decoder process did not start in time")
        msg = w.conn.recv()
        if msg[0] != "ready":  # pragma: no cover - protocol error
            raise RuntimeError(f"unexpected message from a decoder process: {msg!r}")
        w.ready = True

    def call(self, op: str, *args: Any, source: str = "<image>", timeout: Optional[float] = None) -> Any:
        """Run ``op(*args)`` in a worker; the result, or the worker's ImageError.

        Raises
        ------
        ImageError
            The image is bad (raised in the worker, reason kept).
        DecodeFailed
            The worker crashed or overran the timeout (it was replaced).
        PoolClosed
            The pool is closed.
        """
        if self._closed:
            raise PoolClosed("the decoder pool is closed")
        w = self._idle.get()
        replace = False
        try:
            if self._closed:
                raise PoolClosed("the decoder pool is closed")
            try:
                self._ensure_ready(w, time.monotonic() + self.start_timeout)
            except (EOFError, OSError, TimeoutError) as exc:
                replace = True
                raise DecodeFailed(source, "decoder crashed", f"a decoder process failed to start: {exc}") from None
            try:
                w.conn.send((op, args))
                limit = self.timeout if timeout is None else timeout
                if not w.conn.poll(limit):
                    replace = True
                    self._count("timeout")
                    raise DecodeFailed(source, "timeout", f"decoding took longer than {limit:g} s")
                msg = w.conn.recv()
            except (EOFError, OSError):
                replace = True
                try:
                    code: Optional[int] = w.proc.wait(1)
                except subprocess.TimeoutExpired:
                    code = None
                self._count("decoder crashed")
                how = f"signal {-code}" if code is not None and code < 0 else f"exit status {code}"
                raise DecodeFailed(source, "decoder crashed", f"the decoding process died ({how})") from None
        finally:
            if replace:
                self._kill(w)
                if not self._closed:
                    self.restarts += 1
                    log.warning("decoder process %s replaced (%s)", w.pid, source)
                    w = self._spawn()
            if not self._closed:
                self._idle.put(w)
            elif not replace:
                self._kill(w)
        if msg[0] == "ok":
            return msg[1]
        if msg[0] == "descriptor_error":
            from fastimg.errors import DescriptorError

            raise DescriptorError(msg[1])
        self._count(msg[1])
        raise ImageError(source, msg[1], msg[2])

    def _count(self, reason: str) -> None:
        with self._lock:
            self.failures[reason] = self.failures.get(reason, 0) + 1

    def decode(self, path: str, max_side: Optional[int] = None, *, source: str) -> Any:
        """The image file ``path`` decoded (:func:`fastimg.image.load_image` with the
        pool's pixel limit): a BGR ``uint8`` array, its longer side at most ``max_side``."""
        return self.call("decode", path, max_side, source=source)

    def describe(self, path: str, spec: dict, *, source: str) -> Any:
        """The descriptor vector (float32, ``(dim,)``) of the image file ``path``:
        decoded with the pool's pixel limit at the descriptor's working size and
        described by the descriptor of ``spec`` (``Index.descriptor_spec``).

        Raises
        ------
        DescriptorError
            ``spec`` names no descriptor this fastimg builds with the same
            dimension and version (vectors would not be comparable).
        """
        return self.call("describe", path, dict(spec), source=source)

    def thumbnail(self, path: str, side: int, quality: int = 85, *, source: str) -> bytes:
        """A JPEG of the image file ``path``, its longer side at most ``side``."""
        return self.call("thumbnail", path, int(side), int(quality), source=source)

    def pids(self) -> list[int]:
        with self._lock:
            return [w.pid for w in self._all]

    def close(self) -> None:
        """Stop the workers (idle ones now, busy ones when their task returns)."""
        self._closed = True
        while True:
            try:
                w = self._idle.get_nowait()
            except queue.Empty:
                break
            try:
                w.conn.send(None)
            except OSError:
                pass
            try:
                w.proc.wait(2)
            except subprocess.TimeoutExpired:
                pass
            self._kill(w)


if __name__ == "__main__":  # a worker process (DecoderPool._spawn)
    _worker_main(int(sys.argv[1]))
