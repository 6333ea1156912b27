"""Differential test of the block jobs: the same QMP job scripts run
against qemu-storage-daemon 7.2 and against `diskstack serve`, on identical
images, compared (issue 7).

Every script is data (SCRIPTS below): QMP commands, waits for an event,
reads through a read-only FUSE export.  Both daemons start with the same
nodes on the command line (--blockdev): a qcow2 chain base <- mid <- top
made with qemu-img/qemu-io, and a stand-alone qcow2 src, each qcow2 over
a file node; targets are added by the scripts with blockdev-add.

No writable export: qemu-storage-daemon 7.2 refuses mirror, stream and
active commit of a node under a *writable* FUSE export (the export holds
the resize permission, which the jobs do not share).  Where a script reads
through an export (the mirror pivot), the export is read-only on both
sides.

Each script is one test (test_<name>, about half a second): the images
are made once, copied for each daemon; qemu-storage-daemon runs the script
first (which also checks the script: every command does what its `expect`
says), then diskstack.  Waits are on events only; a job that must still be
running when it is paused or cancelled has speed 1 (STALL).

What must match, per script (a difference fails the test):
  - for every command: success or error, the error class, and the error
    message unless the command's label is in MESSAGE_MAY_DIFFER (every
    differing message is printed either way);
  - the events, in order of arrival: the name; for JOB_STATUS_CHANGE the
    id and status; for BLOCK_JOB_* the key set and the values of type,
    device, speed, error, operation, action, then (a comparison of its
    own, 'events: len/offset') len and offset, except where a script says
    they depend on timing.  Identical BLOCK_JOB_ERROR events in a row
    count once (one per failed request in flight).  A job QEMU announces
    and takes back at once (created, null: it creates the job before some
    checks) is compared apart ('stillborn job ID'); so are the events sent
    while the daemon quits ('events at quit');
  - query-jobs / query-block-jobs: the key set of every job (diskstack may
    add EXTRA_KEYS), and the values of the keys that do not depend on
    timing; the others at least consistent (offset <= len);
  - the nodes and the graph after the script (names, drivers, read-only,
    chain depth; edges by name; edge permissions are only noted);
  - other successful replies: equal; reads through an export: equal bytes;
  - the images afterwards: qemu-img compare between the two runs' copies,
    `qemu-img info --backing-chain` (format, size, backing file name with
    the run's directory replaced by {D}), and `qemu-img check` clean on
    both; an image whose content depends on timing (a cancelled copy) or
    is left inconsistent on purpose (ENOSPC) only has to give the same
    check result on both.

Differences kept on purpose are listed in DELIBERATE with the reason
(and error messages in MESSAGE_MAY_DIFFER); differences that look like
diskstack bugs would go to KNOWN_BUGS while being worked on (empty now).
A listed comparison is skipped by name, so the list says what differs.  Once a
command's outcome differs, the diskstack run does not wait for the events
that follow (they would not come); the differences are reported.

DISKSTACK_JOBDIFF_SELFTEST=1 runs every script against qemu-storage-daemon
twice (the comparison must find nothing); DISKSTACK_JOBDIFF_STRICT=1 skips
nothing (lists every known bug as a failure); DISKSTACK_JOBDIFF_VERBOSE=1
prints both runs' records and events.
"""

import hashlib
import json
import os
import shutil
import socket
import subprocess
import unittest

from common import (MiB, Daemon, FuseTestCase, diskstack_bin, force_unmount,
                    run_qemu_img, wait_for)
from qmp import TIMEOUT as QMP_TIMEOUT, QmpClient
from test_qmp_diff import (check_script_on_qsd, compare_graph, substitute,
                           walk_records)

SIZE = 8 * MiB
EVENT_TIMEOUT = 15.0
# A job with speed 1 (byte/s) copies one chunk and then sleeps for days; a
# kick (job-pause, job-resume, a faster speed) lets it copy one more chunk:
# 64 KiB in qemu-storage-daemon with buf-size 64 KiB, 512 KiB for its stream,
# 1 MiB in diskstack.  The scripts kick such a job at most 3 times, so it is
# running, not ready, until its speed is set to 0 or it is cancelled.
STALL = 1


# ---------------------------------------------------------------- the steps

class Cmd:
    """A QMP command; expect is what qemu-storage-daemon does ('ok' or
    'error'), a check of the script itself.  Strings may hold {D}, the
    run's directory."""

    def __init__(self, name, args=None, expect='ok', label=None):
        self.name, self.args, self.expect = name, args, expect
        self.label = label or name


class Wait:
    """Waits for an event (for JOB_STATUS_CHANGE: of job id with status)
    that arrived after the one the previous Wait matched."""

    def __init__(self, event, status=None, id=None):
        self.event, self.status, self.id = event, status, id
        self.label = 'wait %s%s' % (event, ' ' + status if status else '')

    def matches(self, e):
        if e['event'] != self.event:
            return False
        data = e.get('data', {})
        return ((self.status is None or data.get('status') == self.status) and
                (self.id is None or data.get('id', data.get('device')) == self.id))


class ReadExport:
    """Reads the whole read-only export; the record is a digest."""

    label = 'read the export'


def status(s, id):
    return Wait('JOB_STATUS_CHANGE', s, id)


def qcow2_target(node, img, backing=None):
    return Cmd('blockdev-add', {'driver': 'qcow2', 'node-name': node, 'backing': backing,
                                'file': {'driver': 'file', 'node-name': node + '-f',
                                         'filename': '{D}/' + img}},
               label='blockdev-add ' + node)


class Script:
    """steps: the commands and waits (FINAL_STEPS are added).  images:
    files whose chains are compared afterwards; unchecked: files compared
    by the result of qemu-img check only; volatile: BLOCK_JOB_* keys whose
    values depend on timing; tmpfs: the run's {D}/full is a 1 MiB tmpfs
    holding sparse 8 MiB raw images tgt.raw and rbase.raw (256 KiB of
    data); export: src exported read-only."""

    def __init__(self, name, steps, images=(), unchecked=(), volatile=(),
                 tmpfs=False, export=False):
        self.name, self.steps, self.images = name, steps + FINAL_STEPS, list(images)
        self.unchecked, self.volatile = list(unchecked), set(volatile)
        self.tmpfs, self.export = tmpfs, export


# After every script: the nodes left (names, drivers, read-only, chain
# depth) and the graph (nodes and edges by name).
FINAL_STEPS = [
    Cmd('query-named-block-nodes', {'flat': True}, label='nodes at the end'),
    Cmd('x-debug-query-block-graph', label='graph at the end'),
]

CHAIN = ['base.qcow2', 'mid.qcow2', 'top.qcow2']


def mirror(job, **kw):
    args = {'job-id': job, 'device': 'src', 'target': 'tgt', 'sync': 'full'}
    args.update(kw)
    return Cmd('blockdev-mirror', args, label='blockdev-mirror %s' % job)


def slow_mirror(job):
    """A mirror that stays running (STALL; one 64 KiB request at a time)."""
    return mirror(job, speed=STALL, granularity=65536, **{'buf-size': 65536})


UNKNOWN_JOB = [Cmd(verb, {'id': 'nope'}, 'error', label='%s unknown job' % verb)
               for verb in ('job-pause', 'job-resume', 'job-cancel', 'job-complete',
                            'job-finalize', 'job-dismiss')] + \
    [Cmd(verb, {'device': 'nope'}, 'error', label='%s unknown job' % verb)
     for verb in ('block-job-pause', 'block-job-resume', 'block-job-cancel',
                  'block-job-complete')] + \
    [Cmd('block-job-set-speed', {'device': 'nope', 'speed': 0}, 'error',
         label='block-job-set-speed unknown job'),
     Cmd('block-job-finalize', {'id': 'nope'}, 'error',
         label='block-job-finalize unknown job'),
     Cmd('block-job-dismiss', {'id': 'nope'}, 'error',
         label='block-job-dismiss unknown job')]


SCRIPTS = [
    Script('mirror_full', [
        qcow2_target('tgt', 'tgt.qcow2'),
        mirror('m'),
        Wait('BLOCK_JOB_READY'),
        Cmd('query-block-jobs', label='query-block-jobs (ready)'),
        Cmd('query-jobs', label='query-jobs (ready)'),
        Cmd('job-complete', {'id': 'm'}),
        status('null', 'm'),
        ReadExport(),           # the export follows the pivot to tgt
        Cmd('query-jobs', label='query-jobs (none left)'),
    ], images=['src.qcow2', 'tgt.qcow2'], export=True),

    Script('mirror_cancel_before_ready', [
        qcow2_target('tgt', 'tgt.qcow2'),
        slow_mirror('m'),
        status('running', 'm'),
        Cmd('job-cancel', {'id': 'm'}),
        status('null', 'm'),
        Cmd('query-block-jobs', label='query-block-jobs (none left)'),
    ], images=['src.qcow2'], unchecked=['tgt.qcow2'], volatile={'offset', 'len'}),

    Script('mirror_cancel_after_ready', [
        qcow2_target('tgt', 'tgt.qcow2'),
        mirror('m'),
        Wait('BLOCK_JOB_READY'),
        Cmd('block-job-cancel', {'device': 'm'}),
        status('null', 'm'),
    ], images=['src.qcow2', 'tgt.qcow2']),

    # a ready mirror paused is on standby; a forced cancel does not pivot
    Script('mirror_standby_force_cancel', [
        qcow2_target('tgt', 'tgt.qcow2'),
        mirror('m'),
        Wait('BLOCK_JOB_READY'),
        Cmd('job-pause', {'id': 'm'}),
        status('standby', 'm'),
        Cmd('query-jobs', label='query-jobs (standby)'),
        Cmd('query-block-jobs', label='query-block-jobs (standby)'),
        Cmd('job-resume', {'id': 'm'}),
        status('ready', 'm'),
        Cmd('block-job-cancel', {'device': 'm', 'force': True}),
        status('null', 'm'),
    ], images=['src.qcow2', 'tgt.qcow2']),

    # QEMU accepts job-complete on standby; the pivot follows the resume
    Script('mirror_complete_on_standby', [
        qcow2_target('tgt', 'tgt.qcow2'),
        mirror('m'),
        Wait('BLOCK_JOB_READY'),
        Cmd('job-pause', {'id': 'm'}),
        status('standby', 'm'),
        Cmd('job-complete', {'id': 'm'}, label='job-complete on standby'),
        Cmd('query-jobs', label='query-jobs (standby, completing)'),
        Cmd('job-resume', {'id': 'm'}),
        status('null', 'm'),
    ], images=['src.qcow2', 'tgt.qcow2']),

    Script('drive_mirror_absolute_paths', [
        Cmd('drive-mirror', {'job-id': 'm', 'device': 'src', 'target': '{D}/dm.qcow2',
                             'format': 'qcow2', 'sync': 'full',
                             'mode': 'absolute-paths'}),
        Wait('BLOCK_JOB_READY'),
        Cmd('job-complete', {'id': 'm'}),
        status('null', 'm'),
    ], images=['src.qcow2', 'dm.qcow2']),

    Script('mirror_sync_top', [
        qcow2_target('ttop', 'ttop.qcow2', backing='mid'),
        Cmd('blockdev-mirror', {'job-id': 'm', 'device': 'top', 'target': 'ttop',
                                'sync': 'top'}),
        Wait('BLOCK_JOB_READY'),
        Cmd('job-complete', {'id': 'm'}),
        status('null', 'm'),
    ], images=CHAIN + ['ttop.qcow2']),

    Script('mirror_sync_none', [
        qcow2_target('tgt', 'tgt.qcow2'),
        mirror('m', sync='none'),
        Wait('BLOCK_JOB_READY'),
        Cmd('block-job-complete', {'device': 'm'}),
        status('null', 'm'),
    ], images=['src.qcow2', 'tgt.qcow2']),

    Script('mirror_manual_finalize_dismiss', [
        qcow2_target('tgt', 'tgt.qcow2'),
        mirror('m', **{'auto-finalize': False, 'auto-dismiss': False}),
        Wait('BLOCK_JOB_READY'),
        Cmd('job-complete', {'id': 'm'}),
        status('pending', 'm'),
        Cmd('query-jobs', label='query-jobs (pending)'),
        Cmd('query-block-jobs', label='query-block-jobs (pending)'),
        Cmd('job-dismiss', {'id': 'm'}, 'error', label='job-dismiss of a pending job'),
        Cmd('job-pause', {'id': 'm'}, 'error', label='job-pause of a pending job'),
        Cmd('job-finalize', {'id': 'm'}),
        status('concluded', 'm'),
        Cmd('query-jobs', label='query-jobs (concluded)'),
        Cmd('job-finalize', {'id': 'm'}, 'error', label='job-finalize of a concluded job'),
        Cmd('job-cancel', {'id': 'm'}, 'error', label='job-cancel of a concluded job'),
        Cmd('job-dismiss', {'id': 'm'}),
        status('null', 'm'),
        Cmd('query-jobs', label='query-jobs (none left)'),
    ], images=['src.qcow2', 'tgt.qcow2']),

    Script('mirror_pause_resume_set_speed', [
        qcow2_target('tgt', 'tgt.qcow2'),
        slow_mirror('m'),
        status('running', 'm'),
        Cmd('job-pause', {'id': 'm'}),
        status('paused', 'm'),
        Cmd('query-jobs', label='query-jobs (paused)'),
        Cmd('query-block-jobs', label='query-block-jobs (paused)'),
        Cmd('job-pause', {'id': 'm'}, 'error', label='job-pause of a paused job'),
        Cmd('job-resume', {'id': 'm'}),
        status('running', 'm'),
        Cmd('job-resume', {'id': 'm'}, 'error', label='job-resume of a running job'),
        Cmd('block-job-set-speed', {'device': 'm', 'speed': 2 * STALL}),
        Cmd('query-block-jobs', label='query-block-jobs (speed set)'),
        Cmd('block-job-set-speed', {'device': 'm', 'speed': -1}, 'error',
            label='block-job-set-speed negative'),
        Cmd('block-job-set-speed', {'device': 'm', 'speed': 0}),
        Wait('BLOCK_JOB_READY'),
        Cmd('job-complete', {'id': 'm'}),
        status('null', 'm'),
    ], images=['src.qcow2', 'tgt.qcow2']),

    Script('stream_to_base_node', [
        Cmd('block-stream', {'job-id': 's', 'device': 'top', 'base-node': 'base'}),
        status('null', 's'),
    ], images=CHAIN),

    Script('stream_whole_chain', [
        Cmd('block-stream', {'job-id': 's', 'device': 'top'}),
        status('null', 's'),
    ], images=CHAIN),

    Script('stream_backing_file', [
        Cmd('block-stream', {'job-id': 's', 'device': 'top', 'base-node': 'base',
                             'backing-file': 'base.qcow2'}),
        status('null', 's'),
    ], images=CHAIN),

    Script('stream_bottom', [
        Cmd('block-stream', {'job-id': 's', 'device': 'top', 'bottom': 'mid'}),
        status('null', 's'),
    ], images=CHAIN),

    # a read-only intermediate node streamed (reopened read-write for it)
    Script('stream_intermediate', [
        Cmd('block-stream', {'job-id': 's', 'device': 'mid'}),
        status('null', 's'),
    ], images=CHAIN),

    Script('stream_pause_resume_cancel', [
        Cmd('block-stream', {'job-id': 's', 'device': 'top', 'base-node': 'base',
                             'speed': STALL}),
        status('running', 's'),
        Cmd('block-job-pause', {'device': 's'}),
        status('paused', 's'),
        Cmd('query-jobs', label='query-jobs (paused)'),
        Cmd('query-block-jobs', label='query-block-jobs (paused)'),
        Cmd('block-job-resume', {'device': 's'}),
        status('running', 's'),
        Cmd('job-complete', {'id': 's'}, 'error', label='job-complete of a stream'),
        Cmd('job-cancel', {'id': 's'}),
        status('null', 's'),
    ], images=CHAIN, volatile={'offset'}),

    Script('commit_intermediate', [
        Cmd('block-commit', {'job-id': 'c', 'device': 'top', 'top-node': 'mid',
                             'base-node': 'base'}),
        status('null', 'c'),
        Cmd('query-named-block-nodes', {'flat': True},
            label='query-named-block-nodes (ro of base)'),
    ], images=CHAIN),

    Script('commit_active', [
        Cmd('block-commit', {'job-id': 'c', 'device': 'top'}),
        Wait('BLOCK_JOB_READY'),
        Cmd('query-block-jobs', label='query-block-jobs (ready)'),
        Cmd('job-complete', {'id': 'c'}),
        status('null', 'c'),
    ], images=CHAIN),

    # rtop over a raw rbase on a full file system: the active commit fails
    # with ENOSPC on both sides (rbase's content then depends on timing)
    Script('commit_active_enospc', [
        Cmd('blockdev-add', {'driver': 'raw', 'node-name': 'rbase', 'read-only': True,
                             'file': {'driver': 'file', 'node-name': 'rbase-f',
                                      'filename': '{D}/full/rbase.raw'}}),
        qcow2_target('rtop', 'rtop.qcow2', backing='rbase'),
        Cmd('block-commit', {'job-id': 'c', 'device': 'rtop', 'on-error': 'report'}),
        status('null', 'c'),
    ], images=['rtop.qcow2'], unchecked=['full/rbase.raw'], volatile={'offset', 'len'},
        tmpfs=True),

    Script('commit_default_base', [
        Cmd('block-commit', {'job-id': 'c', 'device': 'top', 'top-node': 'mid'}),
        status('null', 'c'),
    ], images=CHAIN),

    Script('commit_intermediate_backing_file', [
        Cmd('block-commit', {'job-id': 'c', 'device': 'top', 'top-node': 'mid',
                             'base-node': 'base', 'backing-file': 'base.qcow2'}),
        status('null', 'c'),
    ], images=CHAIN),

    # base gets part of mid's data: compared by check only
    Script('commit_pause_cancel', [
        Cmd('block-commit', {'job-id': 'c', 'device': 'top', 'top-node': 'mid',
                             'base-node': 'base', 'speed': STALL}),
        status('running', 'c'),
        Cmd('job-pause', {'id': 'c'}),
        status('paused', 'c'),
        Cmd('query-jobs', label='query-jobs (paused)'),
        Cmd('query-block-jobs', label='query-block-jobs (paused)'),
        Cmd('job-cancel', {'id': 'c'}),
        status('null', 'c'),
    ], images=['top.qcow2', 'mid.qcow2'], unchecked=['base.qcow2'],
        volatile={'offset'}),

    # A raw target on a full file system: ENOSPC on both sides.  One
    # write in flight at a time (buf-size = granularity), so one error.
    Script('mirror_enospc_stop', [
        Cmd('blockdev-add', {'driver': 'raw', 'node-name': 'tgt',
                             'file': {'driver': 'file', 'node-name': 'tgt-f',
                                      'filename': '{D}/full/tgt.raw'}}),
        mirror('m', granularity=65536, **{'buf-size': 65536,
                                          'on-target-error': 'stop'}),
        Wait('BLOCK_JOB_ERROR'),
        status('paused', 'm'),
        Cmd('query-block-jobs', label='query-block-jobs (stopped on ENOSPC)'),
        Cmd('query-jobs', label='query-jobs (stopped on ENOSPC)'),
        Cmd('job-cancel', {'id': 'm'}),
        status('null', 'm'),
    ], images=['src.qcow2'], volatile={'offset', 'len'}, tmpfs=True),

    Script('mirror_enospc_report', [
        Cmd('blockdev-add', {'driver': 'raw', 'node-name': 'tgt',
                             'file': {'driver': 'file', 'node-name': 'tgt-f',
                                      'filename': '{D}/full/tgt.raw'}}),
        mirror('m', granularity=65536, **{'buf-size': 65536}),
        status('null', 'm'),
    ], images=['src.qcow2'], volatile={'offset', 'len'}, tmpfs=True),

    # qemu-storage-daemon 7.2 starts the job and fails it at once.
    Script('mirror_target_too_small', [
        qcow2_target('small', 'small.qcow2'),
        Cmd('blockdev-mirror', {'job-id': 'm', 'device': 'src', 'target': 'small',
                                'sync': 'full'}, label='blockdev-mirror target too small'),
        status('null', 'm'),
    ], images=['src.qcow2', 'small.qcow2']),

    # On its own: diskstack starts a job here (job id = the node name).
    Script('mirror_without_job_id', [
        qcow2_target('tgt', 'tgt.qcow2'),
        Cmd('blockdev-mirror', {'device': 'src', 'target': 'tgt', 'sync': 'full',
                                'speed': STALL, 'granularity': 65536,
                                'buf-size': 65536}, 'error',
            label='blockdev-mirror without job-id'),
        Cmd('query-jobs', label='query-jobs (none)'),
    ], images=['src.qcow2'], unchecked=['tgt.qcow2']),

    Script('errors', UNKNOWN_JOB + [
        qcow2_target('tgt', 'tgt.qcow2'),
        qcow2_target('small', 'small.qcow2'),
        slow_mirror('m'),
        status('running', 'm'),
        Cmd('query-jobs', label='query-jobs (running)'),
        Cmd('query-block-jobs', label='query-block-jobs (running)'),
        Cmd('job-complete', {'id': 'm'}, 'error', label='job-complete of a running mirror'),
        Cmd('block-job-complete', {'device': 'm'}, 'error',
            label='block-job-complete of a running mirror'),
        Cmd('job-dismiss', {'id': 'm'}, 'error', label='job-dismiss of a running job'),
        Cmd('job-finalize', {'id': 'm'}, 'error', label='job-finalize of a running job'),
        Cmd('block-stream', {'job-id': 'm', 'device': 'top'}, 'error',
            label='block-stream duplicate job id'),
        Cmd('block-commit', {'job-id': 'm', 'device': 'top', 'top-node': 'mid'}, 'error',
            label='block-commit duplicate job id'),
        Cmd('blockdev-mirror', {'job-id': 'm2', 'device': 'src', 'target': 'small',
                                'sync': 'full'}, 'error',
            label='blockdev-mirror of a node in use by a job'),
        Cmd('blockdev-del', {'node-name': 'tgt'}, 'error',
            label='blockdev-del of a mirror target'),
        Cmd('job-cancel', {'id': 'm'}),
        status('null', 'm'),
        Cmd('blockdev-mirror', {'job-id': 'm', 'device': 'src', 'target': 'src',
                                'sync': 'full'}, 'error', label='blockdev-mirror onto itself'),
        Cmd('blockdev-mirror', {'job-id': 'm', 'device': 'nope', 'target': 'tgt',
                                'sync': 'full'}, 'error', label='blockdev-mirror unknown device'),
        Cmd('blockdev-mirror', {'job-id': 'm', 'device': 'src', 'target': 'nope',
                                'sync': 'full'}, 'error', label='blockdev-mirror unknown target'),
        Cmd('blockdev-mirror', {'job-id': 'm', 'device': 'src', 'target': 'tgt',
                                'sync': 'sideways'}, 'error',
            label='blockdev-mirror bad sync'),
        Cmd('blockdev-mirror', {'job-id': 'm', 'device': 'src', 'target': 'tgt'}, 'error',
            label='blockdev-mirror without sync'),
        Cmd('blockdev-mirror', {'job-id': 'm', 'device': 'src', 'target': 'src-f',
                                'sync': 'full'}, 'error',
            label='blockdev-mirror into its own file'),
        Cmd('blockdev-mirror', {'job-id': 'm', 'device': 'src', 'target': 'tgt',
                                'sync': 'full', 'granularity': 1000}, 'error',
            label='blockdev-mirror granularity not a power of 2'),
        Cmd('block-stream', {'job-id': 's', 'device': 'top', 'base-node': 'src'}, 'error',
            label='block-stream base-node not in the chain'),
        Cmd('block-stream', {'job-id': 's', 'device': 'top', 'base-node': 'top'}, 'error',
            label='block-stream base-node is the device'),
        Cmd('block-stream', {'job-id': 's', 'device': 'nope'}, 'error',
            label='block-stream unknown device'),
        Cmd('block-stream', {'device': 'top'}, 'error', label='block-stream without job-id'),
        Cmd('block-commit', {'device': 'top', 'top-node': 'mid'}, 'error',
            label='block-commit without job-id'),
        Cmd('block-stream', {'job-id': 's', 'device': 'top', 'backing-file': 'x'}, 'error',
            label='block-stream backing-file without base'),
        Cmd('block-stream', {'job-id': 's', 'device': 'top', 'speed': -1}, 'error',
            label='block-stream negative speed'),
        Cmd('block-commit', {'job-id': 'c', 'device': 'top', 'top-node': 'mid',
                             'base-node': 'mid'}, 'error', label='block-commit top == base'),
        Cmd('block-commit', {'job-id': 'c', 'device': 'top', 'top-node': 'base',
                             'base-node': 'mid'}, 'error', label='block-commit base above top'),
        Cmd('block-commit', {'job-id': 'c', 'device': 'top', 'top-node': 'src'}, 'error',
            label='block-commit top-node not in the chain'),
        Cmd('block-commit', {'job-id': 'c', 'device': 'nope'}, 'error',
            label='block-commit unknown device'),
        Cmd('block-commit', {'job-id': 'c', 'device': 'top', 'backing-file': 'x'}, 'error',
            label='block-commit backing-file of the active layer'),
        Cmd('block-commit', {'job-id': 'c', 'device': 'src'}, 'error',
            label='block-commit of a node without backing'),
        Cmd('query-jobs', label='query-jobs (none left)'),
    ], images=['src.qcow2'] + CHAIN, unchecked=['tgt.qcow2'], volatile={'offset', 'len'}),
]


# Error messages that may differ on purpose (label: why).  Every other
# message must be equal; all differing ones are printed.
WITHOUT_JOB_ID = ("QEMU says \"Invalid job ID ''\" (it would name the job after "
                  "the device, and a node's device name is empty); diskstack "
                  "says what is missing")
MESSAGE_MAY_DIFFER = {
    'blockdev-mirror into its own file':
        "QEMU's is the permission conflict its graph happens to hit; diskstack "
        "checks the chains first and says what is wrong",
    'block-stream without job-id': WITHOUT_JOB_ID,
    'block-commit without job-id': WITHOUT_JOB_ID,
}

# Differences kept on purpose, each with its reason: {(script name or '*',
# what): why}.  'what' is a step label, 'LABEL.KEY' for a value in
# query-jobs / query-block-jobs, 'events' (the sequence without len and
# offset), 'events: len/offset' (the same with them), 'events: offset >
# len', 'events at quit', 'stillborn job ID' or 'image FILE'.
DELIBERATE = {
    ('errors', 'blockdev-mirror of a node in use by a job'):
        "QEMU says 'Need a root block node' (an artifact: src now sits under "
        "its mirror_top filter); diskstack says \"Node 'src' is busy: block "
        "device is in use by block job: mirror\", which names the cause",
    ('errors', 'blockdev-del of a mirror target'):
        "QEMU says 'Node tgt is in use'; diskstack also names the user "
        "(\"Node 'tgt' is in use by job 'm'\")",
    ('errors', 'stillborn job m'):
        "QEMU creates the job before its permission check fails and sends "
        "JOB_STATUS_CHANGE created, null for a job nobody asked about; "
        "diskstack refuses before a job exists",
    ('errors', 'stillborn job s'):
        "the same for block-stream with speed -1 (QEMU creates the job, then "
        "refuses the speed)",
    ('mirror_without_job_id', 'blockdev-mirror without job-id'):
        "QEMU 7.2 refuses (\"Invalid job ID ''\": it would name the job after "
        "the device, and a node has no device name); diskstack names a "
        "mirror after its device node (QEMU's documented default; the "
        "client's `mirror` names jobs so too).  block-stream and "
        "block-commit still require job-id, as qemu-storage-daemon does",
    ('mirror_without_job_id', 'query-jobs (none)'):
        'consequence: the job diskstack started',
    ('mirror_without_job_id', 'events'):
        'consequence: the job diskstack started (created, running)',
    ('mirror_without_job_id', 'nodes at the end'):
        'consequence: the job diskstack started (its mirror_top node)',
    ('mirror_without_job_id', 'graph at the end'):
        'consequence: the job diskstack started (its filter and users)',
    ('mirror_without_job_id', 'events at quit'):
        'consequence: quit cancels the job diskstack started (aborting, '
        'BLOCK_JOB_CANCELLED, concluded, null)',
    ('mirror_target_too_small', 'blockdev-mirror target too small'):
        "QEMU 7.2 starts the job, which aborts at once (BLOCK_JOB_COMPLETED "
        "with 'Source and target image have different sizes'); diskstack "
        "refuses the command with that message, so a refused command leaves "
        "no job and no events behind",
    ('mirror_target_too_small', 'events'):
        'consequence of the refusal above: no job, no events',
    ('mirror_manual_finalize_dismiss', 'query-block-jobs (pending).paused'):
        "QEMU reports paused: true for a pending mirror because it keeps the "
        "source drained from the end of the copy until job-finalize, so the "
        "guest's I/O waits all that time; diskstack quiesces the source only "
        "inside prepare, and the job is not paused",
    ('commit_active_enospc', 'nodes at the end'):
        "after a failed active commit QEMU 7.2 leaves the base read-write; "
        "diskstack opens the base writable only for the job (issue 7) and "
        "makes it read-only again whatever the outcome",
}

# Differences that look like diskstack bugs, skipped so that the test
# stays green while they are worked on (same keys as DELIBERATE).
# DISKSTACK_JOBDIFF_STRICT=1 skips nothing.
KNOWN_BUGS = {
}

# Reply keys diskstack may add (on purpose): its own extensions, and keys
# of a newer QEMU.
EXTRA_KEY_PREFIX = 'x-diskstack-'
EXTRA_KEYS = {
    'actively-synced',      # query-block-jobs of a mirror: BlockJobInfoMirror,
                            # QEMU 8.2 and later
}

# query-jobs / query-block-jobs values that depend on timing.
VOLATILE_JOB_KEYS = {'current-progress', 'total-progress', 'len', 'offset', 'busy'}


# ---------------------------------------------------------------- targets

def qemu_io(img, *cmds):
    args = ['qemu-io', '-f', 'qcow2']
    for c in cmds:
        args += ['-c', c]
    r = subprocess.run(args + [img], capture_output=True)
    if r.returncode != 0:
        raise AssertionError('qemu-io %s: %s' % (img, r.stderr.decode()))


def make_images(directory):
    """The images every script starts from (made once, copied per run):
    base <- mid <- top (each layer owns data, upper layers win), src with
    data and holes, empty targets, and a target one MiB too small."""
    def create(name, size=SIZE, backing=None, backing_fmt='qcow2'):
        args = ['create', '-q', '-f', 'qcow2']
        if backing:
            args += ['-b', backing, '-F', backing_fmt]
        r = run_qemu_img(*(args + [os.path.join(directory, name), str(size)]))
        if r.returncode != 0:
            raise AssertionError(r.stderr.decode())
        return os.path.join(directory, name)
    os.makedirs(directory)
    cwd = os.getcwd()
    os.chdir(directory)         # relative backing file names in the headers
    try:
        qemu_io(create('base.qcow2'), 'write -P 0x11 0 6M')
        qemu_io(create('mid.qcow2', backing='base.qcow2'),
                'write -P 0x22 1M 2M', 'write -z 5M 512K')
        qemu_io(create('top.qcow2', backing='mid.qcow2'), 'write -P 0x33 2560K 1M')
        qemu_io(create('src.qcow2'), 'write -P 0x44 0 3M', 'write -P 0x45 4M 4M')
        create('tgt.qcow2')
        create('ttop.qcow2', backing='mid.qcow2')
        create('small.qcow2', SIZE - MiB)
        # over full/rbase.raw, which each run makes in its tmpfs
        os.mkdir('full')
        with open('full/rbase.raw', 'wb') as f:
            f.truncate(SIZE)
        qemu_io(create('rtop.qcow2', backing='full/rbase.raw', backing_fmt='raw'),
                'write -P 0x55 0 3M')
        shutil.rmtree('full')
    finally:
        os.chdir(cwd)


COMMAND_LINE_NODES = [
    'driver=file,node-name=base-f,filename={D}/base.qcow2',
    'driver=qcow2,node-name=base,file=base-f,read-only=on',
    'driver=file,node-name=mid-f,filename={D}/mid.qcow2',
    'driver=qcow2,node-name=mid,file=mid-f,backing=base,read-only=on',
    'driver=file,node-name=top-f,filename={D}/top.qcow2',
    'driver=qcow2,node-name=top,file=top-f,backing=mid',
    'driver=file,node-name=src-f,filename={D}/src.qcow2',
    'driver=qcow2,node-name=src,file=src-f',
]
EXPORT = 'type=fuse,id=e-src,node-name=src,mountpoint={D}/src.img,writable=off'


class Target:
    """One daemon in its own directory holding a copy of the images."""

    name = None

    def __init__(self, test, template, directory, script):
        self.test, self.dir, self.script = test, directory, script
        shutil.copytree(template, directory)
        self.sock = os.path.join(directory, 'qmp.sock')
        self.mountpoint = os.path.join(directory, 'src.img')
        if script.tmpfs:
            test.mount_tmpfs(os.path.join(directory, 'full'))
            with open(os.path.join(directory, 'full', 'tgt.raw'), 'wb') as f:
                f.truncate(SIZE)
            with open(os.path.join(directory, 'full', 'rbase.raw'), 'wb') as f:
                f.write(b'\x66' * (256 * 1024))
                f.truncate(SIZE)
        if script.export:
            open(self.mountpoint, 'w').close()

    def options(self):
        args = []
        for b in COMMAND_LINE_NODES:
            args += ['--blockdev', substitute(b, self.dir)]
        if self.script.export:
            args += ['--export', substitute(EXPORT, self.dir)]
        return args

    def start(self):
        d = Daemon(self.command(), self.mountpoint, self.dir, name=self.name)
        self.test.daemons.append(d)
        d.start(wait_mounted=self.script.export)
        # the socket file appears at bind(), connections work after listen()
        wait_for(lambda: self.connect() or d.proc.poll() is not None,
                 lambda: 'no QMP socket: ' + d.describe())
        if d.proc.poll() is not None:
            raise AssertionError('%s exited: %s' % (self.name, d.describe()))
        self.daemon = d
        return self

    def connect(self):
        try:
            self.qmp = QmpClient(self.sock)
            return True
        except (FileNotFoundError, ConnectionRefusedError):
            return False


class QsdTarget(Target):
    name = 'qsd'

    def command(self):
        return (['qemu-storage-daemon'] + self.options() +
                ['--chardev', 'socket,path=%s,server=on,wait=off,id=m' % self.sock,
                 '--monitor', 'chardev=m'])


class DiskstackTarget(Target):
    name = 'diskstack'

    def command(self):
        return [diskstack_bin(), 'serve', '--qmp', self.sock] + self.options()


# ---------------------------------------------------------------- running

class EventLog:
    """Every event of a connection in order of arrival, each tagged with the
    step during which it arrived ('step'); waits search from just after the
    event the previous wait matched."""

    def __init__(self, qmp):
        self.q, self.events, self.cursor = qmp, [], 0

    def take_queued(self, label):
        for e in self.q.events:
            e['step'] = label
        self.events.extend(self.q.events)
        self.q.events.clear()

    def cmd(self, name, args, label):
        r = self.q.cmd(name, args)
        self.take_queued(label)
        return r

    def wait(self, step):
        """The matching event, or None after EVENT_TIMEOUT."""
        self.take_queued(step.label)
        i = self.cursor
        self.q.sock.settimeout(EVENT_TIMEOUT)
        try:
            while True:
                while i < len(self.events):
                    if step.matches(self.events[i]):
                        self.cursor = i + 1
                        return self.events[i]
                    i += 1
                e = self.q.recv()
                e['step'] = step.label
                self.events.append(e)
        except socket.timeout:
            return None
        finally:
            self.q.sock.settimeout(QMP_TIMEOUT)


def read_export(target):
    with open(target.mountpoint, 'rb') as f:
        data = f.read()
    return {'length': len(data), 'sha256': hashlib.sha256(data).hexdigest()[:16]}


def outcome(rec):
    return 'error' if 'error' in rec['reply'] else 'ok'


def run_script(target, script, reference=None):
    """Runs the script; returns (records, events, events at quit).  A record
    per step: {'label', 'kind', 'reply' | 'event' | 'observed', 'expect'?}.
    reference: the other run's records; once a command succeeds here where
    it failed there (or the reverse), the waits that follow are not waited
    for (kind 'skipped'): the event would not come, and the difference is
    already recorded."""
    q = target.qmp
    assert q.cmd('qmp_capabilities') == {'return': {}}
    log = EventLog(q)
    records, diverged = [], None
    for i, step in enumerate(script.steps):
        rec = {'label': step.label}
        try:
            if isinstance(step, Cmd):
                rec.update(kind='cmd', name=step.name, expect=step.expect,
                           reply=log.cmd(step.name, substitute(step.args, target.dir),
                                         step.label))
                if reference and not diverged and outcome(rec) != outcome(reference[i]):
                    diverged = step.label
            elif isinstance(step, Wait):
                if diverged:
                    rec.update(kind='skipped', after=diverged)
                else:
                    rec.update(kind='wait', event=log.wait(step))
            else:
                rec.update(kind='io', observed=read_export(target))
        except (EOFError, OSError) as e:
            rec.update(kind='died', error=str(e))
            records.append(rec)
            return records, log.events, []
        records.append(rec)
    quit_from = len(log.events)
    records.append({'label': 'quit', 'kind': 'cmd', 'name': 'quit',
                    'reply': log.cmd('quit', None, 'quit')})
    try:                    # the events of the shutdown, up to the close
        while True:
            log.events.append(q.recv())
    except (EOFError, OSError):
        pass
    return records, log.events[:quit_from], log.events[quit_from:]


# ---------------------------------------------------------------- comparing

def stillborn_jobs(events):
    """Splits off the jobs announced and taken back at once (created, then
    null, nothing else of that job between): qemu-storage-daemon 7.2 creates
    a job before some of its checks and sends both events when one fails.
    Returns (other events, {job id: step of its creation})."""
    status = [(i, e['data']['id'], e['data']['status']) for i, e in enumerate(events)
              if e['event'] == 'JOB_STATUS_CHANGE']
    drop, born = set(), {}
    for (i, job, st), (j, job2, st2) in zip(status, status[1:]):
        if st == 'created' and st2 == 'null' and job == job2:
            drop.update((i, j))
            born.setdefault(job, []).append(events[i].get('step'))
    return [e for i, e in enumerate(events) if i not in drop], born


def normalize_events(events, volatile):
    """What is compared of each event.  Repeated identical BLOCK_JOB_ERROR
    events (several requests in flight failing) count once."""
    out = []
    for e in events:
        data = e.get('data', {})
        if e['event'] == 'JOB_STATUS_CHANGE':
            item = ('JOB_STATUS_CHANGE', data.get('id'), data.get('status'))
        elif e['event'].startswith('BLOCK_JOB_'):
            item = (e['event'], tuple(sorted(data)),
                    tuple((k, data[k]) for k in sorted(data) if k not in volatile))
        else:
            item = (e['event'], json.dumps(data, sort_keys=True))
        if item[0] == 'BLOCK_JOB_ERROR' and out and out[-1] == item:
            continue
        out.append(item)
    return out


def format_event(item):
    if item[0] == 'JOB_STATUS_CHANGE':
        return '%s %s' % (item[1], item[2])
    if item[0].startswith('BLOCK_JOB_'):
        return '%s %s' % (item[0], dict(item[2]))
    return '%s %s' % item


PROGRESS = {'len', 'offset'}


def progress_inconsistent(events):
    """The first BLOCK_JOB_* event whose offset is beyond its len."""
    for e in events:
        d = e.get('data', {})
        if e['event'].startswith('BLOCK_JOB_') and d.get('offset', 0) > d.get('len', 0):
            return e
    return None


def compare_event_lists(theirs, ours, volatile, what, out):
    bad = progress_inconsistent(ours)
    if bad and not progress_inconsistent(theirs):
        out.append(('diff', what + ': offset > len', '%s %s' % (bad['event'], bad['data'])))
    t, o = normalize_events(theirs, volatile), normalize_events(ours, volatile)
    if t == o:
        return
    n = 0
    while n < min(len(t), len(o)) and t[n] == o[n]:
        n += 1
    sep = '\n                 '
    out.append(('diff', what, 'first difference at event %d:\n      QEMU:      %s'
                '\n      diskstack: %s' % (
                    n, sep.join(format_event(x) for x in t[n:n + 6]) or '(none)',
                    sep.join(format_event(x) for x in o[n:n + 6]) or '(none)')))


def compare_events(theirs, ours, volatile, out):
    """The job events in order; the stillborn jobs apart (by the step that
    created them); the events of the shutdown apart."""
    (t, tq), (o, oq) = theirs, ours
    t, t_born = stillborn_jobs(t)
    o, o_born = stillborn_jobs(o)
    compare_event_lists(t, o, volatile | PROGRESS, 'events', out)
    if not PROGRESS <= volatile and not any(d[1] == 'events' for d in out):
        compare_event_lists(t, o, volatile, 'events: len/offset', out)
    for job in sorted(set(t_born) | set(o_born)):
        if t_born.get(job) != o_born.get(job):
            out.append(('diff', 'stillborn job %s' % job,
                        'JOB_STATUS_CHANGE created+null after: QEMU %s, diskstack %s'
                        % (t_born.get(job), o_born.get(job))))
    compare_event_lists(tq, oq, volatile, 'events at quit', out)


def compare_jobs(theirs, ours, label, out):
    """query-jobs / query-block-jobs: element by element, key sets and the
    values that do not depend on timing."""
    if len(theirs) != len(ours):
        out.append(('diff', label, '%d jobs in QEMU, %d in diskstack: %s'
                    % (len(theirs), len(ours), ours)))
        return
    for t, o in zip(theirs, ours):
        extra = {k for k in set(o) - set(t) if not k.startswith(EXTRA_KEY_PREFIX)
                 and k not in EXTRA_KEYS}
        if set(t) - set(o) or extra:
            out.append(('diff', label, 'keys: QEMU only %s, diskstack only %s'
                        % (sorted(set(t) - set(o)), sorted(extra))))
        for k in sorted(set(t) & set(o) - VOLATILE_JOB_KEYS):
            if t[k] != o[k]:
                out.append(('diff', '%s.%s' % (label, k),
                            'QEMU %r, diskstack %r' % (t[k], o[k])))
        # the volatile values: at least consistent
        for done, total in (('current-progress', 'total-progress'), ('offset', 'len')):
            if done in o and o[done] > o[total] and not t[done] > t[total]:
                out.append(('diff', '%s.%s' % (label, total), 'diskstack %s %d > %s %d'
                            % (done, o[done], total, o[total])))


def node_summary(nodes):
    """query-named-block-nodes reduced to what must match: by node name
    (auto-named ones by driver), driver, read-only, depth of the chain."""
    return sorted((n['node-name'] if not n['node-name'].startswith('#') else '#auto',
                   n['drv'], n['ro'], n['backing_file_depth']) for n in nodes)


def compare_nodes(theirs, ours, label, out):
    t, o = node_summary(theirs), node_summary(ours)
    if t != o:
        out.append(('diff', label, '(name, driver, ro, depth): QEMU only %s; '
                    'diskstack only %s' % ([n for n in t if n not in o],
                                           [n for n in o if n not in t])))


def compare_command(t, o, out):
    label = t['label']
    rt, ro = t['reply'], o['reply']
    if ('error' in rt) != ('error' in ro):
        out.append(('diff', label, 'QEMU: %s; diskstack: %s'
                    % (json.dumps(rt)[:300], json.dumps(ro)[:300])))
    elif 'error' in rt:
        if rt['error'].get('class') != ro['error'].get('class'):
            out.append(('diff', label, 'error class %s in QEMU, %s in diskstack'
                        % (rt['error'].get('class'), ro['error'].get('class'))))
        if rt['error'].get('desc') != ro['error'].get('desc'):
            sev = 'note' if label in MESSAGE_MAY_DIFFER else 'diff'
            out.append((sev, label, 'QEMU says %r; diskstack says %r'
                        % (rt['error'].get('desc'), ro['error'].get('desc'))))
    elif t['name'] in ('query-jobs', 'query-block-jobs'):
        compare_jobs(rt['return'], ro['return'], label, out)
    elif t['name'] == 'query-named-block-nodes':
        compare_nodes(rt['return'], ro['return'], label, out)
    elif t['name'] == 'x-debug-query-block-graph':
        compare_graph(t, o, out)
    elif rt != ro:
        out.append(('diff', label, 'QEMU %s; diskstack %s' % (rt, ro)))


def compare_step(t, o, out):
    if t['kind'] == 'cmd':
        compare_command(t, o, out)
    elif t['kind'] == 'wait':
        if o['kind'] != 'skipped' and o['event'] is None:
            # (skipped: a consequence of the command that differed)
            out.append(('diff', t['label'], 'no such event from diskstack'))
    elif t['observed'] != o['observed']:
        out.append(('diff', t['label'], 'QEMU read %s; diskstack read %s'
                    % (t['observed'], o['observed'])))


def compare_records(theirs, ours):
    return walk_records(theirs, ours, compare_step)


def chain_summary(path, directory):
    """qemu-img info --backing-chain, reduced to what must match."""
    r = run_qemu_img('info', '--output=json', '--backing-chain', '-U', path)
    if r.returncode != 0:
        return {'error': r.stderr.decode(errors='replace').strip()}
    return [{'file': os.path.relpath(i['filename'], directory),
             'format': i['format'], 'virtual-size': i['virtual-size'],
             'backing': i.get('backing-filename', '').replace(directory, '{D}'),
             'backing-format': i.get('backing-filename-format')}
            for i in json.loads(r.stdout)]


def check_result(path):
    r = run_qemu_img('check', '--output=json', path)
    try:
        info = json.loads(r.stdout)
    except ValueError:
        return {'exit': r.returncode, 'stderr': r.stderr.decode(errors='replace')}
    return {'exit': r.returncode, 'corruptions': info.get('corruptions', 0),
            'leaks': info.get('leaks', 0)}


def compare_images(script, qdir, ddir, out):
    for img in script.images:
        q, d = os.path.join(qdir, img), os.path.join(ddir, img)
        what = 'image ' + img
        sq, sd = chain_summary(q, qdir), chain_summary(d, ddir)
        if sq != sd:
            out.append(('diff', what, 'qemu-img info --backing-chain: QEMU %s; '
                        'diskstack %s' % (sq, sd)))
        for who, p in (('QEMU', q), ('diskstack', d)):
            r = run_qemu_img('check', '-q', p)
            if r.returncode != 0:
                out.append(('diff', what, 'qemu-img check after %s: %s' % (
                    who, (r.stdout + r.stderr).decode(errors='replace').strip())))
        r = run_qemu_img('compare', '-U', q, d)
        if r.returncode != 0:
            out.append(('diff', what, 'qemu-img compare (whole chain): %s'
                        % (r.stdout + r.stderr).decode(errors='replace').strip()))
    for img in script.unchecked:
        cq = check_result(os.path.join(qdir, img))
        cd = check_result(os.path.join(ddir, img))
        if cq != cd:
            out.append(('diff', 'image ' + img, 'qemu-img check: QEMU %s, diskstack %s'
                        % (cq, cd)))


def format_report(diffs):
    lines = []
    for title, sev in (('DIFFERENCES', 'diff'),
                       ('SKIPPED (DELIBERATE, KNOWN_BUGS)', 'known'),
                       ('NOTES (MESSAGE_MAY_DIFFER, graph permissions; not failures)', 'note')):
        items = [d for d in diffs if d[0] == sev]
        if items:
            lines.append('%s (%d):' % (title, len(items)))
            lines.extend('  %s: %s' % (p, text) for _, p, text in items)
    return '\n'.join(lines)


# ---------------------------------------------------------------- the test

class JobsDiff(FuseTestCase):
    """One test per script (test_<script name>)."""

    def mount_tmpfs(self, mnt):
        os.makedirs(mnt)
        r = subprocess.run(['mount', '-t', 'tmpfs', '-o', 'size=%d' % MiB,
                            'tmpfs', mnt], stderr=subprocess.PIPE)
        if r.returncode != 0:
            self.skipTest('cannot mount tmpfs: %s' % r.stderr.decode().strip())
        self.addCleanup(subprocess.run, ['umount', '-l', mnt],
                        stderr=subprocess.DEVNULL)

    def run_target(self, cls, template, script, reference=None):
        t = cls(self, template, self.path(cls.name + '-run'), script)
        self.addCleanup(force_unmount, t.mountpoint)
        t.start()
        try:
            records, events, at_quit = run_script(t, script, reference)
        finally:
            t.qmp.close()
        if records[-1]['label'] == 'quit':
            self.assertEqual(t.daemon.wait_exit(), 0, t.daemon.describe())
        if os.environ.get('DISKSTACK_JOBDIFF_VERBOSE'):
            print('=== %s' % cls.name)
            for r in records:
                print('  %s: %s' % (r['label'], json.dumps(
                    r.get('reply', r.get('event', r.get('observed'))))[:400]))
            for what, evs in (('events', events), ('events at quit', at_quit)):
                print('  %s:' % what)
                for e in evs:
                    print('    %s  (during %s)' % (
                        format_event(normalize_events([e], set())[0]), e.get('step')))
        return t, records, (events, at_quit)

    def run_diff(self, script):
        for tool in ('qemu-storage-daemon', 'qemu-img', 'qemu-io'):
            if not shutil.which(tool):
                self.skipTest('%s is not installed; nothing to compare with' % tool)
        template = self.path('template')
        make_images(template)
        qsd, theirs, tev = self.run_target(QsdTarget, template, script)
        wrong = check_script_on_qsd(theirs)
        self.assertEqual(wrong, [], 'the script is wrong for qemu-storage-daemon:\n'
                         + '\n'.join(wrong))
        ours_cls = (type('QsdAgain', (QsdTarget,), {'name': 'qsd2'})
                    if os.environ.get('DISKSTACK_JOBDIFF_SELFTEST') else DiskstackTarget)
        ds, ours, oev = self.run_target(ours_cls, template, script, theirs)
        diffs = compare_records(theirs, ours)
        compare_events(tev, oev, script.volatile, diffs)
        compare_images(script, qsd.dir, ds.dir, diffs)
        diffs = [('known', p, '%s\n      [%s]' % (text, known_bug(script, p)))
                 if sev == 'diff' and known_bug(script, p) else (sev, p, text)
                 for sev, p, text in diffs]
        report = format_report(diffs)
        if any(d[0] == 'diff' for d in diffs):
            self.fail('diskstack differs from qemu-storage-daemon in %s:\n%s\n'
                      '--- diskstack stderr ---\n%s'
                      % (script.name, report, ds.daemon.stderr()))
        print(report)


def known_bug(script, path):
    if os.environ.get('DISKSTACK_JOBDIFF_STRICT'):
        return None
    for table in (DELIBERATE, KNOWN_BUGS):
        why = table.get((script.name, path)) or table.get(('*', path))
        if why:
            return why
    return None


def add_tests():
    for script in SCRIPTS:
        def test(self, script=script):
            self.run_diff(script)
        test.__name__ = 'test_' + script.name
        test.__doc__ = 'The job script %s, on both daemons.' % script.name
        setattr(JobsDiff, test.__name__, test)


add_tests()

if __name__ == '__main__':
    unittest.main()
