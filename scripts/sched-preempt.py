#!/usr/bin/env python3
"""sched-preempt.py: who took the cores from a VM's vCPU.

Reads `perf script` output of sched:sched_switch events recorded system-wide
during one pe run, e.g.

    perf record -a -e sched:sched_switch -o sched.data -- pe run IMAGE CMD...
    perf script -i sched.data | scripts/sched-preempt.py

The vCPU is the QEMU thread that ran longest. Prints its time on a CPU, the
time it was preempted (switched out while runnable, until it ran again), and
which threads (by name) ran on the CPUs during that time, all CPUs added up.
"""
import collections
import re
import sys

EVENT = re.compile(
    r"\[(\d+)\]\s+([\d.]+): sched:sched_switch: prev_comm=(.*?) prev_pid=(\d+) "
    r"prev_prio=\d+ prev_state=(\S+) ==> next_comm=(.*?) next_pid=(\d+) next_prio=\d+"
)


def main():
    events = []
    for line in sys.stdin:
        m = EVENT.search(line)
        if m:
            events.append((float(m[2]), int(m[1]), m[3], int(m[4]), m[5], m[6], int(m[7])))
    events.sort()
    if not events:
        sys.exit("sched-preempt: no sched_switch events on stdin")
    oncpu, since, name = collections.Counter(), {}, {}
    for t, cpu, pcomm, ppid, _, ncomm, npid in events:
        if ppid in since:
            oncpu[ppid] += t - since.pop(ppid)
        since[npid] = t
        name.setdefault(ppid, pcomm)
        name[npid] = ncomm
    qemu = [p for p, _ in oncpu.most_common() if name.get(p, "").startswith("qemu")]
    if not qemu:
        sys.exit("sched-preempt: no QEMU thread ran")
    vcpu = qemu[0]

    def label(pid, comm):
        return re.sub(r"[/:]?\d+$", "", comm) if pid else "idle"

    running = {}  # cpu -> (pid, comm, since)
    waiting_since = None
    waited = 0.0
    took = collections.Counter()

    def charge(cpu, until):
        pid, comm, start = running[cpu]
        if waiting_since is not None and pid != vcpu and pid != 0:
            took[label(pid, comm)] += until - max(start, waiting_since)

    for t, cpu, pcomm, ppid, pstate, ncomm, npid in events:
        if cpu in running:
            charge(cpu, t)
        if ppid == vcpu and pstate.startswith("R"):
            waiting_since = t
            for c in running:
                if c != cpu:
                    charge(c, t)
                    running[c] = (running[c][0], running[c][1], t)
        running[cpu] = (npid, ncomm, t)
        if npid == vcpu and waiting_since is not None:
            for c in running:
                if c != cpu:
                    charge(c, t)
                    running[c] = (running[c][0], running[c][1], t)
            waited += t - waiting_since
            waiting_since = None
    print(f"vCPU thread {vcpu}: on a CPU {oncpu[vcpu] * 1000:.0f} ms, preempted {waited * 1000:.0f} ms")
    print("ran while the vCPU was preempted:")
    for comm, secs in took.most_common(10):
        print(f"  {comm:<24} {secs * 1000:6.1f} ms")


if __name__ == "__main__":
    main()
