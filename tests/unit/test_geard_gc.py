"""geard tunes the garbage collector of its own process only."""

import gc
import subprocess
import sys

import testtools

from gear.cmd import geard


class TestGeardGC(testtools.TestCase):

    def test_importing_geard_leaves_the_collector_alone(self):
        out = subprocess.run(
            [sys.executable, '-c',
             'import gc; before = gc.get_threshold(); '
             'import gear, gear.cmd.geard; '
             'print(gc.get_threshold() == before, gc.get_freeze_count())'],
            capture_output=True, text=True, timeout=60, check=True)
        self.assertEqual('True 0', out.stdout.strip())

    def test_tune_gc_freezes_startup_objects_and_sets_thresholds(self):
        out = subprocess.run(
            [sys.executable, '-c',
             'import gc; from gear.cmd import geard; geard.tune_gc(); '
             'print(*gc.get_threshold(), gc.get_freeze_count() > 0)'],
            capture_output=True, text=True, timeout=60, check=True)
        expected = ' '.join(str(t) for t in geard.GC_THRESHOLDS) + ' True'
        self.assertEqual(expected, out.stdout.strip())
        # This test process was not touched.
        self.assertNotEqual(geard.GC_THRESHOLDS, gc.get_threshold())

    def test_tune_gc_without_freeze_does_nothing(self):
        # PyPy's gc module has neither freeze() nor set_threshold().
        out = subprocess.run(
            [sys.executable, '-c',
             'import gc; del gc.freeze; del gc.set_threshold; '
             'from gear.cmd import geard; geard.tune_gc(); print("ok")'],
            capture_output=True, text=True, timeout=60, check=True)
        self.assertEqual('ok', out.stdout.strip())
