"""Unit tests for gear.constants: the packet type table and its views."""

import testtools

from gear import constants

# The argument layout of every packet type, as the protocol defines it.
EXPECTED_ARGUMENT_COUNTS = {
    'CAN_DO': 1, 'CANT_DO': 1, 'RESET_ABILITIES': 0, 'PRE_SLEEP': 0,
    'NOOP': 0, 'SUBMIT_JOB': 3, 'JOB_CREATED': 1, 'GRAB_JOB': 0,
    'NO_JOB': 0, 'JOB_ASSIGN': 3, 'WORK_STATUS': 3, 'WORK_COMPLETE': 2,
    'WORK_FAIL': 1, 'GET_STATUS': 1, 'ECHO_REQ': 1, 'ECHO_RES': 1,
    'SUBMIT_JOB_BG': 3, 'ERROR': 2, 'STATUS_RES': 5, 'SUBMIT_JOB_HIGH': 3,
    'SET_CLIENT_ID': 1, 'CAN_DO_TIMEOUT': 2, 'ALL_YOURS': 0,
    'WORK_EXCEPTION': 2, 'OPTION_REQ': 1, 'OPTION_RES': 1, 'WORK_DATA': 2,
    'WORK_WARNING': 2, 'GRAB_JOB_UNIQ': 0, 'JOB_ASSIGN_UNIQ': 4,
    'SUBMIT_JOB_HIGH_BG': 3, 'SUBMIT_JOB_LOW': 3, 'SUBMIT_JOB_LOW_BG': 3,
    'SUBMIT_JOB_SCHED': 8, 'SUBMIT_JOB_EPOCH': 4, 'SUBMIT_REDUCE_JOB': 5,
    'SUBMIT_REDUCE_JOB_BACKGROUND': 5, 'GRAB_JOB_ALL': 0,
    'JOB_ASSIGN_ALL': 5, 'GET_STATUS_UNIQUE': 1, 'STATUS_RES_UNIQUE': 6,
}

# Types that only a server sends.
EXPECTED_RESPONSES = {
    'NOOP', 'JOB_CREATED', 'NO_JOB', 'JOB_ASSIGN', 'ECHO_RES', 'ERROR',
    'STATUS_RES', 'OPTION_RES', 'JOB_ASSIGN_UNIQ', 'JOB_ASSIGN_ALL',
    'STATUS_RES_UNIQUE',
}


class TestPacketTypes(testtools.TestCase):

    def test_forty_one_types_without_five(self):
        self.assertEqual(41, len(constants.types))
        self.assertEqual(set(range(1, 43)) - {5}, set(constants.types))
        self.assertNotIn(5, constants.types)

    def test_names_match_module_globals(self):
        for number, name in constants.types.items():
            self.assertEqual(number, getattr(constants, name), name)

    def test_names_are_unique(self):
        names = list(constants.types.values())
        self.assertEqual(len(names), len(set(names)))

    def test_no_stray_entries(self):
        for name in ('PRECEDENCE_NORMAL', 'PRECEDENCE_LOW',
                     'PRECEDENCE_HIGH', 'HEADER_SIZE', 'DEFAULT_PORT',
                     'MAX_TYPE'):
            self.assertNotIn(name, constants.types.values())

    def test_well_known_numbers(self):
        self.assertEqual(1, constants.CAN_DO)
        self.assertEqual(13, constants.WORK_COMPLETE)
        self.assertEqual(20, constants.STATUS_RES)
        self.assertEqual(30, constants.GRAB_JOB_UNIQ)
        self.assertEqual(37, constants.SUBMIT_REDUCE_JOB)
        self.assertEqual(38, constants.SUBMIT_REDUCE_JOB_BACKGROUND)
        self.assertEqual(39, constants.GRAB_JOB_ALL)
        self.assertEqual(40, constants.JOB_ASSIGN_ALL)
        self.assertEqual(41, constants.GET_STATUS_UNIQUE)
        self.assertEqual(42, constants.STATUS_RES_UNIQUE)
        self.assertEqual(42, constants.MAX_TYPE)

    def test_magic_and_sizes(self):
        self.assertEqual(b'\x00REQ', constants.REQ)
        self.assertEqual(b'\x00RES', constants.RES)
        self.assertEqual(12, constants.HEADER_SIZE)
        self.assertEqual(4730, constants.DEFAULT_PORT)

    def test_precedence_values(self):
        self.assertEqual(0, constants.PRECEDENCE_NORMAL)
        self.assertEqual(1, constants.PRECEDENCE_LOW)
        self.assertEqual(2, constants.PRECEDENCE_HIGH)


class TestArgumentCounts(testtools.TestCase):

    def test_covers_every_type(self):
        self.assertEqual(set(constants.types),
                         set(constants.ARGUMENT_COUNTS))

    def test_counts_match_the_protocol(self):
        actual = {constants.types[t]: n
                  for t, n in constants.ARGUMENT_COUNTS.items()}
        self.assertEqual(EXPECTED_ARGUMENT_COUNTS, actual)


class TestResponseTypes(testtools.TestCase):

    def test_response_types(self):
        self.assertEqual(
            EXPECTED_RESPONSES,
            {constants.types[t] for t in constants.RESPONSE_TYPES})

    def test_no_request_is_a_response(self):
        for t in constants.SUBMIT_TYPES:
            self.assertNotIn(t, constants.RESPONSE_TYPES)
        for t in (constants.CAN_DO, constants.GRAB_JOB_UNIQ,
                  constants.WORK_COMPLETE, constants.ECHO_REQ):
            self.assertNotIn(t, constants.RESPONSE_TYPES)


class TestSubmitTypes(testtools.TestCase):

    def test_six_submit_types(self):
        self.assertEqual({
            constants.SUBMIT_JOB: (constants.PRECEDENCE_NORMAL, False),
            constants.SUBMIT_JOB_BG: (constants.PRECEDENCE_NORMAL, True),
            constants.SUBMIT_JOB_HIGH: (constants.PRECEDENCE_HIGH, False),
            constants.SUBMIT_JOB_HIGH_BG: (constants.PRECEDENCE_HIGH, True),
            constants.SUBMIT_JOB_LOW: (constants.PRECEDENCE_LOW, False),
            constants.SUBMIT_JOB_LOW_BG: (constants.PRECEDENCE_LOW, True),
        }, constants.SUBMIT_TYPES)

    def test_submit_type_for_is_the_inverse(self):
        self.assertEqual(len(constants.SUBMIT_TYPES),
                         len(constants.SUBMIT_TYPE_FOR))
        for ptype, key in constants.SUBMIT_TYPES.items():
            self.assertEqual(ptype, constants.SUBMIT_TYPE_FOR[key])
        for key, ptype in constants.SUBMIT_TYPE_FOR.items():
            self.assertEqual(key, constants.SUBMIT_TYPES[ptype])

    def test_every_precedence_and_mode_has_a_type(self):
        for precedence in (constants.PRECEDENCE_NORMAL,
                           constants.PRECEDENCE_LOW,
                           constants.PRECEDENCE_HIGH):
            for background in (False, True):
                self.assertIn((precedence, background),
                              constants.SUBMIT_TYPE_FOR)
