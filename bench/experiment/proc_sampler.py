#!/usr/bin/env python3
"""CPU of a `fedge run` job's processes, per round (issue 12 item 4).

Samples /proc/<pid>/stat (utime + stime) of every fedge-aggregator and fedge-agent
process whose command line names the run's work directory, every --interval seconds,
and polls the aggregator's GET /v1/status (its port from WORK/prometheus/targets.json)
to stamp when each round's record appears. Writes JSON:

  {"samples": [{"t", "round", "records", "cpu": {"aggregator": s, "agent-0": s, ...}}],
   "round_marks": [{"records": n, "t", "cpu": {...}}]}

round_marks[i] is the first sample at which the status listed i completed rounds
(round_marks[0]: the first sample in which round 1 was running), so the CPU spent in
rounds 1..n is cpu(round_marks[n]) - cpu(round_marks[0]): no start-up (model load)
and no shutdown. A process that ended keeps its last sampled value.

  proc_sampler.py --work-dir WORK --out cpu.json [--until-pid PID]
"""
import argparse
import glob
import json
import os
import time
import urllib.request

TICK = os.sysconf("SC_CLK_TCK")


def process_name(cmdline):
    exe = os.path.basename(cmdline[0]) if cmdline else ""
    if exe == "fedge-aggregator":
        return "aggregator"
    if exe == "fedge-agent":
        for flag in ("--agent-id", "--id"):
            if flag in cmdline:
                i = cmdline.index(flag)
                if i + 1 < len(cmdline):
                    return cmdline[i + 1]
        return "agent-?%s" % cmdline
    return None


def find_processes(work_dir):
    """pid -> name for the job's aggregator and agents."""
    out = {}
    for d in glob.glob("/proc/[0-9]*"):
        try:
            with open(d + "/cmdline", "rb") as f:
                cmd = [a.decode(errors="replace") for a in f.read().split(b"\0") if a]
        except OSError:
            continue
        if not cmd or not any(work_dir in a for a in cmd):
            continue
        name = process_name(cmd)
        if name:
            out[int(os.path.basename(d))] = name
    return out


def cpu_seconds(pid):
    try:
        with open("/proc/%d/stat" % pid) as f:
            rest = f.read().rsplit(")", 1)[1].split()
    except OSError:
        return None
    # fields after the command: state(0) ppid(1) ... utime(11) stime(12)
    return (int(rest[11]) + int(rest[12])) / TICK


def status_port(work_dir):
    try:
        with open(os.path.join(work_dir, "prometheus", "targets.json")) as f:
            groups = json.load(f)
    except (OSError, ValueError):
        return None
    for g in groups:
        if g.get("labels", {}).get("component") == "aggregator":
            return g["targets"][0]
    return None


def job_status(hostport):
    try:
        with urllib.request.urlopen("http://%s/v1/status" % hostport, timeout=2) as r:
            return json.loads(r.read())
    except Exception:  # not up yet, or gone
        return None


class Sampler:
    """Call sample() periodically; marks and samples accumulate."""

    def __init__(self, work_dir):
        self.work_dir = os.path.abspath(work_dir)
        self.pids = {}
        self.last = {}
        self.samples = []
        self.round_marks = []
        self.status = None
        self.start = time.time()

    def sample(self):
        for pid, name in find_processes(self.work_dir).items():
            self.pids.setdefault(pid, name)
        for pid, name in self.pids.items():
            c = cpu_seconds(pid)
            if c is not None:
                self.last[name] = c
        hostport = status_port(self.work_dir)
        st = job_status(hostport) if hostport else None
        if st:
            self.status = st
        records = len((self.status or {}).get("rounds") or [])
        running_round = (self.status or {}).get("round", 0) if (self.status or {}).get("state") == "Running" else 0
        s = {"t": round(time.time() - self.start, 2), "round": running_round, "records": records,
             "cpu": dict(self.last)}
        self.samples.append(s)
        if not self.round_marks and running_round >= 1:
            self.round_marks.append(dict(s, records=0))
        while self.round_marks and records >= len(self.round_marks):
            self.round_marks.append(dict(s, records=len(self.round_marks)))
        return s

    def result(self):
        return {"samples": self.samples, "round_marks": self.round_marks}


def per_round(result):
    """{"rounds": n, "aggregator": s/round, "agent": s/round/agent} over the marked rounds."""
    marks = result.get("round_marks") or []
    if len(marks) < 2:
        return None
    a, b = marks[0]["cpu"], marks[-1]["cpu"]
    n = len(marks) - 1
    agents = [k for k in b if k != "aggregator"]
    agg = (b.get("aggregator", 0) - a.get("aggregator", 0)) / n
    per_agent = [(b[k] - a.get(k, 0)) / n for k in agents]
    return {"rounds": n, "aggregator": agg,
            "agent": sum(per_agent) / len(per_agent) if per_agent else None,
            "agent_max": max(per_agent) if per_agent else None}


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--work-dir", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--interval", type=float, default=0.5)
    p.add_argument("--until-pid", type=int, default=0, help="stop when this process has ended")
    args = p.parse_args()
    s = Sampler(args.work_dir)
    while True:
        s.sample()
        if args.until_pid and not os.path.exists("/proc/%d" % args.until_pid):
            break
        time.sleep(args.interval)
    s.sample()
    with open(args.out, "w") as f:
        json.dump(s.result(), f)
    print(json.dumps(per_round(s.result())))


if __name__ == "__main__":
    main()
