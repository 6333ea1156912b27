"""Disk full under a qcow2 export.

Two ways the file below returns ENOSPC:
- an inject rule (errno ENOSPC) on the image file: the write gets ENOSPC,
  the same write succeeds once the rule is gone;
- a real full file system: the image lives on a tmpfs of 8 MiB made by the
  test next to a filler file.  A writer fills the disk through the export
  until ENOSPC; everything written before reads back intact, overwriting
  already allocated data still works while full; after the filler is
  deleted the failed write and more succeed, without reopening.

Afterwards `qemu-img check` finds no corruption (leaks allowed: exit 0 or 3)
and `qemu-img compare` matches the reference.
"""

import errno
import os
import subprocess

from common import MiB, FuseTestCase, require_tool
from test_qcow2_faults import FaultStack, pattern

TMPFS_SIZE = 8 * MiB
FILLER = 2 * MiB
VIRTUAL = 32 * MiB
CHUNK = 64 * 1024


class Enospc(FaultStack, FuseTestCase):

    def setUp(self):
        super().setUp()
        require_tool(self, 'qemu-img')

    def test_enospc_from_a_rule(self):
        img = self.make_image(size=8 * MiB)
        self.open_stack(img)
        self.write(0, pattern(1, 65536))
        self.set_rule({'id': 'full', 'op': 'write', 'once': True,
                       'action': 'fail', 'errno': 'ENOSPC'})
        self.write_fails(MiB, pattern(2, 65536), errno.ENOSPC)
        self.clear_rules()
        self.write(MiB, pattern(2, 65536))
        self.assert_reads_back()
        self.quit_and_check(img)

    # ---------------------------------------------------------------- tmpfs

    def mount_tmpfs(self):
        mnt = self.path('small-fs')
        os.mkdir(mnt)
        r = subprocess.run(['mount', '-t', 'tmpfs', '-o', 'size=%d' % TMPFS_SIZE,
                            'tmpfs', mnt], stderr=subprocess.PIPE)
        if r.returncode != 0:
            self.skipTest('cannot mount tmpfs: %s' % r.stderr.decode().strip())
        self.addCleanup(self.unmount_tmpfs, mnt)
        return mnt

    def unmount_tmpfs(self, mnt):
        for d in reversed(self.daemons):       # nothing may hold the image
            d.cleanup()
        if subprocess.run(['umount', mnt], stderr=subprocess.DEVNULL).returncode:
            subprocess.run(['umount', '-l', mnt], stderr=subprocess.DEVNULL)

    def fill_until_enospc(self):
        """Sequential CHUNK writes from 0 until one fails; it must fail with
        ENOSPC.  Returns its offset."""
        for i in range(VIRTUAL // CHUNK):
            off = i * CHUNK
            err = self.try_write(off, pattern(i, CHUNK))
            if err is not None:
                self.assertEqual(err, errno.ENOSPC, 'write at %d: %s'
                                 % (off, os.strerror(err)))
                return off
        self.fail('the %d MiB file system never filled up' % (TMPFS_SIZE // MiB))

    def test_tmpfs_full_then_space_freed(self):
        mnt = self.mount_tmpfs()
        img = os.path.join(mnt, 'disk.qcow2')
        self.qemu_ok('create', '-q', '-f', 'qcow2', img, str(VIRTUAL))
        self.ref = bytearray(VIRTUAL)
        filler = os.path.join(mnt, 'filler')
        with open(filler, 'wb') as f:
            f.write(os.urandom(FILLER))
        self.open_stack(img)

        failed = self.fill_until_enospc()
        self.assertGreater(failed, 0, 'nothing could be written at all')
        # nothing already written is lost, and the export still works
        self.assert_reads_back(0, failed)
        self.write(0, pattern(1000, CHUNK))             # allocated: no new space
        self.assertEqual(self.try_write(failed, pattern(1001, CHUNK)), errno.ENOSPC,
                         'a new allocation succeeded on a full disk')
        os.fsync(self.fd)

        os.unlink(filler)
        self.write(failed, pattern(1002, CHUNK))
        self.write(failed + CHUNK, pattern(1003, CHUNK))
        self.assert_reads_back()
        self.quit_and_check(img)
