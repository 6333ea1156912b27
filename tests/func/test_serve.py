"""`diskstack serve` builds the same export from --blockdev/--export
definitions, in dotted key=value or JSON, as `mount` does."""

import json
import os
import select
import signal

from common import (MiB, FuseTestCase, force_unmount, is_mounted, pread_all, pwrite_all,
                    random_io_workers, read_file, run_diskstack)

SIZE = 16 * MiB


class Serve(FuseTestCase):

    def run_serve(self, args, mountpoint, img, writable=True, nthreads=8):
        open(mountpoint, 'w').close()
        reference = bytearray(read_file(img))
        d = self.serve(args, mountpoint)
        self.assertEqual(os.stat(mountpoint).st_size, SIZE)
        if writable:
            errors = random_io_workers(mountpoint, reference, nthreads, 24, seed=21)
            self.assertEqual(errors, [])
        self.assertBytesEqual(read_file(mountpoint), bytes(reference), 'FUSE file')
        self.stop_cleanly(d, signal.SIGTERM)
        self.assertBytesEqual(read_file(img), bytes(reference), 'image after exit')
        self.assertTrue(os.path.exists(mountpoint),
                        'serve must not remove a mountpoint it did not create')
        return d

    def keyval_args(self, img, mp, file_opts='', export_opts=',writable=on'):
        return ['--blockdev', 'driver=file,node-name=f0,filename=%s%s' % (img, file_opts),
                '--blockdev', 'driver=raw,node-name=disk,file=f0',
                '--export', 'type=fuse,id=e0,node-name=disk,mountpoint=%s%s'
                % (mp, export_opts)]

    def test_keyval(self):
        img, mp = self.image(size=SIZE), self.path('export.img')
        self.run_serve(self.keyval_args(img, mp), mp, img)

    def test_keyval_cache_direct_iothreads(self):
        """The benchmark's exact definitions, with two IOThreads."""
        img, mp = self.image(size=SIZE), self.path('export.img')
        args = self.keyval_args(img, mp, file_opts=',cache.direct=on')
        self.run_serve(args + ['--iothreads', '2'], mp, img)

    def test_cache_direct_unaligned_concurrent(self):
        """O_DIRECT underneath, byte-granular requests from 8 threads whose
        neighbours share sectors: the read-modify-write path under load."""
        img, mp = self.image(size=4 * MiB), self.path('export.img')
        open(mp, 'w').close()
        reference = bytearray(4 * MiB)
        d = self.serve(self.keyval_args(img, mp, file_opts=',cache.direct=on')
                       + ['--iothreads', '2'], mp)
        errors = random_io_workers(mp, reference, 8, 150, seed=23,
                                   max_size=20000, align=1, chunk=4096 + 100)
        self.assertEqual(errors, [], '; '.join(errors[:5]))
        self.assertBytesEqual(read_file(mp), bytes(reference), 'FUSE file')
        self.stop_cleanly(d)
        self.assertBytesEqual(read_file(img), bytes(reference), 'image after exit')

    def test_direct_io_off(self):
        """direct-io=off: page-cache semantics, same content."""
        img, mp = self.image(size=SIZE), self.path('export.img')
        self.run_serve(self.keyval_args(img, mp, export_opts=',writable=on,direct-io=off'),
                       mp, img, nthreads=4)

    def test_json(self):
        img, mp = self.image(size=SIZE), self.path('export.img')
        args = ['--blockdev', json.dumps({'driver': 'file', 'node-name': 'f0',
                                          'filename': img}),
                '--blockdev', json.dumps({'driver': 'raw', 'node-name': 'disk',
                                          'file': 'f0'}),
                '--export', json.dumps({'type': 'fuse', 'id': 'e0',
                                        'node-name': 'disk', 'mountpoint': mp,
                                        'writable': True})]
        self.run_serve(args, mp, img)

    def test_nested_keyval(self):
        img, mp = self.image(size=SIZE), self.path('export.img')
        args = ['--blockdev', 'driver=raw,node-name=disk,file.driver=file,'
                'file.filename=' + img,
                '--export', 'type=fuse,id=e0,node-name=disk,mountpoint=%s,'
                'writable=on' % mp]
        self.run_serve(args, mp, img)

    def test_export_read_only_by_default(self):
        img = self.image(size=SIZE, data={0: b'ro' * 256})
        mp = self.path('export.img')
        open(mp, 'w').close()
        d = self.serve(self.keyval_args(img, mp, export_opts=''), mp)
        fd = os.open(mp, os.O_RDONLY)
        try:
            self.assertEqual(pread_all(fd, 512, 0), b'ro' * 256)
        finally:
            os.close(fd)
        try:
            fd = os.open(mp, os.O_WRONLY)
        except OSError:
            pass
        else:
            try:
                with self.assertRaises(OSError):
                    pwrite_all(fd, b'x' * 512, 0)
            finally:
                os.close(fd)
        self.stop_cleanly(d)
        self.assertEqual(read_file(img)[:512], b'ro' * 256)

    def test_raw_offset_size_window(self):
        """raw's offset/size options expose a window of the file."""
        img = self.image(size=SIZE, data={MiB: b'W' * 4096})
        mp = self.path('export.img')
        open(mp, 'w').close()
        args = ['--blockdev', 'driver=file,node-name=f0,filename=' + img,
                '--blockdev', 'driver=raw,node-name=disk,file=f0,offset=1048576,size=2097152',
                '--export', 'type=fuse,id=e0,node-name=disk,mountpoint=%s,'
                'writable=on' % mp]
        d = self.serve(args, mp)
        self.assertEqual(os.stat(mp).st_size, 2 * MiB)
        fd = os.open(mp, os.O_RDWR)
        try:
            self.assertEqual(pread_all(fd, 4096, 0), b'W' * 4096)
            pwrite_all(fd, b'E' * 4096, 2 * MiB - 4096)
        finally:
            os.close(fd)
        self.stop_cleanly(d)
        data = read_file(img)
        self.assertEqual(data[3 * MiB - 4096:3 * MiB], b'E' * 4096)
        self.assertEqual(data[3 * MiB:3 * MiB + 4096], bytes(4096))

    def test_bad_definition_one_line_error(self):
        img = self.image(size=SIZE)
        r = run_diskstack(['serve', '--blockdev',
                           'driver=file,node-name=f0,filename=%s,bogus=1' % img])
        msg = self.assertOneLineError(r, 'unknown option')
        self.assertIn('bogus', msg)

    def test_unknown_node_one_line_error(self):
        img, mp = self.image(size=SIZE), self.path('export.img')
        open(mp, 'w').close()
        args = self.keyval_args(img, mp)
        args[5] = args[5].replace('node-name=disk', 'node-name=nosuchnode')
        r = run_diskstack(['serve'] + args)
        msg = self.assertOneLineError(r, 'export of an unknown node')
        self.assertIn('nosuchnode', msg)
        self.assertFalse(is_mounted(mp))


class Daemonize(FuseTestCase):
    """--daemonize returns once the export serves, or with the start-up
    error's exit code; the background daemon stops cleanly on SIGTERM."""

    def test_returns_when_serving(self):
        img, mp = self.image(size=SIZE), self.path('export.img')
        pidfile = self.path('serve.pid')
        open(mp, 'w').close()
        r = run_diskstack(['serve', '--daemonize', '--pidfile', pidfile]
                          + Serve.keyval_args(None, img, mp))
        self.assertEqual(r.returncode, 0, r.stderr.decode())
        # no waiting: the parent returned after the mount was made
        self.assertTrue(is_mounted(mp), 'not mounted when --daemonize returned')
        with open(pidfile) as f:
            pid = int(f.read())
        pidfd = os.pidfd_open(pid)
        self.addCleanup(os.close, pidfd)
        self.addCleanup(force_unmount, mp)
        with open(mp, 'r+b') as f:
            pwrite_all(f.fileno(), b'daemon' * 1000, 4096)
        os.kill(pid, signal.SIGTERM)
        ready, _, _ = select.select([pidfd], [], [], 30)
        self.assertTrue(ready, 'daemon did not exit after SIGTERM')
        self.assertFalse(is_mounted(mp))
        self.assertFalse(os.path.exists(pidfile), 'pidfile left behind')
        with open(img, 'rb') as f:
            self.assertEqual(pread_all(f.fileno(), 6000, 4096), b'daemon' * 1000)

    def test_startup_error_exit_code(self):
        r = run_diskstack(['serve', '--daemonize', '--blockdev',
                           'driver=file,node-name=f,filename=%s' % self.path('none')])
        self.assertOneLineError(r, 'serve --daemonize of a missing file')
        self.assertEqual(r.returncode, 1)
