#!/usr/bin/env python3
"""test-cli.py — the diskstack command's own behaviour, one case per run.

    test-cli.py --diskstack PATH CASE

Covers what the command line promises (diskstack(1)): exit codes 0/1/2,
one-line errors with a hint for usage errors, the checks `mount` makes
before it starts, the mounted message, FILE created and removed, a clean
exit on SIGTERM and on `fusermount3 -u`, the probed-raw guard, and
`serve` with key=value and JSON definitions and a pidfile.  Deeper I/O
behaviour is tests/func's job.

Exit status: 0 pass, 1 fail, 77 skip (meson's convention).  Waits are on the
event itself (a line on stderr, a process exit, a file appearing) with a
timeout as the only guard.
"""
import argparse
import os
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import time

TIMEOUT = 20.0
MiB = 1 << 20
SKIP = 77


class Fail(Exception):
    pass


class Skip(Exception):
    pass


def check(cond, what):
    if not cond:
        raise Fail(what)


def run(args, **kw):
    return subprocess.run([DISKSTACK] + args, capture_output=True, text=True,
                          timeout=TIMEOUT, stdin=subprocess.DEVNULL, **kw)


def lines(text):
    return [l for l in text.splitlines() if l.strip()]


def expect_error(args, code, *needles, nlines=1):
    """Runs diskstack, expects exit `code` and `nlines` lines on stderr that
    contain every needle."""
    r = run(args)
    err = lines(r.stderr)
    check(r.returncode == code,
          f"{args}: exit {r.returncode}, expected {code}; stderr: {r.stderr!r}")
    check(len(err) == nlines, f"{args}: expected {nlines} stderr line(s): {err}")
    check(err[0].startswith("diskstack"), f"{args}: no 'diskstack' prefix: {err}")
    for n in needles:
        check(n in err[0], f"{args}: {n!r} not in {err[0]!r}")
    check(r.stdout == "", f"{args}: unexpected stdout {r.stdout!r}")
    return err


def need_fuse():
    try:
        os.close(os.open("/dev/fuse", os.O_RDWR))
    except OSError as e:
        raise Skip(f"/dev/fuse not usable: {e}")
    if not shutil.which("fusermount3"):
        raise Skip("fusermount3 missing")


def is_mounted(path):
    path = os.path.realpath(path)
    with open("/proc/self/mountinfo") as f:
        return any(l.split()[4] == path for l in f)


def make_image(path, size=4 * MiB):
    """A raw image with a distinct pattern per MiB (and text at 0)."""
    with open(path, "wb") as f:
        for i in range(size // MiB):
            f.write(bytes([i + 1]) * MiB)
        f.seek(0)
        f.write(b"diskstack cli test\n")


class Daemon:
    """A diskstack process; waits for its first stderr line (the mounted
    message) or for its exit."""

    def __init__(self, args):
        self.args = args
        self.p = subprocess.Popen([DISKSTACK] + args, stdin=subprocess.DEVNULL,
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        self.stderr = b""

    def read_line(self):
        deadline = time.monotonic() + TIMEOUT
        while b"\n" not in self.stderr:
            left = deadline - time.monotonic()
            check(left > 0, f"{self.args}: no line on stderr in {TIMEOUT}s")
            ready, _, _ = select.select([self.p.stderr], [], [], left)
            if ready:
                chunk = os.read(self.p.stderr.fileno(), 4096)
                if not chunk:
                    break
                self.stderr += chunk
        line, _, self.stderr = self.stderr.partition(b"\n")
        return line.decode()

    def wait(self):
        try:
            code = self.p.wait(TIMEOUT)
        except subprocess.TimeoutExpired:
            raise Fail(f"{self.args}: still running after {TIMEOUT}s")
        self.stderr += self.p.stderr.read()
        return code

    def stop(self, sig=signal.SIGTERM):
        self.p.send_signal(sig)
        return self.wait()

    def kill(self):
        if self.p.poll() is None:
            self.p.kill()
            self.p.wait()


class Workdir:
    """A temporary directory; unmounts and kills whatever a failed case
    left behind."""

    def __enter__(self):
        self.dir = tempfile.mkdtemp(prefix="diskstack-cli-")
        self.daemons = []
        return self

    def path(self, name):
        return os.path.join(self.dir, name)

    def start(self, args):
        d = Daemon(args)
        self.daemons.append(d)
        return d

    def __exit__(self, *exc):
        for name in os.listdir(self.dir):
            p = self.path(name)
            if is_mounted(p):
                subprocess.run(["fusermount3", "-u", "-z", p], capture_output=True)
        for d in self.daemons:
            d.kill()
        shutil.rmtree(self.dir, ignore_errors=True)


def mount_and_wait(w, args, file):
    d = w.start(["mount"] + args)
    line = d.read_line()
    while line and not line.startswith("diskstack"):   # skip debug noise
        line = d.read_line()
    check("mounted at" in line, f"unexpected first line {line!r} "
          f"(exit {d.p.poll()}, rest {d.stderr!r})")
    check(is_mounted(file), f"{file} is not a mountpoint after {line!r}")
    return d, line


# --- cases -------------------------------------------------------------------

def case_help():
    r = run(["--help"])
    check(r.returncode == 0, f"--help exit {r.returncode}")
    for word in ("mount", "serve", "Usage:"):
        check(word in r.stdout, f"--help lacks {word!r}")
    for cmd in ("mount", "serve"):
        r = run([cmd, "--help"])
        check(r.returncode == 0 and "Usage: diskstack " + cmd in r.stdout,
              f"{cmd} --help: {r.returncode} {r.stdout!r}")
    r = run(["serve", "--help"])
    check("--qmp SOCKET" in r.stdout, "serve --help does not list --qmp")
    r = run(["--version"])
    check(r.returncode == 0 and r.stdout.startswith("diskstack "),
          f"--version: {r.returncode} {r.stdout!r}")


def case_usage_errors():
    for args, needle in ((["frobnicate"], "unknown command 'frobnicate'"),
                         ([], "missing command"),
                         (["--bogus"], "unrecognized option '--bogus'"),
                         (["mount", "--bogus", "a", "b"], "'--bogus'"),
                         (["mount", "a"], "expects IMAGE and FILE"),
                         (["mount", "a", "b", "c"], "unexpected argument 'c'"),
                         (["mount", "--iothreads", "0", "a", "b"], "--iothreads"),
                         (["mount", "--iothreads", "x", "a", "b"], "--iothreads"),
                         (["mount", "a", "b", "-f"], "requires an argument"),
                         (["serve", "--qmp"], "requires an argument"),
                         (["serve", "extra"], "unexpected argument 'extra'")):
        err = expect_error(args, 2, needle, nlines=2)
        check("--help" in err[1], f"{args}: no hint line: {err}")


def case_mount_errors():
    need_fuse()
    with Workdir() as w:
        img, f = w.path("disk.raw"), w.path("disk.img")
        make_image(img)
        expect_error(["mount", w.path("missing.raw"), f], 1, "does not exist")
        check(not os.path.exists(f), "FILE left behind after a failed mount")
        expect_error(["mount", w.dir, f], 1, "is a directory")
        os.mkdir(w.path("dir"))
        expect_error(["mount", img, w.path("dir")], 1, "is a directory")
        expect_error(["mount", img, img], 1, "is the image itself")
        expect_error(["mount", "-f", "nosuchformat", img, f], 1, "nosuchformat")
        check(not os.path.exists(f), "FILE left behind after a failed mount")


def case_mount_sigterm():
    """Mounted message, content, FILE created and removed, exit 0."""
    need_fuse()
    with Workdir() as w:
        img, f = w.path("disk.raw"), w.path("disk.img")
        make_image(img)
        d, line = mount_and_wait(w, ["--iothreads", "2", img, f], f)
        check("(raw, 4 MiB)" in line and "fusermount3 -u" in line,
              f"mounted message: {line!r}")
        check(os.path.getsize(f) == 4 * MiB, f"size {os.path.getsize(f)}")
        with open(f, "rb") as a, open(img, "rb") as b:
            check(a.read() == b.read(), "mounted content differs from the image")
        with open(f, "r+b") as a:
            a.seek(3 * MiB)
            a.write(b"written through diskstack")
            os.fsync(a.fileno())
        code = d.stop(signal.SIGTERM)
        check(code == 0, f"exit {code} after SIGTERM: {d.stderr!r}")
        check(not is_mounted(f), "still mounted after exit")
        check(not os.path.exists(f), "FILE created by mount was not removed")
        with open(img, "rb") as b:
            b.seek(3 * MiB)
            check(b.read(25) == b"written through diskstack", "write lost")


def case_mount_unmount():
    """fusermount3 -u stops the mount cleanly; an existing FILE is kept;
    a second mount on a mounted FILE is refused."""
    need_fuse()
    with Workdir() as w:
        img, f = w.path("disk.raw"), w.path("disk.img")
        make_image(img)
        open(f, "w").close()
        d, _ = mount_and_wait(w, ["--read-only", img, f], f)
        expect_error(["mount", img, f], 1, "already mounted")
        with open(f, "rb") as a:
            check(a.read(18) == b"diskstack cli test", "read-only content")
        try:
            with open(f, "r+b") as a:
                a.write(b"x")
                a.flush()
            raise Fail("read-only mount accepted a write")
        except OSError:
            pass
        subprocess.run(["fusermount3", "-u", f], check=True, timeout=TIMEOUT)
        code = d.wait()
        check(code == 0, f"exit {code} after fusermount3 -u: {d.stderr!r}")
        check(os.path.isfile(f), "a FILE that existed before was removed")


def case_mount_killed():
    """A killed mount leaves a dead mount: the next mount says how to clear
    it, fusermount3 -u clears it, and then mounting works again."""
    need_fuse()
    with Workdir() as w:
        img, f = w.path("disk.raw"), w.path("disk.img")
        make_image(img)
        d, _ = mount_and_wait(w, [img, f], f)
        d.p.kill()
        d.p.wait()
        expect_error(["mount", img, f], 1, "fusermount3 -u")
        subprocess.run(["fusermount3", "-u", f], check=True, timeout=TIMEOUT)
        d, _ = mount_and_wait(w, [img, f], f)
        with open(f, "rb") as a:
            check(a.read(18) == b"diskstack cli test", "content after remount")
        check(d.stop() == 0, "remount did not exit cleanly")


def case_mount_locked():
    """A second writable mount of the same image fails on the lock."""
    need_fuse()
    with Workdir() as w:
        img = w.path("disk.raw")
        make_image(img)
        d, _ = mount_and_wait(w, [img, w.path("a.img")], w.path("a.img"))
        expect_error(["mount", img, w.path("b.img")], 1)
        check(not os.path.exists(w.path("b.img")), "b.img left behind")
        check(d.stop() == 0, "first mount did not exit cleanly")


def case_probed_raw_guard():
    """A probed raw image refuses a qcow2 header in sector 0; -f raw takes it."""
    need_fuse()
    qcow2_magic = b"QFI\xfb\x00\x00\x00\x03" + bytes(504)
    with Workdir() as w:
        img, f = w.path("disk.raw"), w.path("disk.img")
        make_image(img)
        for args, refused in (([], True), (["-f", "raw"], False)):
            d, _ = mount_and_wait(w, args + [img, f], f)
            fd = os.open(f, os.O_WRONLY)
            try:
                os.pwrite(fd, qcow2_magic, 0)
                os.fsync(fd)
                check(not refused, "probed raw accepted a qcow2 header")
            except OSError:
                check(refused, "-f raw refused a qcow2 header")
            finally:
                os.close(fd)
            check(d.stop() == 0, "mount did not exit cleanly")
            # restore: the next round must probe raw again
            with open(img, "r+b") as b:
                b.write(bytes(512))


def case_serve():
    """key=value and JSON definitions, pidfile, SIGINT."""
    need_fuse()
    with Workdir() as w:
        img, f, pid = w.path("disk.raw"), w.path("disk.img"), w.path("ds.pid")
        make_image(img)
        open(f, "w").close()
        d = w.start(["serve", "--iothreads", "2", "--pidfile", pid,
                     "--blockdev", f"driver=file,node-name=f0,filename={img}",
                     "--blockdev", '{"driver": "raw", "node-name": "disk", '
                                   '"file": "f0"}',
                     "--export", f"type=fuse,id=e0,node-name=disk,"
                                 f"mountpoint={f},writable=on"])
        deadline = time.monotonic() + TIMEOUT
        while not os.path.exists(pid):
            if d.p.poll() is not None:
                raise Fail(f"serve exited {d.wait()}: {d.stderr!r}")
            check(time.monotonic() < deadline, "no pidfile")
            time.sleep(0.05)   # polling a file the daemon writes; bounded
        with open(pid) as p:
            check(int(p.read()) == d.p.pid, "pidfile holds the wrong pid")
        check(is_mounted(f), "export not mounted once the pidfile exists")
        with open(f, "rb") as a:
            a.seek(2 * MiB)
            check(a.read(4) == bytes([3]) * 4, "content through serve")
        code = d.stop(signal.SIGINT)
        check(code == 0, f"serve exit {code}: {d.stderr!r}")
        check(not os.path.exists(pid), "pidfile not removed")
        check(not is_mounted(f), "still mounted after serve exited")


def case_serve_gone():
    """Unmounting one export of serve removes it; the other keeps serving
    and the daemon still stops cleanly."""
    need_fuse()
    with Workdir() as w:
        img, a, b = w.path("disk.raw"), w.path("a.img"), w.path("b.img")
        make_image(img)
        open(a, "w").close()
        open(b, "w").close()
        d = w.start(["serve", "--iothreads", "1",
                     "--blockdev", f"driver=file,node-name=f0,filename={img}",
                     "--blockdev", "driver=raw,node-name=disk,file=f0",
                     "--export", f"type=fuse,id=ea,node-name=disk,mountpoint={a}",
                     "--export", f"type=fuse,id=eb,node-name=disk,mountpoint={b}"])
        deadline = time.monotonic() + TIMEOUT
        while not (is_mounted(a) and is_mounted(b)):
            if d.p.poll() is not None:
                raise Fail(f"serve exited {d.wait()}: {d.stderr!r}")
            check(time.monotonic() < deadline, "exports not mounted")
            time.sleep(0.05)   # polling the mount table; bounded
        subprocess.run(["fusermount3", "-u", a], check=True, timeout=TIMEOUT)
        line = d.read_line()
        while line and "ea" not in line:
            line = d.read_line()
        check("export 'ea' was unmounted" in line, f"no removal line: {line!r}")
        check(d.p.poll() is None, "serve exited after one export went away")
        with open(b, "rb") as f:
            check(f.read(18) == b"diskstack cli test", "other export's content")
        code = d.stop()
        check(code == 0, f"serve exit {code}: {d.stderr!r}")
        check(not is_mounted(b), "b.img still mounted")


def case_serve_errors():
    with Workdir() as w:
        expect_error(["serve", "--object", "qom-type=secret,id=s0"], 1,
                     "Object type 'secret' is not supported yet")
        expect_error(["serve", "--object", "memory-backend-ram,id=m"], 1,
                     "Object type 'memory-backend-ram' is not supported yet")
        expect_error(["serve", "--object", "iothread,id=io0,bogus=1"], 1, "bogus")
        expect_error(["serve", "--blockdev", "driver=nosuchdriver,node-name=x"],
                     1, "nosuchdriver")
        expect_error(["serve", "--blockdev",
                      f"driver=file,node-name=f0,filename={w.path('none.raw')}"],
                     1, "none.raw")
        expect_error(["serve", "--export", "type=fuse,id=e0,node-name=nope,"
                      f"mountpoint={w.path('x')}"], 1, "nope")


CASES = {name[5:].replace("_", "-"): fn for name, fn in globals().items()
         if name.startswith("case_")}


def main():
    global DISKSTACK
    ap = argparse.ArgumentParser()
    ap.add_argument("--diskstack", required=True)
    ap.add_argument("case", choices=sorted(CASES))
    a = ap.parse_args()
    DISKSTACK = os.path.abspath(a.diskstack)
    try:
        CASES[a.case]()
    except Skip as e:
        print(f"SKIP {a.case}: {e}")
        return SKIP
    except Fail as e:
        print(f"FAIL {a.case}: {e}")
        return 1
    print(f"PASS {a.case}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
