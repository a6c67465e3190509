"""MadQCI use cases as real applications of a running qkdnet network (README "Use cases").

Each use case runs as its own OS process (`qkd-usecase`), talks to its nodes' ETSI GS QKD 014
interface over mutual TLS with its SAEs' certificates like any application, carries its data
between its own peer processes over loopback TCP, and writes one JSON result (`result.py`).
"""
