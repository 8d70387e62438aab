"""Parsing of python-gearman ``host_list`` entries.

python-gearman accepted ``'host'`` and ``'host:port'`` strings and TLS
dicts; it silently dropped tuples and could not parse an IPv6 address with
a port.  Here every form becomes a :class:`ServerAddress`, and anything
unusable raises :class:`GearmanError` at construction time rather than
failing later on the first submission.
"""

import collections

from gear.gearman.constants import DEFAULT_GEARMAN_PORT
from gear.gearman.errors import GearmanError

ServerAddress = collections.namedtuple(
    'ServerAddress', ['host', 'port', 'keyfile', 'certfile', 'ca_certs'])
ServerAddress.__new__.__defaults__ = (None, None, None)
ServerAddress.use_ssl = property(
    lambda self: bool(self.keyfile and self.certfile and self.ca_certs))

TLS_KEYS = ('host', 'port', 'keyfile', 'certfile', 'ca_certs')


def _port(value, entry):
    if isinstance(value, bool):
        raise GearmanError('Bad port in host entry %r' % (entry,))
    try:
        port = int(value)
    except (TypeError, ValueError):
        raise GearmanError('Bad port in host entry %r' % (entry,))
    if not 0 < port < 65536:
        raise GearmanError('Port out of range in host entry %r' % (entry,))
    return port


def _text(value, entry):
    if isinstance(value, (bytes, bytearray)):
        value = bytes(value).decode('utf-8')
    if not isinstance(value, str) or not value:
        raise GearmanError('Bad host in host entry %r' % (entry,))
    return value


def parse_host_string(text):
    """Split ``'host'``, ``'host:port'``, ``'[v6]'`` or ``'[v6]:port'``.

    An unbracketed string holding several colons is taken to be an IPv6
    address without a port.
    """
    entry = text
    text = _text(text, entry).strip()
    if text.startswith('['):
        close = text.find(']')
        if close < 0:
            raise GearmanError('Unclosed [ in host entry %r' % (entry,))
        host, rest = text[1:close], text[close + 1:]
        if not rest:
            return ServerAddress(_text(host, entry), DEFAULT_GEARMAN_PORT)
        if not rest.startswith(':'):
            raise GearmanError('Bad host entry %r' % (entry,))
        return ServerAddress(_text(host, entry), _port(rest[1:], entry))
    if text.count(':') == 1:
        host, port = text.split(':')
        return ServerAddress(_text(host, entry), _port(port, entry))
    return ServerAddress(_text(text, entry), DEFAULT_GEARMAN_PORT)


def parse_host_entry(entry):
    """Turn one ``host_list`` entry into a :class:`ServerAddress`."""
    if isinstance(entry, ServerAddress):
        return entry
    if isinstance(entry, (str, bytes, bytearray)):
        return parse_host_string(entry)
    if isinstance(entry, dict):
        missing = [key for key in TLS_KEYS if key not in entry]
        if missing:
            raise GearmanError('TLS host entry %r lacks %s'
                               % (entry, ', '.join(missing)))
        return ServerAddress(_text(entry['host'], entry),
                             _port(entry['port'], entry),
                             entry['keyfile'], entry['certfile'],
                             entry['ca_certs'])
    if isinstance(entry, (tuple, list)) and len(entry) in (1, 2):
        host = _text(entry[0], entry)
        if host.startswith('[') and host.endswith(']'):
            host = host[1:-1]
        port = _port(entry[1], entry) if len(entry) == 2 \
            else DEFAULT_GEARMAN_PORT
        return ServerAddress(host, port)
    raise GearmanError('Unusable host entry %r' % (entry,))


def parse_host_list(host_list):
    """Return the servers of ``host_list`` in order, without duplicates.

    ``None`` means no servers.  A single string is taken as one entry
    rather than as a sequence of one-letter host names.
    """
    if host_list is None:
        return []
    if isinstance(host_list, (str, bytes, bytearray, dict)):
        host_list = [host_list]
    servers = []
    for entry in host_list:
        address = parse_host_entry(entry)
        if address not in servers:
            servers.append(address)
    return servers
