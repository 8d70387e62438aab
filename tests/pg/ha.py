"""Child-process roles for the two-server scenario: clients that hash
uniques over both servers with gear.Client, recording what was
acknowledged."""

import time

import gear

PHASE_TIMEOUT = 300.0


def hashing_submitter_main(ports, fn, tag, index, count, progress,
                           results):
    """Submit ``count`` background jobs with uniques through one
    gear.Client connected to every port; a failed submission is retried
    (the client moves on to the next server in the unique's order)."""
    acked = []
    retries = 0
    reason = 'done'
    client = gear.Client('ha-%d' % index)
    try:
        for port in ports:
            client.addServer('127.0.0.1', port)
        client.waitForServer(60)
        deadline = time.monotonic() + PHASE_TIMEOUT
        for n in range(count):
            unique = '%s-%d-%d' % (tag, index, n)
            while True:
                if time.monotonic() > deadline:
                    raise RuntimeError('submissions did not finish')
                job = gear.Job(fn, unique.encode(), unique.encode())
                try:
                    client.submitJob(job, background=True, timeout=10)
                except gear.GearmanError:
                    retries += 1
                    client.waitForServer(60)
                    continue
                acked.append((unique, job.handle.decode()))
                break
            progress[index] = len(acked)
    except Exception as e:  # reported, never swallowed
        reason = 'error: %r' % (e,)
    finally:
        client.shutdown()
    results.put(('submitter', index, {
        'acked': acked, 'retries': retries, 'reason': reason}))
