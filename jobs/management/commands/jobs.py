"""manage.py jobs list|show|follow|verify|seal"""

import json
import sys

from django.core.management.base import CommandError

from jobs import cli
from jobs.admin import format_duration
from jobs.engine.follow import describe, exit_code, follow
from jobs.models import Job
from jobs.engine.states import TERMINAL
from jobs.engine.verify import orphan_events, read_seals, verify_all
from toppcloud_site.records import audit


def job_dict(job):
    return {
        "id": job.pk, "kind": job.kind, "target": job.target, "status": job.status,
        "actor": f"{job.actor_kind}:{job.actor}", "parent": job.parent_id, "attempt": job.attempt,
        "queued_at": job.queued_at and job.queued_at.isoformat(),
        "started_at": job.started_at and job.started_at.isoformat(),
        "finished_at": job.finished_at and job.finished_at.isoformat(),
        "summary": job.summary, "error": job.error, "result": job.result, "events": job.last_seq,
    }


class Command(cli.Command):
    help = "List, show, follow and verify jobs."

    def add_arguments(self, parser):
        sub = parser.add_subparsers(dest="action", required=True)
        ls = sub.add_parser("list", help="recent jobs, newest first")
        ls.add_argument("--status")
        ls.add_argument("--kind")
        ls.add_argument("--limit", type=int, default=20)
        ls.add_argument("--json", dest="as_json", action="store_true")
        show = sub.add_parser("show", help="one job and all its events")
        show.add_argument("job_id", type=int)
        show.add_argument("--json", dest="as_json", action="store_true")
        fol = sub.add_parser("follow", help="stream a job's events until it ends; exit 0 if it succeeded")
        fol.add_argument("job_id", type=int)
        fol.add_argument("--json", dest="as_json", action="store_true")
        fol.add_argument("--timeout", type=float, help="give up waiting after this many seconds (exit 2)")
        sub.add_parser("verify", help="replay every job, check the keyed hash chains of jobs and the audit log and "
                                      "hold them against the seals; exit 1 on any mismatch")
        sub.add_parser("seal", help="seal the log now: every job head and the audit head changed since the last seal")

    def handle(self, *args, action, **opts):
        return getattr(self, "do_" + action)(**opts)

    def _job(self, job_id):
        try:
            return Job.objects.get(pk=job_id)
        except Job.DoesNotExist:
            raise CommandError(f"there is no job {job_id}") from None

    def do_list(self, status, kind, limit, as_json, **_):
        jobs = Job.objects.all()
        if status:
            jobs = jobs.filter(status=status)
        if kind:
            jobs = jobs.filter(kind=kind)
        jobs = list(jobs[:limit])
        if as_json:
            for job in jobs:
                self.stdout.write(_dumps(job_dict(job)))
            return
        for job in jobs:
            self.stdout.write(f"{job.pk:>6} {job.status:<10} {job.kind:<12} {job.target:<24} "
                              f"{job.actor_kind}:{job.actor:<16} {format_duration(job.duration):>8}  "
                              f"{job.summary or job.error}"[:200])

    def do_show(self, job_id, as_json, **_):
        job = self._job(job_id)
        events = list(job.events.order_by("seq"))
        if as_json:
            data = job_dict(job)
            data["events"] = [{"seq": e.seq, "at": e.at.isoformat(), "kind": e.kind, "actor": e.actor,
                               "data": e.data, "hash": e.hash} for e in events]
            self.stdout.write(_dumps(data))
            return
        self.stdout.write(f"job {job.pk}: {job.kind} {job.target} — {job.status}, attempt {job.attempt}, "
                          f"by {job.actor_kind}:{job.actor}, {format_duration(job.duration)}")
        for e in events:
            self.stdout.write(f"  {e.seq:>3} {e.at:%H:%M:%S.%f} {describe(e)}")
            for key in ("stdout", "stderr", "traceback"):
                if e.data.get(key):
                    self.stdout.write("      " + e.data[key].rstrip().replace("\n", "\n      "))

    def do_follow(self, job_id, as_json, timeout, **_):
        self._job(job_id)
        job = follow(job_id, self.stdout, as_json=as_json, timeout=timeout)
        if as_json:
            self.stdout.write(_dumps(job_dict(job)))
        if job.status not in TERMINAL:
            sys.exit(2)
        sys.exit(exit_code(job))

    def do_verify(self, **_):
        seals = read_seals()
        for problem in seals.problems:
            self.stderr.write(f"seals: {problem}")
        checked = bad = 0
        for job_id, problems in verify_all(seals):
            checked += 1
            if problems:
                bad += 1
                for problem in problems:
                    self.stderr.write(f"job {job_id}: {problem}")
        orphans = orphan_events()
        if orphans:
            self.stderr.write(f"events of jobs that do not exist: {', '.join(map(str, orphans))}")
        audit_problems, audited = audit.verify_chain(seals.audit)
        for problem in audit_problems:
            self.stderr.write(problem)
        self.stdout.write(f"verified {checked} jobs: {checked - bad} intact, {bad} with problems; "
                          f"{audited} audit entries: {'intact' if not audit_problems else 'with problems'}; "
                          f"{seals.count} seals{': intact' if not seals.problems else ', with problems'}")
        if bad or orphans or audit_problems or seals.problems:
            sys.exit(1)

    def do_seal(self, **_):
        from jobs.engine.seal import SealError, seal

        try:
            made = seal()
        except SealError as exc:
            raise CommandError(str(exc)) from None
        if made is None:
            self.stdout.write("nothing changed since the last seal")
        else:
            audit = f", audit entry {made.audit[0]}" if made.audit else ""
            self.stdout.write(f"seal {made.number}: {len(made.jobs)} job heads{audit}")


def _dumps(value):
    return json.dumps(value, sort_keys=True)
