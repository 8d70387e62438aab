"""The job semantics a server follows where gear 0.16 and gearmand differ.

``gear.Server`` keeps gear 0.16's observable behaviour by default, since
programs embedding or subclassing it (Zuul, Nodepool) were written
around it; ``geard`` runs gearmand's.  Each difference is one method
here, and the server core asks the policy object it was given.
Everything else is the same under both.
"""

from gear.server import jobs as jobstates

RUNNING = jobstates.RUNNING
STATE = jobstates.STATE


class GearmandSemantics(object):
    """gearmand's: a cancel fails the job's clients, whether it is queued
    or running; a running job whose worker gives up its function or
    goes away is requeued (within ``job_retries``)."""

    name = 'gearmand'

    def cancel(self, core, job):
        """Admin ``cancel job``: True if the job was cancelled."""
        core.cancelJob(job)
        return True

    def unregistered(self, core, job, reason):
        """The worker running ``job`` gave up its function (CANT_DO,
        RESET_ABILITIES)."""
        core.requeueJob(job, reason)

    def workerLost(self, core, job, reason):
        """The worker running ``job`` disconnected."""
        core.requeueJob(job, reason)


class GearSemantics(GearmandSemantics):
    """gear 0.16's: only a queued job can be cancelled, and silently; a
    worker that unregisters keeps the job it runs; a lost worker's
    foreground job fails.

    gear 0.16 also lost a lost worker's background jobs; those are
    requeued here, as under gearmand's semantics, since nobody else
    would ever learn that they did not run.
    """

    name = 'gear'

    def cancel(self, core, job):
        if (job._state & STATE) == RUNNING:
            return False
        # The clients hear nothing: they asked for the cancel.
        handle = job.handle
        clients = job.clients
        if clients:
            for c in clients:
                c.related_jobs.pop(handle, None)
            job.clients = []
        core.finishJob(job)
        job.ignore = True
        return True

    def unregistered(self, core, job, reason):
        # The worker still runs it and its WORK_* packets still count.
        pass

    def workerLost(self, core, job, reason):
        if job.background or not job.clients:
            # A background owner (or nobody) waits for it: run it again.
            core.requeueJob(job, reason)
            return
        core.log.info("Job %s failed: %s", job.handle, reason)
        core.failJob(job)


POLICIES = {policy.name: policy for policy in (GearSemantics(),
                                               GearmandSemantics())}
