#!/usr/bin/env python3
"""Runs diskstack's functional tests (tests/func/test_*.py, unittest).

    tests/func/run.py [--build DIR] [-k PATTERN]... [--timeout SECONDS] [--list]

Each test runs in its own python process with a timeout, so a hung FUSE
request fails one test instead of the suite.  One line per test:
`ok|FAIL|skip  NAME  SECONDS`, then `N passed, M failed[, K skipped]`.
The exit status is non-zero if any test failed.

After a timeout the harness kills the daemons that test started (found by
its private temp dir on their command line), unmounts what is left under
that dir, and removes it.
"""

import argparse
import fnmatch
import glob
import importlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import unittest

HERE = os.path.dirname(os.path.abspath(__file__))
sys.dont_write_bytecode = True     # keep the source tree clean
SKIP_STATUS = 77


def discover(patterns):
    """Test ids (module.Class.method) of every test_*.py, filtered."""
    sys.path.insert(0, HERE)
    loader = unittest.TestLoader()
    ids = []
    for path in sorted(glob.glob(os.path.join(HERE, 'test_*.py'))):
        module = importlib.import_module(os.path.basename(path)[:-3])
        ids.extend(flatten(loader.loadTestsFromModule(module)))
    if patterns:
        globs = [p if any(c in p for c in '*?[') else '*%s*' % p for p in patterns]
        ids = [i for i in ids if any(fnmatch.fnmatchcase(i, g) for g in globs)]
    return ids


def flatten(suite):
    for item in suite:
        if isinstance(item, unittest.TestSuite):
            yield from flatten(item)
        else:
            yield item.id()


# ---------------------------------------------------------------- child side

def run_child(test_id):
    """Runs one test in this process; exit 0 ok, 77 skipped, 1 failed."""
    sys.path.insert(0, HERE)
    suite = unittest.TestLoader().loadTestsFromName(test_id)
    result = unittest.TextTestRunner(stream=sys.stdout, verbosity=0).run(suite)
    if result.failures or result.errors or result.unexpectedSuccesses:
        return 1
    if result.skipped and result.testsRun == len(result.skipped):
        print('SKIP: %s' % result.skipped[0][1])
        return SKIP_STATUS
    return 0


# ---------------------------------------------------------------- parent side

def mounts_under(directory):
    prefix = directory.rstrip('/') + '/'
    found = []
    with open('/proc/self/mountinfo') as f:
        for line in f:
            point = line.split()[4].replace('\\040', ' ')
            if point.startswith(prefix):
                found.append(point)
    return found


def pids_using(directory):
    """Processes whose command line names `directory` (the test's daemons)."""
    pids = []
    for entry in os.listdir('/proc'):
        if not entry.isdigit() or int(entry) == os.getpid():
            continue
        try:
            with open('/proc/%s/cmdline' % entry, 'rb') as f:
                cmdline = f.read().decode(errors='replace')
        except OSError:
            continue
        if directory in cmdline:
            pids.append(int(entry))
    return pids


def reap_after_timeout(child, test_tmp):
    # Killing the daemons first aborts their FUSE connections, which
    # unblocks a test thread stuck in a request to them.
    for pid in pids_using(test_tmp):
        if pid != child.pid:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
    try:
        os.killpg(child.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    try:
        child.wait(10)
    except subprocess.TimeoutExpired:
        pass
    for point in mounts_under(test_tmp):
        subprocess.run(['fusermount3', '-u', '-z', point],
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def run_one(test_id, env, run_tmp, timeout):
    """Returns (status, seconds, output) with status ok|FAIL|skip."""
    test_tmp = tempfile.mkdtemp(prefix='t-', dir=run_tmp)
    env = dict(env, DISKSTACK_TEST_TMP=test_tmp)
    log_path = os.path.join(run_tmp, 'last.log')
    start = time.monotonic()
    with open(log_path, 'w+b') as log:
        child = subprocess.Popen([sys.executable, os.path.abspath(__file__),
                                  '--child', test_id],
                                 stdin=subprocess.DEVNULL, stdout=log,
                                 stderr=subprocess.STDOUT, env=env, cwd=HERE,
                                 start_new_session=True)
        try:
            rc = child.wait(timeout)
            timed_out = False
        except subprocess.TimeoutExpired:
            reap_after_timeout(child, test_tmp)
            rc, timed_out = None, True
        except KeyboardInterrupt:
            # The child runs in its own session and did not see the ^C.
            reap_after_timeout(child, test_tmp)
            shutil.rmtree(test_tmp, ignore_errors=True)
            raise
        log.seek(0)
        output = log.read().decode(errors='replace')
    seconds = time.monotonic() - start
    for point in mounts_under(test_tmp):   # a test that leaked a mount
        subprocess.run(['fusermount3', '-u', '-z', point],
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    shutil.rmtree(test_tmp, ignore_errors=True)
    if timed_out:
        return 'FAIL', seconds, output + '\nTIMEOUT after %ds\n' % timeout
    if rc == 0:
        return 'ok', seconds, output
    if rc == SKIP_STATUS:
        return 'skip', seconds, output
    return 'FAIL', seconds, output


def skip_reason(output):
    for line in output.splitlines():
        if line.startswith('SKIP: '):
            return line[6:]
    return ''


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument('--build', default='build',
                    help='build directory holding the diskstack binary (default: build)')
    ap.add_argument('-k', dest='patterns', action='append', metavar='PATTERN',
                    help='run only tests whose id matches (substring or glob; repeatable)')
    ap.add_argument('--timeout', type=int, default=90, help='seconds per test')
    ap.add_argument('--list', action='store_true', help='list the tests and exit')
    ap.add_argument('-v', '--verbose', action='store_true',
                    help='print the output of passing tests too')
    ap.add_argument('--child', help=argparse.SUPPRESS)
    args = ap.parse_args()

    if args.child:
        return run_child(args.child)

    ids = discover(args.patterns)
    if args.list:
        print('\n'.join(ids))
        return 0
    binary = os.path.abspath(os.path.join(args.build, 'diskstack'))
    if not os.access(binary, os.X_OK):
        print('warning: %s is missing; the tests that need it will fail' % binary)
    env = dict(os.environ, DISKSTACK_BIN=binary, PYTHONDONTWRITEBYTECODE='1')

    counts = {'ok': 0, 'FAIL': 0, 'skip': 0}
    run_tmp = tempfile.mkdtemp(prefix='diskstack-func-')
    width = max((len(i) for i in ids), default=0)
    try:
        for test_id in ids:
            status, seconds, output = run_one(test_id, env, run_tmp, args.timeout)
            counts[status] += 1
            extra = '  (%s)' % skip_reason(output) if status == 'skip' else ''
            print('%-4s  %-*s  %5.1fs%s' % (status, width, test_id, seconds, extra),
                  flush=True)
            if status == 'FAIL' or args.verbose:
                print('    ' + output.rstrip().replace('\n', '\n    '), flush=True)
    except KeyboardInterrupt:
        print('interrupted')
        return 130
    finally:
        shutil.rmtree(run_tmp, ignore_errors=True)

    summary = '%d passed, %d failed' % (counts['ok'], counts['FAIL'])
    if counts['skip']:
        summary += ', %d skipped' % counts['skip']
    print(summary)
    return 1 if counts['FAIL'] else 0


if __name__ == '__main__':
    sys.exit(main())
