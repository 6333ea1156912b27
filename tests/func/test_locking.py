"""Image locking with QEMU's OFD-lock convention: one writer at a time,
across diskstack, qemu-img and qemu-storage-daemon."""

import os
import subprocess

from common import (MiB, Daemon, FuseTestCase, is_mounted, pread_all, pwrite_all,
                    read_file, require_tool, run_diskstack, run_qemu_img)

QEMU_LOCK_ERROR = 'Failed to get shared "write" lock'


class Locking(FuseTestCase):

    def assertStillServes(self, d):
        fd = os.open(d.mountpoint, os.O_RDWR)
        try:
            pwrite_all(fd, b'first mount works', 8192)
            self.assertEqual(pread_all(fd, 17, 8192), b'first mount works')
        finally:
            os.close(fd)

    def test_second_mount_fails_with_lock_error(self):
        img = self.image(size=4 * MiB)
        d = self.mount(img)
        r = run_diskstack(['mount', img, self.path('second.img')])
        msg = self.assertOneLineError(r, 'second mount of a locked image')
        self.assertIn('lock', msg.lower(), 'the error should say the image is locked')
        self.assertFalse(os.path.lexists(self.path('second.img')))
        self.assertStillServes(d)
        self.stop_cleanly(d)
        self.assertEqual(read_file(img)[8192:8192 + 17], b'first mount works')

    def test_qemu_img_refused_while_mounted_writable(self):
        """QEMU's tools see diskstack's locks.  Note: `qemu-img info` on a
        *raw* image takes no conflicting lock in QEMU's own convention (it
        opens without I/O and shares everything; only formats with metadata
        such as qcow2 unshare write), so the raw-image check uses
        `qemu-img convert`, which unshares write on its source."""
        require_tool(self, 'qemu-img')
        img = self.image(size=4 * MiB)
        out = self.path('copy.raw')
        d = self.mount(img)
        r = run_qemu_img('convert', '-f', 'raw', '-O', 'raw', img, out)
        err = r.stderr.decode(errors='replace')
        self.assertNotEqual(r.returncode, 0, 'qemu-img convert must fail: ' + err)
        self.assertIn(QEMU_LOCK_ERROR, err)
        for args in (['convert', '-U', '-f', 'raw', '-O', 'raw', img, out],
                     ['info', '-U', '-f', 'raw', img]):
            r = run_qemu_img(*args)
            self.assertEqual(r.returncode, 0, '%s: %s' % (
                ' '.join(args[:2]), r.stderr.decode(errors='replace')))
        self.assertIn(b'virtual size: 4 MiB', r.stdout)
        self.assertStillServes(d)
        # After unmount the image is free again.
        self.stop_cleanly(d)
        r = run_qemu_img('convert', '-f', 'raw', '-O', 'raw', img, out)
        self.assertEqual(r.returncode, 0, r.stderr.decode(errors='replace'))

    def test_qemu_storage_daemon_refused_while_mounted_writable(self):
        require_tool(self, 'qemu-storage-daemon')
        img = self.image(size=4 * MiB)
        d = self.mount(img)
        qsd_mp = self.path('qsd.img')
        open(qsd_mp, 'w').close()
        r = subprocess.run(['qemu-storage-daemon',
                            '--blockdev', 'driver=file,node-name=f0,filename=' + img,
                            '--blockdev', 'driver=raw,node-name=disk,file=f0',
                            '--export', 'type=fuse,id=e0,node-name=disk,'
                            'mountpoint=%s,writable=on' % qsd_mp],
                           stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                           stderr=subprocess.PIPE, timeout=10)
        err = r.stderr.decode(errors='replace')
        self.assertNotEqual(r.returncode, 0, 'qemu-storage-daemon must refuse')
        self.assertIn('lock', err)
        self.assertFalse(is_mounted(qsd_mp))
        self.assertStillServes(d)

    def test_mount_fails_while_qemu_storage_daemon_writes(self):
        require_tool(self, 'qemu-storage-daemon')
        img = self.image(size=4 * MiB)
        qsd_mp = self.path('qsd.img')
        open(qsd_mp, 'w').close()
        qsd = Daemon(['qemu-storage-daemon',
                      '--blockdev', 'driver=file,node-name=f0,filename=' + img,
                      '--blockdev', 'driver=raw,node-name=disk,file=f0',
                      '--export', 'type=fuse,id=e0,node-name=disk,mountpoint=%s,'
                      'writable=on' % qsd_mp], qsd_mp, self.tmp, name='qsd')
        self.daemons.append(qsd)
        qsd.start()
        r = run_diskstack(['mount', img, self.path('ds.img')])
        msg = self.assertOneLineError(r, 'mount of an image qemu-storage-daemon writes')
        self.assertIn('lock', msg.lower())
        self.assertEqual(qsd.stop(), 0, qsd.describe())

    def test_two_read_only_mounts_share_the_image(self):
        img = self.image(size=4 * MiB, data={0: b'shared'})
        d1 = self.mount(img, mountpoint=self.path('a.img'), opts=['--read-only'])
        d2 = self.mount(img, mountpoint=self.path('b.img'), opts=['--read-only'])
        self.assertEqual(read_file(d1.mountpoint)[:6], b'shared')
        self.assertEqual(read_file(d2.mountpoint)[:6], b'shared')
        self.stop_cleanly(d2)
        self.stop_cleanly(d1)
