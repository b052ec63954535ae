"""SCTP over DTLS and WebRTC data channels, written here (RFC 9260, 3758, 6525, 8831, 8832).

Sans-I/O layers, each its own module: chunks (the codec), receiver and sender
(the two halves of data transfer), reconfig (stream resets), association (the
lifecycle, timers and path MTU discovery), channels (DCEP data channels on
top). mesh/transport/datapath.py drives them with sockets and DTLS.
"""
