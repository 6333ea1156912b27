"""`diskstack mount` from start to exit: the mount line, clean exit on
SIGTERM / SIGINT / fusermount3 -u, a SIGKILLed daemon, and the one-line
errors."""

import errno
import os
import random
import signal
import stat
import subprocess
import tempfile
import threading

from common import (MiB, FuseTestCase, diskstack_bin, fusermount_u,
                    is_mounted, pread_all, pwrite_all, random_bytes,
                    random_io_workers, read_file, run_diskstack)

SIZE = 16 * MiB


class CleanExit(FuseTestCase):

    def mount_and_write(self, opts=(), mountpoint=None):
        img = self.image(size=SIZE)
        reference = bytearray(SIZE)
        d = self.mount(img, mountpoint=mountpoint, opts=opts)
        errors = random_io_workers(d.mountpoint, reference, 4, 24, seed=5)
        self.assertEqual(errors, [])
        return img, reference, d

    def check_exit_on(self, sig):
        img, reference, d = self.mount_and_write()
        self.stop_cleanly(d, sig)
        self.assertFalse(os.path.lexists(d.mountpoint),
                         'FILE was created by diskstack and must be removed on exit')
        self.assertBytesEqual(read_file(img), bytes(reference), 'image after exit')

    def test_sigterm(self):
        self.check_exit_on(signal.SIGTERM)

    def test_sigint(self):
        self.check_exit_on(signal.SIGINT)

    def test_fusermount_u_ends_the_daemon(self):
        img, reference, d = self.mount_and_write()
        r = fusermount_u(d.mountpoint)
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertEqual(d.wait_exit(), 0, d.describe())
        self.assertFalse(os.path.lexists(d.mountpoint))
        self.assertBytesEqual(read_file(img), bytes(reference), 'image after exit')

    def test_existing_file_is_kept(self):
        mp = self.path('existing.img')
        with open(mp, 'wb') as f:
            f.write(b'underneath')
        img, reference, d = self.mount_and_write(mountpoint=mp)
        self.assertEqual(os.stat(mp).st_size, SIZE, 'FILE shows the image size')
        self.stop_cleanly(d)
        self.assertEqual(read_file(mp), b'underneath',
                         'a FILE that existed before must be left as it was')

    def test_mounted_line_and_regular_file(self):
        img = self.image(size=SIZE)
        d = self.mount(img)
        d.wait_stderr(lambda text: text.strip() != '')
        st = os.stat(d.mountpoint)
        self.assertTrue(stat.S_ISREG(st.st_mode), 'FILE must be a regular file')
        self.assertEqual(st.st_size, SIZE)


    def test_relative_paths(self):
        """`diskstack mount disk.raw disk.img` from the image's directory."""
        self.image('rel.raw', size=SIZE, data={0: b'relative'})
        d = self.mount('rel.raw', mountpoint='rel.img', cwd=self.tmp)
        self.assertEqual(read_file(self.path('rel.img'))[:8], b'relative')
        self.stop_cleanly(d)
        self.assertFalse(os.path.lexists(self.path('rel.img')))


class SignalDuringIO(FuseTestCase):

    def test_sigterm_with_requests_in_flight(self):
        """SIGTERM while 4 threads keep writing: the daemon still drains,
        unmounts and exits 0; the writers see errors, never a hang."""
        img = self.image(size=SIZE)
        d = self.mount(img)
        started = threading.Barrier(5)
        outcome = []

        def writer(idx):
            rng = random.Random(idx)
            buf = random_bytes(rng, 256 * 1024)
            fd = None
            try:
                fd = os.open(d.mountpoint, os.O_RDWR)
                pwrite_all(fd, buf, 0)
                started.wait()
                while True:
                    pwrite_all(fd, buf, 256 * 1024 * rng.randrange(SIZE // (256 * 1024)))
            except OSError as e:
                started.abort()     # an error before SIGTERM fails the test
                outcome.append(e.errno)
            except threading.BrokenBarrierError:
                outcome.append('barrier broken')
            finally:
                if fd is not None:
                    os.close(fd)

        threads = [threading.Thread(target=writer, args=(i,), daemon=True)
                   for i in range(4)]
        for t in threads:
            t.start()
        try:
            started.wait(timeout=30)
        except threading.BrokenBarrierError:
            self.fail('writers failed before SIGTERM: %s' % outcome)
        self.stop_cleanly(d)
        for t in threads:
            t.join(timeout=30)
            self.assertFalse(t.is_alive(), 'a writer hung after the daemon exited')
        self.assertEqual(len(outcome), 4, outcome)
        self.assertFalse(os.path.lexists(d.mountpoint))
        # Writers raced on the same slots, so which one won is open; but
        # every 4 KiB block holds some writer's data for that place (never
        # garbage), and slot 0, written by all before SIGTERM, is not empty.
        slot = 256 * 1024
        bufs = [random_bytes(random.Random(i), slot) for i in range(4)]
        image = read_file(img)
        for off in range(0, SIZE, 4096):
            block, pos = image[off:off + 4096], off % slot
            self.assertTrue(block == bytes(4096) or
                            any(block == b[pos:pos + 4096] for b in bufs),
                            'block at %d holds data no writer wrote there' % off)
        self.assertNotEqual(image[:4096], bytes(4096), 'the first writes were lost')


class Killed(FuseTestCase):

    def test_sigkill_leaves_mount_that_fusermount_clears(self):
        img = self.image(size=SIZE)
        mp = self.path('disk.img')
        d = self.mount(img, mountpoint=mp)
        data = random_bytes(random.Random(9), MiB)
        fd = os.open(mp, os.O_RDWR)
        try:
            pwrite_all(fd, data, 3 * MiB)
            os.fsync(fd)
        finally:
            os.close(fd)

        d.send_signal(signal.SIGKILL)
        d.wait_exit()
        self.assertTrue(is_mounted(mp), 'a killed daemon cannot unmount')
        with self.assertRaises(OSError) as cm:
            os.stat(mp)
        # ENOTCONN classically; newer kernels say ECONNABORTED for a
        # connection whose server went away.
        self.assertIn(cm.exception.errno, (errno.ENOTCONN, errno.ECONNABORTED))

        r = fusermount_u(mp)
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertFalse(is_mounted(mp))

        d2 = self.mount(img, mountpoint=mp)
        fd = os.open(mp, os.O_RDONLY)
        try:
            self.assertBytesEqual(pread_all(fd, MiB, 3 * MiB), data,
                                  'fsynced data after SIGKILL and remount')
        finally:
            os.close(fd)
        self.stop_cleanly(d2)


class Errors(FuseTestCase):

    def test_missing_image(self):
        r = run_diskstack(['mount', self.path('nope.raw'), self.path('x.img')])
        self.assertOneLineError(r, 'missing image')
        self.assertFalse(os.path.lexists(self.path('x.img')),
                         'a failed mount must not leave FILE behind')

    def test_file_is_a_directory(self):
        img = self.image(size=MiB)
        os.mkdir(self.path('dir'))
        r = run_diskstack(['mount', img, self.path('dir')])
        self.assertOneLineError(r, 'FILE is a directory')
        self.assertFalse(is_mounted(self.path('dir')))

    def test_file_already_mounted(self):
        img1 = self.image('one.raw', size=MiB)
        img2 = self.image('two.raw', size=2 * MiB)
        d = self.mount(img1)
        r = run_diskstack(['mount', img2, d.mountpoint])
        self.assertOneLineError(r, 'FILE already mounted')
        # The first mount is untouched and still serves.
        self.assertEqual(os.stat(d.mountpoint).st_size, MiB)
        fd = os.open(d.mountpoint, os.O_RDWR)
        try:
            pwrite_all(fd, b'still here', 4096)
            self.assertEqual(pread_all(fd, 10, 4096), b'still here')
        finally:
            os.close(fd)
        self.stop_cleanly(d)

    def test_no_permission_for_dev_fuse(self):
        if os.stat('/dev/fuse').st_mode & stat.S_IROTH:
            self.skipTest('/dev/fuse is open to everyone here')
        # nobody must reach the image: open up the temp dirs above it.
        top = tempfile.gettempdir()
        d = self.tmp
        while d.startswith(top + '/'):
            os.chmod(d, os.stat(d).st_mode | 0o711)
            d = os.path.dirname(d)
        os.chmod(self.tmp, 0o777)
        img = self.image(size=MiB)
        os.chmod(img, 0o666)
        mp = self.path('nobody.img')

        def become_nobody():
            os.setgroups([])
            os.setgid(65534)
            os.setuid(65534)

        r = subprocess.run([diskstack_bin(), 'mount', img, mp],
                           stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                           stderr=subprocess.PIPE, timeout=15,
                           preexec_fn=become_nobody)
        msg = self.assertOneLineError(r, 'no permission for /dev/fuse')
        self.assertIn('fuse', msg.lower(), 'the error should name /dev/fuse')
        self.assertFalse(is_mounted(mp))
