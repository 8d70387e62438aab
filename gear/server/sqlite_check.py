"""Checks that a SQLite job store can be read completely, made at open.

SQLite itself does not refuse a damaged store: an empty file is a valid
empty database, a write-ahead log (WAL) whose header or a middle frame is
damaged is silently cut at the damage (so committed jobs vanish), and a
damaged page only fails the query that reads it.  A job server that
started anyway would replay part of its jobs, or none, and then accept
new ones into the damaged file.  These checks run before the server
starts and raise :class:`~gear.server.store.StoreError` instead.

The WAL is checked here, before SQLite opens the database: opening runs
SQLite's recovery, which would drop the frames after the damage, and
closing checkpoints and deletes the log.
"""

import os
import struct

from gear.server.store import StoreError

_WAL_MAGIC = (0x377f0682, 0x377f0683)
_WAL_HEADER = struct.Struct('>8I')
_FRAME_HEADER = struct.Struct('>6I')
_MASK = 0xffffffff

#: How to start afresh, appended to every "damaged" message.
MOVE_ASIDE = ('move it aside with its -wal and -shm files (mv %(path)s '
              '%(path)s.damaged; likewise %(path)s-wal and %(path)s-shm) '
              'to start with an empty store')


def damaged(path, what):
    """The one-line error for a store that cannot be read completely."""
    return StoreError('job store %s is damaged: %s; %s'
                      % (path, what, MOVE_ASIDE % {'path': path}))


def check_files(path):
    """Refuse an empty database file and a damaged write-ahead log."""
    try:
        size = os.path.getsize(path)
    except FileNotFoundError:
        size = None
    except OSError as e:
        raise StoreError('cannot open job store %s: %s'
                         % (path, e.strerror or e))
    if size == 0:
        # SQLite writes its header when it creates a store; an empty file
        # was cut short (a full disk, a bad copy) or is not a store.
        raise damaged(path, 'the file is empty (0 bytes)')
    check_wal(path)


def _checksum(data, big_endian, s0, s1):
    """SQLite's WAL checksum of ``data`` (a multiple of 8 bytes),
    continuing from (s0, s1)."""
    words = struct.unpack('%s%dI' % ('>' if big_endian else '<',
                                     len(data) // 4), data)
    it = iter(words)
    for a in it:
        s0 = (s0 + a + s1) & _MASK
        s1 = (s1 + next(it) + s0) & _MASK
    return s0, s1


def check_wal(path):
    """Raise StoreError if SQLite's recovery would drop committed frames
    of ``path``'s WAL.

    A log ends at its first frame that is not valid (a salt of an older
    generation, or a checksum mismatch).  That is normal after a
    checkpoint, or after a crash in the middle of a write.  It is damage
    when the header is invalid (the whole log would be ignored), or when
    frames of the current generation follow the first invalid one.
    """
    wal = path + '-wal'
    try:
        f = open(wal, 'rb')
    except FileNotFoundError:
        return
    except OSError as e:
        raise StoreError('cannot read the WAL %s of job store %s: %s'
                         % (wal, path, e.strerror or e))
    with f:
        header = f.read(_WAL_HEADER.size)
        if not header:
            return
        if len(header) < _WAL_HEADER.size:
            raise damaged(path, 'its WAL %s is cut short in its header'
                          % wal)
        (magic, version, page_size, _, salt1, salt2, c1,
         c2) = _WAL_HEADER.unpack(header)
        if magic not in _WAL_MAGIC or page_size < 512 or \
                page_size > 65536 or page_size & (page_size - 1):
            raise damaged(path, 'the header of its WAL %s is not valid'
                          % wal)
        big_endian = magic & 1
        if _checksum(header[:24], big_endian, 0, 0) != (c1, c2):
            raise damaged(path, 'the header checksum of its WAL %s does '
                          'not match' % wal)
        sums = (c1, c2)
        frame = 0
        first_bad = None
        while True:
            frame_header = f.read(_FRAME_HEADER.size)
            if len(frame_header) < _FRAME_HEADER.size:
                return
            frame += 1
            (pgno, _, fs1, fs2, fc1,
             fc2) = _FRAME_HEADER.unpack(frame_header)
            current = (fs1, fs2) == (salt1, salt2)
            if first_bad is not None:
                if current:
                    raise damaged(path, 'frame %d of its WAL %s is not '
                                  'valid, and later frames would be lost'
                                  % (first_bad, wal))
                f.seek(page_size, os.SEEK_CUR)
                continue
            page = f.read(page_size)
            if len(page) < page_size:
                return
            if not current or pgno == 0:
                first_bad = frame
                continue
            sums = _checksum(frame_header[:8] + page, big_endian, *sums)
            if sums != (fc1, fc2):
                first_bad = frame


def integrity_problems(db, limit=5):
    """The problems ``PRAGMA integrity_check`` finds (empty when none)."""
    rows = db.execute('PRAGMA integrity_check(%d)' % limit).fetchall()
    problems = [str(row[0]) for row in rows]
    return [] if problems == ['ok'] else problems
