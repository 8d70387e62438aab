"""Messages cut by the end of a read, as the server's loop meets them."""
from gear import constants as c
from gear.protocol import pack
from tests.functional.test_server_base import ServerTestCase


class TestReadBoundaries(ServerTestCase):

    def sendRead(self, conn, data):
        """Send ``data`` and make sure the server has read it: an echo on
        another connection returns only after the loop's turn that saw
        the bytes already sent."""
        conn.sendRaw(data)
        self.control.sync()

    def setUp(self):
        super(TestReadBoundaries, self).setUp()
        self.control = self.connect()

    def test_read_finishing_one_packet_and_starting_another(self):
        client = self.connect()
        a = pack(c.REQ, c.ECHO_REQ, b'first')
        b = pack(c.REQ, c.ECHO_REQ, b'second')
        d = pack(c.REQ, c.ECHO_REQ, b'third')
        self.sendRead(client, a[:7])
        self.sendRead(client, a[7:] + b + d[:3])
        self.sendRead(client, d[3:15])
        client.sendRaw(d[15:])
        client.expect(c.ECHO_RES, b'first')
        client.expect(c.ECHO_RES, b'second')
        client.expect(c.ECHO_RES, b'third')

    def test_admin_line_finished_by_a_read_with_a_packet(self):
        client = self.connect()
        self.sendRead(client, b'vers')
        self.sendRead(client, b'ion\n' + pack(c.REQ, c.ECHO_REQ, b'x')[:5])
        client.sendRaw(pack(c.REQ, c.ECHO_REQ, b'x')[5:])
        self.assertTrue(client.readText(end=b'\n').startswith(b'OK '))
        client.expect(c.ECHO_RES, b'x')

    def test_bad_magic_after_a_finished_packet_closes(self):
        client = self.connect()
        echo = pack(c.REQ, c.ECHO_REQ, b'ok')
        self.sendRead(client, echo[:4])
        client.sendRaw(echo[4:] + b'\x00BAD' + b'\x00' * 8)
        client.assertClosed()
        self.control.sync()
        # A later connection starts with nothing left over.
        fresh = self.connect()
        fresh.sync()
