#!/usr/bin/env python3
"""Medians per scenario and target of an interleave run (run.sh output)."""
import re, statistics, sys
rows, scen = {}, None
for line in open(sys.argv[1]):
    if line.startswith('## '):
        scen = line[3:].strip()
        continue
    m = re.match(r'target=(\S+) round=\d+ result: (.*)', line)
    if not m:
        continue
    kv = dict(x.split('=', 1) for x in m.group(2).split() if '=' in x)
    if kv.get('ok') != 'true':
        print('NOT OK:', line.strip())
    rows.setdefault(scen, {}).setdefault(m.group(1), []).append(kv)
for scen, targets in rows.items():
    print(f'## {scen}')
    for t, runs in targets.items():
        def med(k):
            v = [float(r[k]) for r in runs if k in r]
            return statistics.median(v) if v else float('nan')
        print(f'  {t:9} n={len(runs)} jobs/s={med("jobs_per_s"):9.0f} cpu_us/job={med("server_cpu_us_per_job"):6.2f} '
              f'p50={med("p50_us"):7.1f} p99={med("p99_us"):7.1f} lost={sum(int(r["lost"]) for r in runs)} dup={sum(int(r["dup"]) for r in runs)}')
