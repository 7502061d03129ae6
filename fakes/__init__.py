"""Small behavioural fakes of nmi's neighbours, speaking their real wire protocols over loopback HTTP.

Used by the tests and by the README demo; never by the daemon itself.
"""
