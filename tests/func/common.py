"""Helpers for the functional tests: temp dirs, sparse raw images, real
`diskstack mount` / `diskstack serve` daemons, qemu-img, and the few libc
calls python's os module lacks (fallocate).

Waiting is always on the event itself: a mount is "up" when its path appears
in /proc/self/mountinfo, "down" when it is gone, a daemon has stopped when
waitpid says so.  The short poll interval is not a sleep standing in for an
event, and every wait has an overall timeout so a broken daemon fails the test
instead of hanging the suite.

run.py sets DISKSTACK_BIN (the binary under test) and DISKSTACK_TEST_TMP (a
directory owned by this one test, which run.py cleans up after a timeout).
"""

import ctypes
import ctypes.util
import errno
import fcntl
import math
import os
import random
import shutil
import signal
import struct
import subprocess
import tempfile
import threading
import time
import unittest

MiB = 1024 * 1024
MOUNT_TIMEOUT = 15.0      # seconds for a daemon to mount or to exit
POLL_INTERVAL = 0.01      # mountinfo poll period while waiting for an event

FALLOC_FL_KEEP_SIZE = 0x01
FALLOC_FL_PUNCH_HOLE = 0x02
FALLOC_FL_COLLAPSE_RANGE = 0x08
FALLOC_FL_ZERO_RANGE = 0x10
FALLOC_FL_INSERT_RANGE = 0x20

SEEK_DATA = getattr(os, 'SEEK_DATA', 3)
SEEK_HOLE = getattr(os, 'SEEK_HOLE', 4)


# ---------------------------------------------------------------- environment

def diskstack_bin():
    path = os.environ.get('DISKSTACK_BIN')
    if not path:
        here = os.path.dirname(os.path.abspath(__file__))
        path = os.path.join(here, '..', '..', 'build', 'diskstack')
    return os.path.abspath(path)


def fuse_unavailable_reason():
    """None if this process can mount FUSE file systems, else why not."""
    if os.geteuid() != 0:
        return 'needs root'
    try:
        fd = os.open('/dev/fuse', os.O_RDWR)
    except OSError as e:
        return '/dev/fuse unavailable: %s' % e.strerror
    os.close(fd)
    if shutil.which('fusermount3') is None:
        return 'fusermount3 not installed'
    return None


def require_fuse(test):
    reason = fuse_unavailable_reason()
    if reason:
        test.skipTest(reason)


def require_tool(test, name):
    if shutil.which(name) is None:
        test.skipTest('%s not installed' % name)


# ---------------------------------------------------------------- mounts

def _unescape_mountinfo(field):
    # mountinfo escapes space, tab, newline and backslash as \ooo.
    out, i = [], 0
    while i < len(field):
        if field[i] == '\\' and i + 4 <= len(field) and field[i + 1:i + 4].isdigit():
            out.append(chr(int(field[i + 1:i + 4], 8)))
            i += 4
        else:
            out.append(field[i])
            i += 1
    return ''.join(out)


def mount_entry(path):
    """The mountinfo fields of the mount at `path`, or None."""
    path = os.path.abspath(path)
    with open('/proc/self/mountinfo') as f:
        for line in f:
            fields = line.split()
            if _unescape_mountinfo(fields[4]) == path:
                sep = fields.index('-')
                return {'fstype': fields[sep + 1], 'source': fields[sep + 2],
                        'options': fields[5], 'superopts': fields[sep + 3]}
    return None


def is_mounted(path):
    return mount_entry(path) is not None


def fusermount_u(path, lazy=False):
    args = ['fusermount3', '-u'] + (['-z'] if lazy else []) + [path]
    return subprocess.run(args, stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, timeout=MOUNT_TIMEOUT)


def force_unmount(path):
    """Last-resort cleanup: unmount, lazily if the mount is busy."""
    if not is_mounted(path):
        return
    if fusermount_u(path).returncode != 0 and is_mounted(path):
        fusermount_u(path, lazy=True)


# ---------------------------------------------------------------- images

def make_sparse_raw(path, size):
    with open(path, 'wb') as f:
        f.truncate(size)


def write_at(path, offset, data):
    fd = os.open(path, os.O_WRONLY)
    try:
        pwrite_all(fd, data, offset)
    finally:
        os.close(fd)


def read_file(path):
    with open(path, 'rb') as f:
        return f.read()


def pread_all(fd, size, offset):
    """pread that loops over short reads; stops early only at EOF."""
    chunks, done = [], 0
    while done < size:
        b = os.pread(fd, size - done, offset + done)
        if not b:
            break
        chunks.append(b)
        done += len(b)
    return b''.join(chunks)


def pwrite_all(fd, data, offset):
    view, done = memoryview(data), 0
    while done < len(view):
        n = os.pwrite(fd, view[done:], offset + done)
        if n <= 0:
            raise OSError(errno.EIO, 'pwrite returned %d' % n)
        done += n


def first_difference(a, b):
    """Human-readable description of where two byte strings differ, or None."""
    if a == b:
        return None
    if len(a) != len(b):
        n = min(len(a), len(b))
        head = first_difference(a[:n], b[:n])
        return 'lengths differ: %d vs %d%s' % (
            len(a), len(b), '; ' + head if head else '')
    step = 64 * 1024
    for base in range(0, len(a), step):
        if a[base:base + step] != b[base:base + step]:
            for i in range(base, min(base + step, len(a))):
                if a[i] != b[i]:
                    end = i
                    while end < len(a) and a[end] != b[end]:
                        end += 1
                    return 'first difference at byte %d (0x%x), %d bytes long' % (
                        i, i, end - i)
    return None


def data_segments(fd, size):
    """[(start, end)] data extents of fd according to SEEK_DATA/SEEK_HOLE."""
    segs, pos = [], 0
    while pos < size:
        try:
            start = os.lseek(fd, pos, SEEK_DATA)
        except OSError as e:
            if e.errno == errno.ENXIO:
                break
            raise
        end = os.lseek(fd, start, SEEK_HOLE)
        segs.append((start, end))
        pos = end
    return segs


def written_extents(path):
    """[(start, end)] byte ranges of `path` backed by written blocks (FIEMAP):
    holes and unwritten (preallocated, reads-as-zero) extents are left out.
    Unlike SEEK_HOLE this does not depend on what is in the page cache."""
    FS_IOC_FIEMAP = 0xC020660B
    FIEMAP_FLAG_SYNC = 0x1
    FIEMAP_EXTENT_LAST = 0x1
    FIEMAP_EXTENT_UNWRITTEN = 0x800
    header, extent, count = struct.Struct('=QQIIII'), struct.Struct('=QQQQQI12x'), 256
    out, start = [], 0
    with open(path, 'rb') as f:
        while True:
            buf = bytearray(header.size + extent.size * count)
            header.pack_into(buf, 0, start, (1 << 64) - 1 - start,
                             FIEMAP_FLAG_SYNC, 0, count, 0)
            fcntl.ioctl(f.fileno(), FS_IOC_FIEMAP, buf)
            mapped = header.unpack_from(buf, 0)[3]
            if mapped == 0:
                return out
            for i in range(mapped):
                logical, _, length, _, _, flags = extent.unpack_from(
                    buf, header.size + i * extent.size)
                if not flags & FIEMAP_EXTENT_UNWRITTEN:
                    out.append((logical, logical + length))
                if flags & FIEMAP_EXTENT_LAST:
                    return out
            start = logical + length


# ---------------------------------------------------------------- libc

_libc = ctypes.CDLL(ctypes.util.find_library('c') or 'libc.so.6', use_errno=True)
_libc.fallocate.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_long, ctypes.c_long]
_libc.fallocate.restype = ctypes.c_int


def fallocate(fd, mode, offset, length):
    if _libc.fallocate(fd, mode, offset, length) != 0:
        e = ctypes.get_errno()
        raise OSError(e, '%s (fallocate mode 0x%x)' % (os.strerror(e), mode))


# ---------------------------------------------------------------- daemons

class Daemon:
    """A diskstack (or qemu-storage-daemon) process that exports one file.

    start() returns once `mountpoint` is in mountinfo, or raises with the
    daemon's stderr if it exits first or the timeout passes.  stop() sends
    SIGTERM and waits for the exit; cleanup() never raises and leaves no
    mount and no process behind.
    """

    def __init__(self, args, mountpoint, tmpdir, name='diskstack', cwd=None):
        self.args = args
        self.cwd = cwd
        self.mountpoint = os.path.abspath(os.path.join(cwd or '', mountpoint))
        self.stderr_path = os.path.join(
            tmpdir, '%s-%d.stderr' % (name, random.randrange(1 << 30)))
        self.proc = None

    def start(self, wait_mounted=True):
        self._stderr = open(self.stderr_path, 'wb')
        self.proc = subprocess.Popen(self.args, stdin=subprocess.DEVNULL,
                                     stdout=subprocess.DEVNULL,
                                     stderr=self._stderr, cwd=self.cwd,
                                     start_new_session=True)
        if wait_mounted:
            self.wait_mounted()
        return self

    @property
    def pid(self):
        return self.proc.pid

    def stderr(self):
        try:
            with open(self.stderr_path, 'rb') as f:
                return f.read().decode(errors='replace')
        except FileNotFoundError:
            return ''

    def describe(self):
        return '%s\n--- stderr ---\n%s' % (' '.join(self.args), self.stderr())

    def wait_mounted(self, timeout=MOUNT_TIMEOUT):
        deadline = time.monotonic() + timeout
        while not is_mounted(self.mountpoint):
            if self.proc.poll() is not None:
                raise AssertionError('daemon exited with %d before mounting: %s'
                                     % (self.proc.returncode, self.describe()))
            if time.monotonic() > deadline:
                raise AssertionError('not mounted after %.0fs: %s'
                                     % (timeout, self.describe()))
            time.sleep(POLL_INTERVAL)

    def wait_stderr(self, predicate, timeout=MOUNT_TIMEOUT):
        """Waits until predicate(stderr text) is true; returns the text."""
        deadline = time.monotonic() + timeout
        while True:
            text = self.stderr()
            if predicate(text):
                return text
            if time.monotonic() > deadline:
                raise AssertionError('stderr condition not met: ' + self.describe())
            time.sleep(POLL_INTERVAL)

    def wait_exit(self, timeout=MOUNT_TIMEOUT):
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError('daemon still running %.0fs later: %s'
                                 % (timeout, self.describe()))

    def send_signal(self, sig):
        self.proc.send_signal(sig)

    def stop(self, sig=signal.SIGTERM, timeout=MOUNT_TIMEOUT):
        """Signals the daemon and returns its exit status."""
        self.send_signal(sig)
        return self.wait_exit(timeout)

    def cleanup(self):
        try:
            if self.proc is not None and self.proc.poll() is None:
                self.proc.send_signal(signal.SIGTERM)
                try:
                    self.proc.wait(5)
                except subprocess.TimeoutExpired:
                    os.killpg(self.proc.pid, signal.SIGKILL)
                    self.proc.wait(5)
        except (OSError, subprocess.TimeoutExpired):
            pass
        try:
            force_unmount(self.mountpoint)
        except (OSError, subprocess.TimeoutExpired):
            pass
        if getattr(self, '_stderr', None):
            self._stderr.close()
            self._stderr = None


def fuse_fds(pid):
    """How many /dev/fuse fds a process holds (one per serving queue)."""
    n = 0
    for fd in os.listdir('/proc/%d/fd' % pid):
        try:
            if os.readlink('/proc/%d/fd/%s' % (pid, fd)) == '/dev/fuse':
                n += 1
        except OSError:
            pass
    return n


def wait_for(condition, describe, timeout=MOUNT_TIMEOUT):
    """Polls condition() until true; AssertionError(describe()) on timeout."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(describe())
        time.sleep(POLL_INTERVAL)


def thread_switches(pid):
    """{tid: voluntary context switches} of a process's own threads (the
    kernel's io_uring workers, iou-wrk-*, left out).  A thread that serves
    requests blocks and wakes for each batch; an idle one does not."""
    out = {}
    for tid in os.listdir('/proc/%d/task' % pid):
        try:
            with open('/proc/%d/task/%s/comm' % (pid, tid)) as f:
                if f.read().startswith('iou-'):
                    continue
            with open('/proc/%d/task/%s/status' % (pid, tid)) as f:
                for line in f:
                    if line.startswith('voluntary_ctxt_switches:'):
                        out[int(tid)] = int(line.split()[1])
        except OSError:
            pass
    return out


def run_diskstack(args, timeout=MOUNT_TIMEOUT):
    """Runs a diskstack command that is expected to end on its own."""
    return subprocess.run([diskstack_bin()] + list(args),
                          stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, timeout=timeout,
                          start_new_session=True)


def run_qemu_img(*args, timeout=60):
    return subprocess.run(['qemu-img'] + list(args), stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, timeout=timeout)


def nonempty_lines(text):
    if isinstance(text, bytes):
        text = text.decode(errors='replace')
    return [l for l in text.splitlines() if l.strip()]


# ---------------------------------------------------------------- test base

class FuseTestCase(unittest.TestCase):
    """Base class: a private temp dir, FUSE availability, daemon cleanup."""

    def setUp(self):
        require_fuse(self)
        if not os.access(diskstack_bin(), os.X_OK):
            self.fail('diskstack binary not found at %s' % diskstack_bin())
        parent = os.environ.get('DISKSTACK_TEST_TMP') or None
        self.tmp = tempfile.mkdtemp(prefix='ds-func-', dir=parent)
        self.daemons = []
        self.addCleanup(self._cleanup)

    def _cleanup(self):
        for d in reversed(self.daemons):
            d.cleanup()
        # A mount on a file inside tmp would make rmtree fail; unmount first.
        for name in os.listdir(self.tmp):
            force_unmount(os.path.join(self.tmp, name))
        shutil.rmtree(self.tmp, ignore_errors=True)

    def path(self, name):
        return os.path.join(self.tmp, name)

    def image(self, name='disk.raw', size=64 * MiB, data=None):
        """A sparse raw image; `data` is {offset: bytes} written into it."""
        p = self.path(name)
        make_sparse_raw(p, size)
        for off, b in (data or {}).items():
            write_at(p, off, b)
        return p

    def mount(self, image, mountpoint=None, opts=(), wait=True, cwd=None):
        """Starts `diskstack mount [opts] IMAGE FILE` and waits for the mount."""
        mountpoint = mountpoint or self.path('disk.img')
        d = Daemon([diskstack_bin(), 'mount'] + list(opts) + [image, mountpoint],
                   mountpoint, self.tmp, cwd=cwd)
        self.daemons.append(d)
        return d.start(wait_mounted=wait)

    def serve(self, args, mountpoint, wait=True):
        d = Daemon([diskstack_bin(), 'serve'] + list(args), mountpoint, self.tmp)
        self.daemons.append(d)
        return d.start(wait_mounted=wait)

    def stop_cleanly(self, daemon, sig=signal.SIGTERM):
        """Stops a daemon and asserts a clean exit: status 0, mount gone."""
        rc = daemon.stop(sig)
        self.assertEqual(rc, 0, 'exit status after %s: %s'
                         % (signal.Signals(sig).name, daemon.describe()))
        self.assertFalse(is_mounted(daemon.mountpoint),
                         'still mounted after exit: ' + daemon.describe())

    def assertBytesEqual(self, actual, expected, what):
        diff = first_difference(actual, expected)
        if diff:
            self.fail('%s: %s' % (what, diff))

    def assertOneLineError(self, result, what):
        """A failed command: non-zero exit and exactly one line on stderr."""
        err = result.stderr.decode(errors='replace')
        self.assertNotEqual(result.returncode, 0,
                            '%s: expected failure, got exit 0; stderr: %r' % (what, err))
        self.assertEqual(len(nonempty_lines(err)), 1,
                         '%s: expected one line on stderr, got %r' % (what, err))
        return err.strip()


def random_bytes(rng, n):
    return rng.getrandbits(8 * n).to_bytes(n, 'little') if n else b''


class ChunkLocks:
    """Per-chunk locks so concurrent random I/O keeps a usable reference.

    An operation locks the chunks its range covers, in ascending order (no
    deadlock), then applies the same change to the file and the reference.
    Operations on different chunks run concurrently in the daemon.
    """

    def __init__(self, size, chunk=MiB):
        self.chunk = chunk
        self.locks = [threading.Lock() for _ in range((size + chunk - 1) // chunk)]

    def span(self, offset, length):
        first = offset // self.chunk
        last = (offset + max(length, 1) - 1) // self.chunk
        return self.locks[first:last + 1]

    def acquire(self, offset, length):
        held = self.span(offset, length)
        for l in held:
            l.acquire()
        return held

    @staticmethod
    def release(held):
        for l in reversed(held):
            l.release()


def random_io_workers(path, reference, nthreads, ops_per_thread, seed,
                      max_size=MiB, open_flags=0, align=512, chunk=MiB - 1536):
    """Runs nthreads doing random pread/pwrite (sizes align..max_size,
    log-uniform; offsets and sizes multiples of align) on their own fd of
    `path`, mirrored in `reference` (a bytearray).  Returns a list of error
    strings (empty on success).

    The chunk size is deliberately not a multiple of 4096: requests in
    neighbouring chunks run at the same time and may share a block, which is
    where a daemon's read-modify-write must serialise."""
    size = len(reference)
    locks = ChunkLocks(size, chunk)
    errors = []
    max_units = max(1, max_size // align)

    def worker(idx):
        rng = random.Random(seed * 1000 + idx)
        fd = os.open(path, os.O_RDWR | open_flags)
        try:
            for op in range(ops_per_thread):
                # Log-uniform sizes so small and large requests both occur.
                units = int(2 ** rng.uniform(0, math.log2(max_units) + 1))
                length = align * max(1, min(units, max_units))
                offset = align * rng.randrange((size - length) // align + 1)
                held = locks.acquire(offset, length)
                try:
                    if rng.random() < 0.5:
                        data = random_bytes(rng, length)
                        pwrite_all(fd, data, offset)
                        reference[offset:offset + length] = data
                    else:
                        got = pread_all(fd, length, offset)
                        want = bytes(reference[offset:offset + length])
                        diff = first_difference(got, want)
                        if diff:
                            errors.append('thread %d op %d: read %d@%d: %s'
                                          % (idx, op, length, offset, diff))
                            return
                finally:
                    locks.release(held)
        except OSError as e:
            errors.append('thread %d: %s' % (idx, e))
        finally:
            os.close(fd)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(nthreads)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return errors
