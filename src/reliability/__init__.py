"""Reliability suite (issue #9): drivers shared by the tests, `make crash`, `make soak` and `make fuzz`.

* `figures`: bench-format figure lines (`<name> = <value> <unit> (target <op> <value>)`).
* `ledger`: what SAE clients actually received, checked for loss, reuse and end-to-end equality.
* `sae`: an ETSI 014 SAE client that records which requests were in flight when a node was killed.
* `inproc`: an in-process chain of key stores, forwarders and 014/004 servers (property tests).
* `crash`: SIGKILL cycles of a `qkdnet up` network under 014 load and relays.
* `secrecy`: scan captured management-plane messages and logs for key bytes.
* `procstat`: RSS/PSS and open file descriptors of processes, from /proc.
* `soak`: the long run of the MadQCI twin.
"""
