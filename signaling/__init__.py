"""The mesh rendezvous server: WebSocket signaling (and later STUN/TURN)."""
