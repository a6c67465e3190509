"""Simulated QKD module: one emitter or receiver of a pair, running inside its node's daemon.

The TRANSMITTER ticks every `tick_s`: it evaluates `link_performance(profile, loss_db)`, multiplies
the rate by a slow `RateFluctuation`, accumulates `skr x dt` bits (fractional carry) and cuts whole
keys of `key_size_bits` from its entropy source (default `os.urandom`; a QRNG client later). Each key
gets a random UUID key ID and the next `seq`. The keys travel in a TICK frame over the photon-channel
stub (`qkdnode.devices.channel`); the RECEIVER never computes keys, it stores what it receives.

Both ends must hold exactly the same keys, also when the channel breaks mid-block, so a block is
committed in two steps (like the final confirmation of a real post-processing stack): T sends
TICK(block, keys) and keeps them *in flight*, R keeps them *pending* and ACKs; on the ACK T commits
them to its buffer and sends COMMIT, on which R commits them. On reconnection T's HELLO carries its
highest committed seq: R commits its pending keys up to it and drops the rest (T already dropped its
in-flight keys). If the peer's `instance` changed (it restarted and lost its buffer), the local buffer
is dropped too. Dropped keys are counted in `keys_discarded`.

The buffer is bounded: when either end is full (its KMS stopped pulling), T generates nothing and
counts the tick in `buffer_full_ticks`, like a real device. Keys leave the buffer, in seq order, only
when the KMS acknowledges them (`qkdnode.devices.keysource`). `seq` starts at the transmitter's wall
clock in microseconds (unless `seq_start` is set), so a restarted pair continues above the seqs a KMS
already stored (`KeyStore.ingest` needs increasing seq).
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import os
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Literal

from .channel import (
    Ack,
    Channel,
    ChannelClosed,
    ChannelListener,
    Commit,
    FrameError,
    Hello,
    PairRefused,
    Refuse,
    Role,
    SetLoss,
    Tick,
    exchange_hello,
    open_channel,
)
from .keyrun import KeyRun, new_key_ids
from .keysource import KeyBuffer
from .physics import DeviceProfile, LinkPerformance, Protocol, RateFluctuation, link_performance
from .profiles import HWDU_CV, IDQ_COW, TOSHIBA_BB84, profile_by_name

log = logging.getLogger(__name__)

__all__ = [
    "DEFAULT_PROFILES", "Entropy", "ModuleConfig", "ModuleRole", "ModuleStatus", "QKDModule",
    "StatusListener", "Technology",
]

Technology = Literal["dv-bb84", "dv-cow", "cv-gg02"]
ModuleRole = Literal["transmitter", "receiver"]
Entropy = Callable[[int], bytes | Awaitable[bytes]]
"""Returns exactly n random bytes (sync, or a coroutine for a network QRNG)."""

DEFAULT_PROFILES: dict[str, str] = {
    "dv-bb84": TOSHIBA_BB84.name, "dv-cow": IDQ_COW.name, "cv-gg02": HWDU_CV.name,
}
_PROTOCOLS: dict[str, Protocol] = {
    "dv-bb84": Protocol.DECOY_BB84, "dv-cow": Protocol.COW, "cv-gg02": Protocol.CV_GG02_HETERODYNE,
}


@dataclass(frozen=True)
class ModuleConfig:
    """Configuration of one module. `channel_host/port`: receiver binds there; transmitter connects."""

    name: str
    technology: Technology
    role: ModuleRole
    pairs_with: str
    profile: str | None = None  #: profile name; None -> DEFAULT_PROFILES[technology]
    loss_db: float = 0.0
    key_size_bits: int = 256
    tick_s: float = 0.1
    buffer_max_keys: int = 100_000
    channel_host: str = "127.0.0.1"
    channel_port: int = 0
    fluctuation_std: float | None = None  #: None -> the profile's fluctuation_std
    perf_interval_s: float = 1.0  #: period of the perf callbacks
    reconnect_initial_s: float = 0.05
    reconnect_max_s: float = 2.0
    peer_timeout_s: float | None = None  #: silence that counts as disconnection; None -> max(3, 20 ticks)
    seq_start: int | None = None  #: None -> wall clock in microseconds at start

    def __post_init__(self) -> None:
        if self.technology not in _PROTOCOLS:
            raise ValueError(f"technology must be one of {sorted(_PROTOCOLS)}")
        if self.role not in ("transmitter", "receiver"):
            raise ValueError("role must be 'transmitter' or 'receiver'")
        if not self.name or not self.pairs_with or self.name == self.pairs_with:
            raise ValueError("name and pairs_with must be set and differ")
        if self.key_size_bits <= 0 or self.key_size_bits % 8 or self.key_size_bits > 8 * 0xFFFF:
            raise ValueError("key_size_bits must be a positive multiple of 8")
        if self.tick_s <= 0 or self.buffer_max_keys < 1 or self.loss_db < 0:
            raise ValueError("tick_s > 0, buffer_max_keys >= 1 and loss_db >= 0 required")
        if self.role == "transmitter" and self.channel_port == 0:
            raise ValueError("a transmitter needs the receiver's channel_port")
        if self.device_profile().protocol is not _PROTOCOLS[self.technology]:
            raise ValueError(f"profile {self.profile_name} is not a {self.technology} device")

    @property
    def profile_name(self) -> str:
        return self.profile or DEFAULT_PROFILES[self.technology]

    def device_profile(self) -> DeviceProfile:
        try:
            return profile_by_name(self.profile_name)
        except KeyError:
            raise ValueError(f"unknown device profile {self.profile_name!r}") from None

    @property
    def timeout_s(self) -> float:
        return self.peer_timeout_s if self.peer_timeout_s is not None else max(3.0, 20 * self.tick_s)


@dataclass(frozen=True)
class ModuleStatus:
    """What the SDN agent may see of a module: numbers and state, never key bytes."""

    name: str
    role: ModuleRole
    up: bool
    reason: str | None  #: why it is down (None when up)
    connected: bool
    skr_bps: float
    qber: float | None
    snr: float | None
    excess_noise: float | None
    loss_db: float
    loss_budget_db: float
    keys_generated: int  #: keys committed at this end since start
    keys_buffered: int  #: keys waiting for the KMS (served but unacknowledged included)
    keys_served_unacked: int
    keys_discarded: int  #: in-flight/pending/buffered keys dropped to keep both ends equal
    buffer_full: bool
    buffer_full_ticks: int
    last_seq: int  #: seq of the last key committed at this end (-1: none yet)


StatusListener = Callable[[ModuleStatus], None | Awaitable[None]]


class QKDModule:
    """One simulated QKD module (emitter or receiver), an asyncio component of the node daemon."""

    def __init__(self, config: ModuleConfig, *, entropy: Entropy = os.urandom,
                 fluctuation: RateFluctuation | None = None) -> None:
        self.config = config
        self.profile = config.device_profile()
        self.entropy = entropy
        std = self.profile.fluctuation_std if config.fluctuation_std is None else config.fluctuation_std
        self.fluctuation = fluctuation or RateFluctuation(std, self.profile.fluctuation_tau_s)
        self.buffer = KeyBuffer(config.buffer_max_keys)
        self.instance = os.urandom(16)
        self._role = Role.TRANSMITTER if config.role == "transmitter" else Role.RECEIVER
        self._loss = config.loss_db
        self._loss_set_at = 0.0
        self._perf_cache: tuple[float, LinkPerformance] | None = None
        # state
        self._connected = False
        self._up = False
        self._reason: str | None = "not started"
        self._figures: tuple[float, float | None, float | None, float | None] = (0.0, None, None, None)
        self._generated = 0
        self._discarded = 0
        self._full = False
        self._full_ticks = 0
        self._committed_seq = -1
        self._peer_instance: bytes | None = None
        # transmitter
        self._next_seq = 0
        self._next_block = 0
        self._carry = 0.0
        self._peer_room = 0
        self._inflight: dict[int, KeyRun] = {}
        self._inflight_keys = 0
        # receiver
        self._pending: dict[int, KeyRun] = {}
        self._pending_keys = 0
        self._listener: ChannelListener | None = None
        self._rx_task: asyncio.Task[None] | None = None
        self._channel: Channel | None = None
        # plumbing
        self._tasks: list[asyncio.Task[None]] = []
        self._state_listeners: list[StatusListener] = []
        self._perf_listeners: list[StatusListener] = []
        self._callback_tasks: set[asyncio.Task[None]] = set()

    # -- public API ------------------------------------------------------------------------------

    @property
    def name(self) -> str:
        return self.config.name

    @property
    def peer_name(self) -> str:
        return self.config.pairs_with

    @property
    def key_size_bits(self) -> int:
        return self.config.key_size_bits

    @property
    def channel_port(self) -> int:
        """Receiver: the bound port (after start); transmitter: the port it connects to."""
        return self._listener.port if self._listener is not None else self.config.channel_port

    @property
    def loss_db(self) -> float:
        return self._loss

    @property
    def link_up(self) -> bool:
        return self._up

    async def start(self) -> None:
        if self._tasks:
            raise RuntimeError("module already started")
        self._next_seq = self.config.seq_start if self.config.seq_start is not None else time.time_ns() // 1000
        self._set_state(False, "channel disconnected")
        if self._role is Role.RECEIVER:
            self._listener = ChannelListener(self.config.channel_host, self.config.channel_port, self._rx_accept)
            port = await self._listener.start()
            log.info("QKD module %s (receiver) listening on %s:%d", self.name, self.config.channel_host, port)
        else:
            self._tasks.append(asyncio.create_task(self._tx_run(), name=f"qkd-tx-{self.name}"))
        self._tasks.append(asyncio.create_task(self._perf_loop(), name=f"qkd-perf-{self.name}"))

    async def stop(self) -> None:
        if self._listener is not None:
            await self._listener.stop()
            self._listener = None
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks.clear()
        self._connected = False
        self._set_state(False, "module stopped")
        if self._callback_tasks:
            await asyncio.gather(*self._callback_tasks, return_exceptions=True)

    def set_loss(self, loss_db: float) -> None:
        """Change the channel loss at run time (optical switch, fibre cut). Either end may call it."""
        if loss_db < 0:
            raise ValueError("loss_db must be >= 0")
        self._loss, self._loss_set_at = loss_db, time.time()
        if self._role is Role.RECEIVER and self._channel is not None:
            ch = self._channel
            self._spawn(self._send_quietly(ch, SetLoss(loss_db, self._loss_set_at)))

    def status(self) -> ModuleStatus:
        skr, qber, snr, xi = self._figures
        return ModuleStatus(
            self.name, self.config.role, self._up, None if self._up else self._reason, self._connected,
            skr, qber, snr, xi, self._loss, self.profile.loss_budget_db, self._generated,
            len(self.buffer), self.buffer.served_unacked, self._discarded,
            self._full or self.buffer.room == 0, self._full_ticks, self._committed_seq,
        )

    def on_state_change(self, callback: StatusListener) -> None:
        """`callback(status)` whenever the link goes up or down (status.reason says why)."""
        self._state_listeners.append(callback)

    def on_perf(self, callback: StatusListener) -> None:
        """`callback(status)` every `perf_interval_s` while the module runs."""
        self._perf_listeners.append(callback)

    # -- state and callbacks ---------------------------------------------------------------------

    def _set_state(self, up: bool, reason: str | None) -> None:
        reason = None if up else (reason or "down")
        changed = up != self._up
        self._up, self._reason = up, reason
        if not up:
            self._figures = (0.0, *self._figures[1:])
        if changed:
            log.info("QKD module %s link %s%s", self.name, "up" if up else "down",
                     f": {reason}" if reason else "")
            self._notify(self._state_listeners)

    def _notify(self, listeners: list[StatusListener]) -> None:
        if not listeners:
            return
        st = self.status()
        for cb in listeners:
            try:
                res = cb(st)
                if inspect.isawaitable(res):
                    self._spawn(res)
            except Exception:
                log.exception("QKD module %s: status listener failed", self.name)

    def _spawn(self, aw: Awaitable[None]) -> None:
        async def run() -> None:
            try:
                await aw
            except Exception:
                log.exception("QKD module %s: background callback failed", self.name)

        task = asyncio.get_running_loop().create_task(run())
        self._callback_tasks.add(task)
        task.add_done_callback(self._callback_tasks.discard)

    async def _perf_loop(self) -> None:
        while True:
            await asyncio.sleep(self.config.perf_interval_s)
            self._notify(self._perf_listeners)

    @staticmethod
    async def _send_quietly(ch: Channel, frame: SetLoss) -> None:
        try:
            await ch.send(frame)
        except ChannelClosed:
            pass  # the next HELLO carries the loss and its timestamp

    # -- handshake -------------------------------------------------------------------------------

    def _hello(self) -> Hello:
        room = self.buffer.room - self._pending_keys - self._inflight_keys
        return Hello(self._role, self.name, self.peer_name, self.config.technology,
                     self.config.profile_name, self.key_size_bits, self.instance,
                     self._committed_seq, max(room, 0), self._loss, self._loss_set_at)

    def _check_peer(self, peer: Hello) -> str | None:
        want = Role.RECEIVER if self._role is Role.TRANSMITTER else Role.TRANSMITTER
        problems = []
        if peer.role is not want:
            problems.append(f"peer is a {peer.role.name.lower()}, expected a {want.name.lower()}")
        if peer.name != self.peer_name or peer.pairs_with != self.name:
            problems.append(f"{self.name} pairs with {self.peer_name}, not with {peer.name} "
                            f"(which pairs with {peer.pairs_with})")
        if peer.technology != self.config.technology or peer.profile != self.config.profile_name:
            problems.append(f"technology {peer.technology}/{peer.profile} does not match "
                            f"{self.config.technology}/{self.config.profile_name}")
        if peer.key_size_bits != self.key_size_bits:
            problems.append(f"key size {peer.key_size_bits} != {self.key_size_bits}")
        return "; ".join(problems) or None

    def _adopt_peer(self, peer: Hello) -> None:
        """After a good handshake: forget keys the peer cannot have, reconcile, take the newer loss."""
        if self._peer_instance is not None and peer.instance != self._peer_instance:
            dropped = self.buffer.clear() + self._pending_keys
            self._pending.clear()
            self._pending_keys = 0
            self._discarded += dropped
            log.warning("QKD module %s: peer %s restarted, %d buffered keys dropped",
                        self.name, peer.name, dropped)
        self._peer_instance = peer.instance
        if self._role is Role.RECEIVER:  # commit what the transmitter committed, drop the rest
            for block in sorted(self._pending):
                keys = self._pending.pop(block)
                if keys.last_seq <= peer.committed_seq:
                    self._commit(keys)
                else:
                    self._discarded += len(keys)
            self._pending_keys = 0
        else:
            self._peer_room = peer.room
        if peer.loss_set_at > self._loss_set_at:
            self._loss, self._loss_set_at = peer.loss_db, peer.loss_set_at

    def _commit(self, keys: KeyRun) -> None:
        self.buffer.append(keys)
        self._generated += len(keys)
        self._committed_seq = keys.last_seq

    # -- transmitter -----------------------------------------------------------------------------

    async def _tx_run(self) -> None:
        cfg = self.config
        backoff = cfg.reconnect_initial_s
        while True:
            reason = "channel disconnected"
            try:
                ch = await open_channel(cfg.channel_host, cfg.channel_port, timeout=cfg.timeout_s)
            except (OSError, TimeoutError) as e:
                log.debug("QKD module %s: connect failed: %s", self.name, type(e).__name__)
            else:
                try:
                    peer = await exchange_hello(ch, self._hello(), self._check_peer, initiator=True,
                                                timeout=cfg.timeout_s)
                    self._adopt_peer(peer)
                    backoff = cfg.reconnect_initial_s
                    self._connected = True
                    log.info("QKD module %s connected to %s at %s", self.name, peer.name, ch.peer)
                    await self._tx_session(ch)
                except PairRefused as e:
                    reason = f"pair refused: {e}"
                    log.log(logging.WARNING if reason != self._reason else logging.DEBUG,
                            "QKD module %s: %s", self.name, reason)
                except (ChannelClosed, FrameError) as e:
                    log.info("QKD module %s: channel lost: %s", self.name, e)
                except Exception:  # a bug must not end the module: report it, reconnect
                    log.exception("QKD module %s: transmitter session failed", self.name)
                    reason = "internal error"
                finally:
                    self._connected = False
                    self._discarded += self._inflight_keys
                    self._inflight.clear()
                    self._inflight_keys = 0
                    self._carry = 0.0
                    await ch.close()
            self._set_state(False, reason)
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, cfg.reconnect_max_s)

    async def _tx_session(self, ch: Channel) -> None:
        loop = asyncio.get_running_loop()
        reader = asyncio.create_task(self._tx_reader(ch))
        try:
            last = loop.time()
            while True:
                await asyncio.wait({reader}, timeout=self.config.tick_s)
                if reader.done():
                    reader.result()  # raises why the channel ended
                    raise ChannelClosed("reader ended")
                now = loop.time()
                tick = await self._make_tick(now - last)
                last = now
                await ch.send(tick)
        finally:
            reader.cancel()
            await asyncio.gather(reader, return_exceptions=True)

    async def _tx_reader(self, ch: Channel) -> None:
        while True:
            frame = await ch.recv(self.config.timeout_s)
            if isinstance(frame, Ack):
                self._peer_room = frame.room
                keys = self._inflight.pop(frame.block, None)
                if keys:
                    if self._inflight and min(self._inflight) < frame.block:
                        raise FrameError("ACK out of order")
                    self._inflight_keys -= len(keys)
                    self._commit(keys)
                    await ch.send(Commit(frame.block))
            elif isinstance(frame, SetLoss):
                if frame.set_at > self._loss_set_at:
                    self._loss, self._loss_set_at = frame.loss_db, frame.set_at
            elif isinstance(frame, Refuse):
                raise PairRefused(f"refused by peer: {frame.reason}")
            else:
                raise FrameError(f"unexpected {type(frame).__name__} from the receiver")

    def _performance(self) -> LinkPerformance:
        cached = self._perf_cache
        if cached is None or cached[0] != self._loss:
            cached = (self._loss, link_performance(self.profile, self._loss))
            self._perf_cache = cached
        return cached[1]

    def _down_reason(self, perf: LinkPerformance) -> str:
        budget = self.profile.loss_budget_db
        if self._loss > budget:
            return f"loss {self._loss:.2f} dB exceeds the budget of {budget:.2f} dB"
        figure = (f"QBER {perf.qber:.4f}" if perf.qber is not None
                  else f"SNR {perf.snr_db:.2f} dB" if perf.snr_db is not None else "no signal")
        return f"no secret key at {self._loss:.2f} dB ({figure})"

    async def _make_tick(self, dt: float) -> Tick:
        perf = self._performance()
        factor = self.fluctuation.step(dt)
        kbits = self.key_size_bits
        kb = kbits // 8
        keys = KeyRun.empty(kb)
        up, reason = perf.up, ""
        skr = perf.skr_bps * factor if up else 0.0
        if not up:
            reason = self._down_reason(perf)
            self._carry = 0.0
        else:
            room = min(self.buffer.room, self._peer_room) - self._inflight_keys
            self._full = room <= 0
            if self._full:
                self._full_ticks += 1
                self._carry = 0.0  # a stalled device produces nothing, it does not catch up later
            else:
                self._carry += skr * dt
                n = int(self._carry // kbits)
                if n > room:
                    n, self._carry = room, 0.0
                else:
                    self._carry -= n * kbits
                if n:
                    try:
                        keys = await self._cut_keys(n)
                    except Exception as e:  # entropy source failure: no keys, link reported down
                        log.warning("QKD module %s: entropy source failed: %s", self.name, type(e).__name__)
                        up, reason, skr = False, f"entropy source failed ({type(e).__name__})", 0.0
        self._figures = (skr, perf.qber, perf.snr, perf.excess_noise)
        self._set_state(up, reason)
        block = self._next_block
        self._next_block += 1
        if keys:
            self._inflight[block] = keys
            self._inflight_keys += len(keys)
        return Tick(block, up, reason, skr, perf.qber, perf.snr, perf.excess_noise, self._loss,
                    self._loss_set_at, kb, keys)

    async def _cut_keys(self, n: int) -> KeyRun:
        """n keys from the entropy source, with fresh random key IDs and the next seqs."""
        kb = self.key_size_bits // 8
        got = self.entropy(n * kb)
        material = await got if inspect.isawaitable(got) else got
        if not isinstance(material, bytes) or len(material) != n * kb:
            raise RuntimeError("entropy source returned the wrong number of bytes")
        seq0 = self._next_seq
        self._next_seq += n
        return KeyRun.consecutive(new_key_ids(n), seq0, material, kb)

    # -- receiver --------------------------------------------------------------------------------

    async def _rx_accept(self, ch: Channel) -> None:
        try:
            peer = await exchange_hello(ch, self._hello(), self._check_peer, initiator=False,
                                        timeout=self.config.timeout_s)
        except PairRefused as e:
            log.warning("QKD module %s refused a connection from %s: %s", self.name, ch.peer, e)
            if not self._connected:
                self._set_state(False, f"pair refused: {e}")
            return
        except (ChannelClosed, FrameError) as e:
            log.info("QKD module %s: handshake from %s failed: %s", self.name, ch.peer, e)
            return
        old = self._rx_task
        if old is not None and not old.done():  # the transmitter reconnected: the old link is dead
            old.cancel()
            await asyncio.gather(old, return_exceptions=True)
        self._rx_task = asyncio.current_task()
        self._adopt_peer(peer)
        self._connected, self._channel = True, ch
        log.info("QKD module %s connected to %s at %s", self.name, peer.name, ch.peer)
        self._set_state(False, "waiting for the first tick")
        try:
            await self._rx_session(ch)
        except (ChannelClosed, FrameError, PairRefused) as e:
            log.info("QKD module %s: channel lost: %s", self.name, e)
        finally:
            if self._rx_task is asyncio.current_task():
                self._connected, self._channel, self._rx_task = False, None, None
                self._set_state(False, "channel disconnected")

    async def _rx_session(self, ch: Channel) -> None:
        kb = self.key_size_bits // 8
        while True:
            frame = await ch.recv(self.config.timeout_s)
            if isinstance(frame, Tick):
                if frame.key_bytes != kb and frame.keys:
                    raise FrameError(f"keys of {frame.key_bytes} bytes, expected {kb}")
                if frame.loss_set_at >= self._loss_set_at:
                    self._loss, self._loss_set_at = frame.loss_db, frame.loss_set_at
                self._figures = (frame.skr_bps, frame.qber, frame.snr, frame.excess_noise)
                keys = frame.run
                if keys:
                    self._pending[frame.block] = keys
                    self._pending_keys += len(keys)
                self._set_state(frame.up, frame.reason)
                await ch.send(Ack(frame.block, max(self.buffer.room - self._pending_keys, 0)))
            elif isinstance(frame, Commit):
                keys = self._pending.pop(frame.block, None)
                if not keys:
                    raise FrameError(f"COMMIT of unknown block {frame.block}")
                self._pending_keys -= len(keys)
                self._commit(keys)
            elif isinstance(frame, Refuse):
                raise PairRefused(f"refused by peer: {frame.reason}")
            else:
                raise FrameError(f"unexpected {type(frame).__name__} from the transmitter")
