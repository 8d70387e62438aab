"""File systems that fail on purpose, for stores on a full or broken disk.

:class:`SmallTmpfs` is a size-limited tmpfs that can be filled to the last
byte and emptied again.  :class:`BreakableExt4` is an ext4 image on a loop
device mounted with ``errors=remount-ro``; ``break_()`` reports an error
to the kernel (``/sys/fs/ext4/<dev>/trigger_fs_error``), which turns the
file system read-only as a real disk error would, and ``repair()``
unmounts it, runs e2fsck and mounts it again.

Both need root and a kernel that lets this container mount; ``reason()``
says why not, for a skip.  Cleanup unmounts even after a failure.
"""

import errno
import os
import shutil
import subprocess
import tempfile

import fixtures

TIMEOUT = 60


def _run(*argv):
    return subprocess.run(argv, capture_output=True, text=True,
                          timeout=TIMEOUT)


def _unmount(path):
    if _run('umount', path).returncode != 0:
        # Still busy (a process that a failed test left behind): detach
        # it now, the kernel frees it once the last file closes.
        _run('umount', '-l', path)


class _Mounted(fixtures.Fixture):

    def reason(self):
        """None when this file system can be used here, else why not."""
        if os.geteuid() != 0:
            return 'mounting a file system needs root'
        return None

    def _setUp(self):
        self.base = tempfile.mkdtemp(prefix='gear-fs-')
        self.addCleanup(shutil.rmtree, self.base, True)
        self.path = os.path.join(self.base, 'mnt')
        os.mkdir(self.path)
        self._mount()
        self.addCleanup(_unmount, self.path)

    def file(self, name):
        return os.path.join(self.path, name)


class SmallTmpfs(_Mounted):
    """A tmpfs of ``size`` bytes; fill() leaves it with no free byte."""

    def __init__(self, size=8 * 1024 * 1024):
        super().__init__()
        self.size = size

    def _mount(self):
        result = _run('mount', '-t', 'tmpfs', '-o', 'size=%d' % self.size,
                      'tmpfs', self.path)
        if result.returncode != 0:
            raise OSError('mount -t tmpfs failed: %s' % result.stderr)

    def fill(self):
        """Take every free byte (a filler file written until ENOSPC)."""
        fd = os.open(self.file('filler'), os.O_WRONLY | os.O_CREAT |
                     os.O_APPEND, 0o644)
        try:
            for chunk in (1 << 20, 1 << 16, 1 << 12, 1 << 9, 1):
                block = b'\0' * chunk
                while True:
                    try:
                        os.write(fd, block)
                    except OSError as e:
                        if e.errno != errno.ENOSPC:
                            raise
                        break
        finally:
            os.close(fd)

    def free(self):
        os.unlink(self.file('filler'))


class BreakableExt4(_Mounted):
    """An ext4 image the kernel can be made to turn read-only."""

    def __init__(self, size=32 * 1024 * 1024):
        super().__init__()
        self.size = size

    def reason(self):
        why = super().reason()
        if why:
            return why
        for tool in ('mkfs.ext4', 'e2fsck', 'losetup'):
            if shutil.which(tool) is None:
                return '%s is not installed' % tool
        return None

    def _mount(self):
        self.image = os.path.join(self.base, 'fs.img')
        with open(self.image, 'wb') as f:
            f.truncate(self.size)
        result = _run('mkfs.ext4', '-q', '-F', self.image)
        if result.returncode != 0:
            raise OSError('mkfs.ext4 failed: %s' % result.stderr)
        self._mountImage()

    def _mountImage(self):
        result = _run('mount', '-o', 'loop,errors=remount-ro', self.image,
                      self.path)
        if result.returncode != 0:
            raise OSError('mount -o loop failed: %s' % result.stderr)
        source = _run('findmnt', '-n', '-o', 'SOURCE', self.path)
        self.device = os.path.basename(source.stdout.strip())
        if not os.path.exists(self._trigger()):
            raise OSError('this kernel has no %s' % self._trigger())

    def _trigger(self):
        return '/sys/fs/ext4/%s/trigger_fs_error' % self.device

    def break_(self):
        """Report an error: the kernel makes the file system read-only."""
        with open(self._trigger(), 'w') as f:
            f.write('gear reliability test\n')

    def repair(self):
        """Unmount (nothing may hold a file), e2fsck, mount again."""
        result = _run('umount', self.path)
        if result.returncode != 0:
            raise OSError('umount failed: %s' % result.stderr)
        result = _run('e2fsck', '-f', '-y', self.image)
        if result.returncode not in (0, 1):
            raise OSError('e2fsck failed (%d): %s'
                          % (result.returncode, result.stdout))
        self._mountImage()


def use(test, fs):
    """Set ``fs`` up for ``test``, or skip the test saying why it cannot
    run here."""
    why = fs.reason()
    if why is None:
        try:
            return test.useFixture(fs)
        except Exception as e:  # mount refused: a container without rights
            why = str(e).strip()
    test.skipTest('needs a file system that can fail: %s' % why)
