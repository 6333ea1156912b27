#!/usr/bin/env python3
"""Turns run.sh's fio JSON outputs into the comparison table and
bench-results.json.

The manifest has one line per (target, workload): target, workload, fio JSON
path, daemon CPU ticks before and after.  Numbers are reported, never judged:
this is a benchmark, not a test.
"""

import argparse
import datetime
import json
import os
import platform
import subprocess
import sys

TARGETS = ['disk', 'null-fuse', 'qsd', 'diskstack']
WORKLOADS = ['randread-4k', 'randwrite-4k', 'randrw70-4k', 'seqread-1m', 'seqwrite-1m']
DAEMONS = {'null-fuse', 'qsd', 'diskstack'}
MiB = 1024 * 1024


def p99_us(side):
    pct = side.get('clat_ns', {}).get('percentile', {})
    value = pct.get('99.000000')
    return value / 1000.0 if value is not None else None


def summarize(fio_json, ticks, clk_tck, daemon):
    job = fio_json['jobs'][0]      # group_reporting: one entry for all jobs
    sides = [job[d] for d in ('read', 'write') if job[d]['total_ios'] > 0]
    ios = sum(s['total_ios'] for s in sides)
    p99s = [p for p in (p99_us(s) for s in sides) if p is not None]
    result = {
        'iops': sum(s['iops'] for s in sides),
        'mib_s': sum(s['bw_bytes'] for s in sides) / MiB,
        # The slower side for a mix: the latency an application sees.
        'p99_us': max(p99s) if p99s else None,
        'ios': ios,
        'read_iops': job['read']['iops'],
        'write_iops': job['write']['iops'],
        'cpu_us_per_io': None,
    }
    if daemon and ios:
        result['cpu_us_per_io'] = ticks / clk_tck * 1e6 / ios
        result['cpu_ticks'] = ticks
    return result


def load(manifest, clk_tck):
    results = {}
    with open(manifest) as f:
        for line in f:
            if not line.strip():
                continue
            target, workload, path, before, after = line.rstrip('\n').split('\t')
            try:
                with open(path) as jf:
                    data = json.load(jf)
            except (OSError, ValueError) as e:
                print('report.py: %s: %s' % (path, e), file=sys.stderr)
                continue
            results[(target, workload)] = summarize(
                data, int(after) - int(before), clk_tck, target in DAEMONS)
    return results


def ratio(a, b):
    return a / b if a is not None and b else None


def ratios(results):
    out = []
    for w in WORKLOADS:
        ds = results.get(('diskstack', w))
        if not ds:
            continue
        row = {'workload': w}
        for other in ('qsd', 'disk', 'null-fuse'):
            o = results.get((other, w))
            row['iops_vs_' + other] = ratio(ds['iops'], o['iops']) if o else None
        q = results.get(('qsd', w))
        row['cpu_vs_qsd'] = ratio(ds['cpu_us_per_io'], q['cpu_us_per_io']) if q else None
        out.append(row)
    return out


def fmt(value, spec, width):
    return ('%' + spec) % value if value is not None else '-'.rjust(width)


def print_table(results, ratio_rows, meta):
    print()
    print('diskstack benchmark: %ss per workload, %s IOThreads, %s cores, kernel %s'
          % (meta['runtime_s'], meta['iothreads'], meta['cores'], meta['kernel']))
    print('fio psync direct=1 on the FUSE files, io_uring direct=1 on the disk; '
          'p99 = completion latency (the slower side for a mix)')
    print()
    header = '%-13s %-10s %10s %9s %10s %11s' % (
        'workload', 'target', 'IOPS', 'MiB/s', 'p99 us', 'CPU us/IO')
    print(header)
    print('-' * len(header))
    by_workload = {r['workload']: r for r in ratio_rows}
    for w in WORKLOADS:
        first = True
        for t in TARGETS:
            r = results.get((t, w))
            if not r:
                continue
            print('%-13s %-10s %10s %9s %10s %11s' % (
                w if first else '', t, fmt(r['iops'], '10.0f', 10),
                fmt(r['mib_s'], '9.1f', 9), fmt(r['p99_us'], '10.0f', 10),
                fmt(r['cpu_us_per_io'], '11.1f', 11)))
            first = False
        row = by_workload.get(w)
        if row:
            parts = []
            for key, label in (('iops_vs_qsd', 'IOPS/qsd'), ('iops_vs_disk', 'IOPS/disk'),
                               ('iops_vs_null-fuse', 'IOPS/null-fuse'),
                               ('cpu_vs_qsd', 'CPU/qsd')):
                if row.get(key) is not None:
                    parts.append('%s %.2fx' % (label, row[key]))
            if parts:
                print('%-13s %-10s %s' % ('', 'diskstack', ', '.join(parts)))
        if not first:
            print()


def version_of(cmd):
    try:
        out = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                             timeout=10).stdout.decode(errors='replace')
        return out.splitlines()[0].strip() if out else None
    except (OSError, subprocess.TimeoutExpired):
        return None


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument('--manifest', required=True)
    ap.add_argument('--json', required=True, help='where to write bench-results.json')
    ap.add_argument('--runtime', type=int, default=5)
    ap.add_argument('--quick', type=int, default=0)
    ap.add_argument('--iothreads', type=int, default=os.cpu_count())
    args = ap.parse_args()

    clk_tck = os.sysconf('SC_CLK_TCK')
    results = load(args.manifest, clk_tck)
    ratio_rows = ratios(results)
    here = os.path.dirname(os.path.abspath(__file__))
    meta = {
        'date': datetime.datetime.now(datetime.timezone.utc).isoformat(timespec='seconds'),
        'runtime_s': args.runtime,
        'quick': bool(args.quick),
        'iothreads': args.iothreads,
        'cores': os.cpu_count(),
        'kernel': platform.release(),
        'fio': version_of(['fio', '--version']),
        'qemu_storage_daemon': version_of(['qemu-storage-daemon', '--version']),
        'git': version_of(['git', '-C', here, 'rev-parse', '--short', 'HEAD']),
        'clk_tck': clk_tck,
    }
    print_table(results, ratio_rows, meta)
    doc = {
        'meta': meta,
        'results': [dict(target=t, workload=w, **results[(t, w)])
                    for w in WORKLOADS for t in TARGETS if (t, w) in results],
        'ratios': ratio_rows,
    }
    with open(args.json, 'w') as f:
        json.dump(doc, f, indent=2)
        f.write('\n')
    return 0


if __name__ == '__main__':
    sys.exit(main())
