"""Data encoders: how job payloads turn into bytes and back.

A client or worker subclass picks one with the class attribute
``data_encoder``.  It is applied to every *data* field (submitted data,
results, updates, exceptions, assigned data) and never to names, handles
or status numbers.
"""


class DataEncoder(object):
    """Turn Python objects into payload bytes and back; subclass me."""

    @classmethod
    def encode(cls, encodable_object):
        raise NotImplementedError

    @classmethod
    def decode(cls, decodable_string):
        raise NotImplementedError


class NoopEncoder(DataEncoder):
    """Payloads are bytes; str is accepted on the way out (as UTF-8)."""

    @classmethod
    def encode(cls, encodable_object):
        if isinstance(encodable_object, (bytes, bytearray)):
            return bytes(encodable_object)
        if isinstance(encodable_object, str):
            return encodable_object.encode('utf-8')
        raise TypeError('NoopEncoder can only send bytes or str, not %s'
                        % type(encodable_object).__name__)

    @classmethod
    def decode(cls, decodable_string):
        if isinstance(decodable_string, (bytes, bytearray)):
            return bytes(decodable_string)
        raise TypeError('NoopEncoder can only receive bytes, not %s'
                        % type(decodable_string).__name__)
