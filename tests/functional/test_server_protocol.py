"""Every packet type against a real Server, byte for byte."""

from gear import constants as c
from gear.protocol import pack

from tests.functional.test_server_base import ServerTestCase
from tests.util import wait_for


class TestSubmitAndWork(ServerTestCase):

    def test_foreground_round_trip(self):
        client = self.connect()
        worker = self.connect()
        handle = client.submit(b'fn', b'payload', b'u1')
        self.assertEqual(b'H:test:1', handle)
        worker.canDo(b'fn')
        self.assertEqual([handle, b'fn', b'u1', b'payload'], worker.grab())
        worker.send(c.WORK_DATA, handle, b'chunk\x00with nul')
        client.expect(c.WORK_DATA, handle + b'\x00chunk\x00with nul')
        worker.send(c.WORK_WARNING, handle, b'careful')
        client.expect(c.WORK_WARNING, handle + b'\x00careful')
        worker.send(c.WORK_STATUS, handle, b'3', b'10')
        client.expect(c.WORK_STATUS, handle + b'\x003\x0010')
        client.send(c.GET_STATUS, handle)
        client.expect(c.STATUS_RES, handle + b'\x001\x001\x003\x0010')
        worker.send(c.WORK_COMPLETE, handle, b'result')
        client.expect(c.WORK_COMPLETE, handle + b'\x00result')
        client.send(c.GET_STATUS, handle)
        client.expect(c.STATUS_RES, handle + b'\x000\x000\x000\x000')
        self.assertEqual(0, len(self.server.jobs))

    def test_queued_status(self):
        client = self.connect()
        handle = client.submit(b'fn', ptype=c.SUBMIT_JOB_BG)
        client.send(c.GET_STATUS, handle)
        client.expect(c.STATUS_RES, handle + b'\x001\x000\x000\x000')

    def test_grab_job_and_no_job(self):
        client = self.connect()
        worker = self.connect()
        worker.canDo(b'fn')
        self.assertIsNone(worker.grab(c.GRAB_JOB))
        handle = client.submit(b'fn', b'data', b'u')
        self.assertEqual([handle, b'fn', b'data'], worker.grab(c.GRAB_JOB))
        self.assertIsNone(worker.grab(c.GRAB_JOB_UNIQ))

    def test_grab_without_functions(self):
        worker = self.connect()
        self.assertIsNone(worker.grab())

    def test_unique_empty_field_in_assign_uniq(self):
        client = self.connect()
        worker = self.connect()
        handle = client.submit(b'fn', b'data')
        worker.canDo(b'fn')
        self.assertEqual([handle, b'fn', b'', b'data'], worker.grab())

    def test_background_job_sends_no_work_packets(self):
        client = self.connect()
        worker = self.connect()
        handle = client.submit(b'fn', b'd', b'', c.SUBMIT_JOB_BG)
        worker.canDo(b'fn')
        worker.grab()
        worker.send(c.WORK_DATA, handle, b'x')
        worker.send(c.WORK_COMPLETE, handle, b'done')
        worker.sync()
        client.sync()
        self.assertEqual(0, len(self.server.jobs))

    def test_reduce_jobs_and_grab_job_all(self):
        client = self.connect()
        worker = self.connect()
        client.send(c.SUBMIT_REDUCE_JOB, b'fn', b'u1', b'red', b'', b'data')
        h1 = client.expect(c.JOB_CREATED)
        client.send(c.SUBMIT_REDUCE_JOB_BACKGROUND, b'fn', b'u2', b'red2',
                    b'', b'data2')
        h2 = client.expect(c.JOB_CREATED)
        h3 = client.submit(b'fn', b'plain', b'u3')
        worker.canDo(b'fn')
        self.assertEqual([h1, b'fn', b'u1', b'red', b'data'],
                         worker.grab(c.GRAB_JOB_ALL))
        self.assertEqual([h2, b'fn', b'u2', b'red2', b'data2'],
                         worker.grab(c.GRAB_JOB_ALL))
        # No reducer: gearmand answers JOB_ASSIGN_UNIQ.
        worker.send(c.GRAB_JOB_ALL)
        worker.expect(c.JOB_ASSIGN_UNIQ, h3 + b'\x00fn\x00u3\x00plain')
        worker.send(c.GRAB_JOB_ALL)
        worker.expect(c.NO_JOB, b'')

    def test_reducer_too_large(self):
        client = self.connect()
        client.send(c.SUBMIT_REDUCE_JOB, b'fn', b'u', b'r' * 65, b'', b'd')
        client.expect(c.ERROR, b'ARGUMENT_TOO_LARGE\x00Reducer value too '
                      b'large')

    def test_priorities_are_global(self):
        client = self.connect()
        worker = self.connect()
        low = client.submit(b'a', b'', b'', c.SUBMIT_JOB_LOW_BG)
        normal = client.submit(b'b', b'', b'', c.SUBMIT_JOB_BG)
        high = client.submit(b'c', b'', b'', c.SUBMIT_JOB_HIGH_BG)
        fg_high = client.submit(b'a', b'', b'', c.SUBMIT_JOB_HIGH)
        fg_low = client.submit(b'c', b'', b'', c.SUBMIT_JOB_LOW)
        worker.canDo(b'a', b'b', b'c')
        order = [worker.grab()[0] for _ in range(5)]
        # HIGH of any function first; within a precedence the worker's
        # functions take turns (a was registered first).
        self.assertEqual([fg_high, high, normal, low, fg_low], order)

    def test_round_robin_across_functions(self):
        client = self.connect()
        worker = self.connect()
        a = [client.submit(b'a', b'', b'', c.SUBMIT_JOB_BG) for _ in range(2)]
        b = [client.submit(b'b', b'', b'', c.SUBMIT_JOB_BG) for _ in range(2)]
        worker.canDo(b'a', b'b')
        order = [worker.grab()[0] for _ in range(4)]
        self.assertEqual([a[0], b[0], a[1], b[1]], order)

    def test_unique_limits(self):
        client = self.connect()
        worker = self.connect()
        u64 = b'u' * 64
        h1 = client.submit(b'fn', b'x', u64)
        # 64 bytes are kept whole, so they coalesce.
        self.assertEqual(h1, client.submit(b'fn', b'y', u64))
        client.send(c.SUBMIT_JOB, b'fn', b'u' * 65, b'x')
        client.expect(c.ERROR, b'ARGUMENT_TOO_LARGE\x00Unique value too '
                      b'large')
        worker.canDo(b'fn')
        self.assertEqual(u64, worker.grab()[2])

    def test_epoch_job_runs_at_its_time(self):
        import time
        client = self.connect()
        worker = self.sleepingWorker(b'fn')
        when = int(time.time()) + 2
        client.send(c.SUBMIT_JOB_EPOCH, b'fn', b'e1', str(when).encode(),
                    b'later')
        handle = client.expect(c.JOB_CREATED)
        # Not due yet: a grab gets nothing, but status counts it.
        other = self.connect()
        other.canDo(b'fn')
        self.assertIsNone(other.grab())
        self.assertEqual(b'fn\t1\t0\t2\n.\n', other.adminList(b'status'))
        # The sleeping worker is woken when it is due.
        worker.expect(c.NOOP, b'', timeout=10)
        self.assertGreaterEqual(time.time(), when - 0.01)
        self.assertEqual([handle, b'fn', b'e1', b'later'], worker.grab())

    def test_past_epoch_runs_at_once(self):
        client = self.connect()
        worker = self.connect()
        client.send(c.SUBMIT_JOB_EPOCH, b'fn', b'', b'1000', b'old')
        handle = client.expect(c.JOB_CREATED)
        worker.canDo(b'fn')
        self.assertEqual([handle, b'fn', b'', b'old'], worker.grab())

    def test_bad_epoch_closes(self):
        client = self.connect()
        client.send(c.SUBMIT_JOB_EPOCH, b'fn', b'', b'soon', b'x')
        client.assertClosed()


class TestWorkerRegistration(ServerTestCase):

    # gearmand's: a worker that gives up a function gives back the job
    # it runs (gear 0.16's is in test_server_compat_policy).
    server_options = {'semantics': 'gearmand'}

    def test_pre_sleep_with_runnable_job_gets_noop(self):
        client = self.connect()
        worker = self.connect()
        client.submit(b'fn', ptype=c.SUBMIT_JOB_BG)
        worker.canDo(b'fn')
        worker.send(c.PRE_SLEEP)
        worker.expect(c.NOOP, b'')

    def test_noop_only_for_that_functions_sleepers(self):
        client = self.connect()
        w1 = self.sleepingWorker(b'f1')
        w2 = self.sleepingWorker(b'f2')
        client.submit(b'f1', ptype=c.SUBMIT_JOB_BG)
        w1.expect(c.NOOP, b'')
        # w2 got nothing: its next packet is the echo reply.
        w2.sync()
        # One NOOP per sleep: a second job does not NOOP w1 again.
        client.submit(b'f1', ptype=c.SUBMIT_JOB_BG)
        w1.sync()

    def test_worker_wakeup_limit_rotates(self):
        self.server.worker_wakeup = 1
        client = self.connect()
        w1 = self.sleepingWorker(b'fn')
        w2 = self.sleepingWorker(b'fn')
        client.submit(b'fn', ptype=c.SUBMIT_JOB_BG)
        w1.expect(c.NOOP, b'')
        w2.sync()
        client.submit(b'fn', ptype=c.SUBMIT_JOB_BG)
        w2.expect(c.NOOP, b'')
        w1.sync()

    def test_duplicate_can_do_counts_once(self):
        worker = self.connect()
        worker.canDo(b'fn', b'fn')
        self.assertEqual(b'fn\t0\t0\t1\n.\n', worker.adminList(b'status'))

    def test_cant_do_unknown_is_ignored(self):
        worker = self.connect()
        worker.send(c.CANT_DO, b'never-registered')
        worker.sync()

    def test_cant_do_requeues_running_job(self):
        client = self.connect()
        w1 = self.connect()
        w2 = self.connect()
        handle = client.submit(b'fn', b'd', ptype=c.SUBMIT_JOB_BG)
        w1.canDo(b'fn')
        self.assertEqual(handle, w1.grab()[0])
        w1.send(c.CANT_DO, b'fn')
        w2.canDo(b'fn')
        self.assertEqual(handle, w2.grab()[0])
        w1.send(c.WORK_COMPLETE, handle, b'late')
        w1.expect(c.ERROR, b'JOB_NOT_FOUND\x00Job given in work result '
                  b'not found')
        self.assertEqual(b'fn\t1\t1\t1\n.\n', w1.adminList(b'status'))
        self.assertEqual(b'%s\t1\t0\t1\n.\n' % handle,
                         w1.adminList(b'show jobs'))

    def test_reset_abilities_requeues(self):
        client = self.connect()
        w1 = self.connect()
        handle = client.submit(b'fn', b'd', ptype=c.SUBMIT_JOB_BG)
        w1.canDo(b'fn', b'other')
        w1.grab()
        w1.send(c.RESET_ABILITIES)
        self.assertEqual(b'fn\t1\t0\t0\nother\t0\t0\t0\n.\n',
                         w1.adminList(b'status'))
        self.assertIsNone(w1.grab())
        w1.canDo(b'fn')
        self.assertEqual(handle, w1.grab()[0])

    def test_reregistration_of_many_functions(self):
        client = self.connect()
        w1 = self.connect()
        w2 = self.connect()
        names = [b'build:job-%04d' % i for i in range(2000)]
        for worker in (w1, w2):
            worker.canDo(*names)
        w1.send(c.RESET_ABILITIES)
        w1.send(c.CANT_DO, names[0])  # no longer held: ignored
        w2.send(c.CANT_DO, names[1])
        w1.canDo(*reversed(names))
        status = w1.adminList(b'status')
        self.assertIn(b'\n%s\t0\t0\t1\n' % names[1], status)
        self.assertIn(b'\n%s\t0\t0\t2\n' % names[2], status)
        self.assertEqual(len(names), status.count(b'\n') - 1)
        # Functions are served in registration order (w1 registered
        # them backwards), then round-robin.
        first = client.submit(names[5], b'a', ptype=c.SUBMIT_JOB_BG)
        second = client.submit(names[5], b'b', ptype=c.SUBMIT_JOB_BG)
        other = client.submit(names[7], b'c', ptype=c.SUBMIT_JOB_BG)
        later = client.submit(names[7], b'd', ptype=c.SUBMIT_JOB_BG)
        self.assertEqual([other, first, later, second],
                         [w1.grab()[0] for _ in range(4)])
        w1.close()
        w2.close()
        watcher = self.connect()
        wait_for(lambda: b'\t1\n' not in watcher.adminList(b'status'))
        self.assertNotIn(b'\t2\n', watcher.adminList(b'status'))

    def test_set_client_id_shows_in_workers(self):
        worker = self.connect()
        worker.send(c.SET_CLIENT_ID, b'my-worker')
        worker.canDo(b'f2', b'f1')
        out = worker.adminList(b'workers')
        self.assertIn(b' 127.0.0.1 my-worker : f1 f2\n', out)

    def test_can_do_timeout_requeues(self):
        client = self.connect()
        w1 = self.connect()
        handle = client.submit(b'fn', b'd', b'u')
        w1.send(c.CAN_DO_TIMEOUT, b'fn', b'1')  # raised to 1000 ms
        self.assertEqual(handle, w1.grab()[0])
        w2 = self.sleepingWorker(b'fn')
        # After the timeout the job is requeued and the sleeper woken.
        w2.expect(c.NOOP, b'', timeout=10)
        self.assertEqual(handle, w2.grab()[0])
        w1.send(c.WORK_COMPLETE, handle, b'late')
        w1.expect(c.ERROR, b'JOB_NOT_FOUND\x00Job given in work result '
                  b'not found')
        w2.send(c.WORK_COMPLETE, handle, b'ok')
        client.expect(c.WORK_COMPLETE, handle + b'\x00ok')
        self.assertEqual(1, self.server.queue.functions[b'fn'].workers - 1)

    def test_can_do_timeout_bad_number_closes(self):
        worker = self.connect()
        worker.send(c.CAN_DO_TIMEOUT, b'fn', b'12x')
        worker.assertClosed()


class TestOwnershipAndErrors(ServerTestCase):

    def test_work_packets_from_non_owner(self):
        client = self.connect()
        worker = self.connect()
        other = self.connect()
        handle = client.submit(b'fn', b'd')
        worker.canDo(b'fn')
        worker.grab()
        texts = {
            c.WORK_STATUS: b'Job given in work result not found',
            c.WORK_COMPLETE: b'Job given in work result not found',
            c.WORK_FAIL: b'Job given in work result not found',
            c.WORK_DATA: b'Job does not exist on server',
            c.WORK_WARNING: b'Job does not exist on server',
            c.WORK_EXCEPTION:
                b'An exception was received for a job that does not exist',
        }
        for ptype, text in sorted(texts.items()):
            args = (handle, b'1', b'2') if ptype == c.WORK_STATUS else \
                (handle,) if ptype == c.WORK_FAIL else (handle, b'x')
            other.send(ptype, *args)
            other.expect(c.ERROR, b'JOB_NOT_FOUND\x00' + text)
            # Unknown handles get the same answer.
            other.send(ptype, b'H:nope:1', *args[1:])
            other.expect(c.ERROR, b'JOB_NOT_FOUND\x00' + text)
        # The real owner still completes it.
        worker.send(c.WORK_COMPLETE, handle, b'ok')
        client.expect(c.WORK_COMPLETE, handle + b'\x00ok')

    def test_work_fail_with_huge_handle(self):
        worker = self.connect()
        worker.send(c.WORK_FAIL, b'H' * 65)
        magic, ptype, data = worker.read()
        self.assertEqual(c.ERROR, ptype)
        self.assertTrue(data.startswith(b'ARGUMENT_TOO_LARGE\x00'))

    def test_res_magic_request(self):
        client = self.connect()
        client.send(c.SUBMIT_JOB, b'fn', b'', b'x', magic=c.RES)
        client.expect(c.ERROR, b'INVALID_MAGIC\x00Request magic expected')
        client.sync()
        self.assertEqual(0, len(self.server.jobs))

    def test_unexpected_commands(self):
        client = self.connect()
        for ptype in (5, c.NOOP, c.JOB_CREATED, c.NO_JOB, c.JOB_ASSIGN,
                      c.ECHO_RES, c.ERROR, c.STATUS_RES, c.ALL_YOURS,
                      c.OPTION_RES, c.JOB_ASSIGN_UNIQ, c.SUBMIT_JOB_SCHED,
                      c.JOB_ASSIGN_ALL, c.STATUS_RES_UNIQUE):
            client.send(ptype)
            client.expect(c.ERROR, b'INVALID_COMMAND\x00Command not expected')
        client.sync()

    def test_echo_keeps_nuls(self):
        client = self.connect()
        client.send(c.ECHO_REQ, b'a\x00b\x00')
        client.expect(c.ECHO_RES, b'a\x00b\x00')

    def test_option_req(self):
        client = self.connect()
        client.send(c.OPTION_REQ, b'EXCEPTIONS')
        client.expect(c.OPTION_RES, b'EXCEPTIONS')
        client.send(c.OPTION_REQ, b'exceptions')
        client.expect(c.OPTION_RES, b'exceptions')
        client.send(c.OPTION_REQ, b'bogus')
        client.expect(c.ERROR, b'UNKNOWN_OPTION\x00Server does not '
                      b'recognize given option')

    def test_get_status_unique(self):
        client = self.connect()
        client.send(c.GET_STATUS_UNIQUE, b'u1')
        client.expect(c.STATUS_RES_UNIQUE, b'u1\x000\x000\x000\x000\x000')
        client.submit(b'fn', b'', b'u1', c.SUBMIT_JOB_BG)
        client.send(c.GET_STATUS_UNIQUE, b'u1')
        client.expect(c.STATUS_RES_UNIQUE, b'u1\x001\x000\x000\x000\x000')
        other = self.connect()
        other.submit(b'fn', b'', b'u1')
        other.submit(b'fn', b'', b'u1')
        worker = self.connect()
        worker.canDo(b'fn')
        handle = worker.grab()[0]
        worker.send(c.WORK_STATUS, handle, b'1', b'4')
        other.expect(c.WORK_STATUS)
        other.expect(c.WORK_STATUS)
        client.send(c.GET_STATUS_UNIQUE, b'u1')
        client.expect(c.STATUS_RES_UNIQUE, b'u1\x001\x001\x001\x004\x002')

    def test_get_status_huge_handle(self):
        client = self.connect()
        client.send(c.GET_STATUS, b'H' * 65)
        self.assertEqual(c.ERROR, client.read()[1])
        client.send(c.GET_STATUS_UNIQUE, b'u' * 65)
        self.assertEqual(c.ERROR, client.read()[1])
        client.sync()


class TestExceptions(ServerTestCase):

    def test_exception_forwarded_or_converted(self):
        with_opt = self.connect()
        without = self.connect()
        worker = self.connect()
        with_opt.send(c.OPTION_REQ, b'exceptions')
        with_opt.expect(c.OPTION_RES)
        handle = with_opt.submit(b'fn', b'd', b'same')
        self.assertEqual(handle, without.submit(b'fn', b'd', b'same'))
        worker.canDo(b'fn')
        worker.grab()
        worker.send(c.WORK_EXCEPTION, handle, b'boom')
        with_opt.expect(c.WORK_EXCEPTION, handle + b'\x00boom')
        # Exactly the handle: no trailing NUL.
        without.expect(c.WORK_FAIL, handle)
        self.assertEqual(0, len(self.server.jobs))

    def test_server_default_exceptions(self):
        server = self.makeServer(exceptions=True)
        client = self.connect(server)
        worker = self.connect(server)
        handle = client.submit(b'fn', b'd')
        worker.canDo(b'fn')
        worker.grab()
        worker.send(c.WORK_EXCEPTION, handle, b'boom')
        client.expect(c.WORK_EXCEPTION, handle + b'\x00boom')


class TestCoalescing(ServerTestCase):

    def test_same_unique_same_handle_and_copies(self):
        c1 = self.connect()
        c2 = self.connect()
        worker = self.connect()
        h = c1.submit(b'fn', b'first', b'u')
        self.assertEqual(h, c1.submit(b'fn', b'second', b'u'))
        self.assertEqual(h, c2.submit(b'fn', b'third', b'u',
                                      c.SUBMIT_JOB_HIGH))
        self.assertEqual(h, c2.submit(b'fn', b'bg', b'u', c.SUBMIT_JOB_BG))
        worker.canDo(b'fn')
        self.assertEqual([h, b'fn', b'u', b'first'], worker.grab())
        self.assertIsNone(worker.grab())
        worker.send(c.WORK_COMPLETE, h, b'r')
        # Two submissions on c1: two copies.
        c1.expect(c.WORK_COMPLETE, h + b'\x00r')
        c1.expect(c.WORK_COMPLETE, h + b'\x00r')
        c2.expect(c.WORK_COMPLETE, h + b'\x00r')
        c2.sync()
        # The unique is free again.
        self.assertNotEqual(h, c1.submit(b'fn', b'x', b'u'))

    def test_coalesces_with_running_job(self):
        c1 = self.connect()
        c2 = self.connect()
        worker = self.connect()
        h = c1.submit(b'fn', b'd', b'u')
        worker.canDo(b'fn')
        worker.grab()
        self.assertEqual(h, c2.submit(b'fn', b'd', b'u'))
        worker.send(c.WORK_COMPLETE, h, b'r')
        c1.expect(c.WORK_COMPLETE, h + b'\x00r')
        c2.expect(c.WORK_COMPLETE, h + b'\x00r')

    def test_unique_is_per_function(self):
        client = self.connect()
        self.assertNotEqual(client.submit(b'f1', b'd', b'u'),
                            client.submit(b'f2', b'd', b'u'))

    def test_dash_hashes_payload(self):
        client = self.connect()
        h1 = client.submit(b'fn', b'same', b'-')
        self.assertEqual(h1, client.submit(b'fn', b'same', b'-'))
        self.assertNotEqual(h1, client.submit(b'fn', b'other', b'-'))
        self.assertNotEqual(client.submit(b'fn', b'', b'-'),
                            client.submit(b'fn', b'', b'-'))

    def test_completion_frees_the_unique(self):
        client = self.connect()
        worker = self.connect()
        worker.canDo(b'fn')
        for unique, data in ((b'u', b'd'), (b'-', b'hashed')):
            handles = []
            for _ in range(2):
                h = client.submit(b'fn', data, unique)
                worker.grab()
                worker.send(c.WORK_COMPLETE, h, b'r')
                client.expect(c.WORK_COMPLETE, h + b'\x00r')
                handles.append(h)
            self.assertNotEqual(handles[0], handles[1])
        self.assertEqual(0, len(self.server.jobs))

    def test_empty_unique_never_coalesces(self):
        client = self.connect()
        self.assertNotEqual(client.submit(b'fn', b'same', b''),
                            client.submit(b'fn', b'same', b''))


class TestWireAssembly(ServerTestCase):

    def test_pipelined_packets_in_one_write(self):
        client = self.connect()
        data = b''.join(pack(c.REQ, c.SUBMIT_JOB_BG, b'fn\x00\x00%d' % i)
                        for i in range(100))
        client.sendRaw(data + pack(c.REQ, c.ECHO_REQ, b'end'))
        handles = [client.expect(c.JOB_CREATED) for _ in range(100)]
        client.expect(c.ECHO_RES, b'end')
        self.assertEqual(100, len(set(handles)))

    def test_packet_split_at_every_byte(self):
        client = self.connect()
        data = pack(c.REQ, c.ECHO_REQ, b'split-me')
        for i in range(len(data)):
            client.sendRaw(data[i:i + 1])
        client.expect(c.ECHO_RES, b'split-me')
