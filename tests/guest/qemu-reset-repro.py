#!/usr/bin/env python3
"""A minimal vhost-user backend, to show a QEMU 11.1 bug without zerodax.

It speaks just enough vhost-user to be a virtio-fs device behind QEMU's generic
vhost-user-test-device-pci (features, config with a tag, one 4 MiB shared memory region),
serves no queue, and, once the guest's driver has started the device, maps one 2 MiB memfd
into the shared memory region with SHMEM_MAP. With --no-map it never maps anything.

Usage: qemu-reset-repro.py SOCKET [--no-map]   (listens on SOCKET, serves one frontend)
Standard library only.
"""
import os
import socket
import struct
import sys
import threading

SOCK, NO_MAP = sys.argv[1], "--no-map" in sys.argv[2:]
VERSION, REPLY, NEED_REPLY = 0x1, 0x4, 0x8
# Protocol features: MQ, REPLY_ACK, BACKEND_REQ, CONFIG, BACKEND_SEND_FD, CONFIGURE_MEM_SLOTS,
# SHMEM.
PROTOCOL = (1 << 0) | (1 << 3) | (1 << 5) | (1 << 9) | (1 << 10) | (1 << 15) | (1 << 22)
FEATURES = (1 << 32) | (1 << 30)  # VIRTIO_F_VERSION_1, VHOST_USER_F_PROTOCOL_FEATURES
WINDOW = 4 << 20
GET_VRING_BASE, SET_VRING_KICK, SET_BACKEND_REQ_FD = 11, 12, 21
GET_CONFIG, GET_SHMEM_CONFIG = 24, 44
U64_REPLIES = {1: FEATURES, 15: PROTOCOL, 17: 2, 36: 509}  # GET_FEATURES, ..., GET_MAX_MEM_SLOTS


def log(msg):
    print(f"repro-backend: {msg}", flush=True)


def recv_exact(conn, n):
    buf = b""
    while len(buf) < n:
        chunk = conn.recv(n - len(buf))
        if not chunk:
            raise EOFError
        buf += chunk
    return buf


def reply(conn, req, payload):
    conn.sendall(struct.pack("<III", req, VERSION | REPLY, len(payload)) + payload)


def shmem_map(backend_fd):
    """SHMEM_MAP of a 2 MiB memfd at offset 0 of region 0, writable; waits for the ack."""
    memfd = os.memfd_create("repro", 0)
    os.ftruncate(memfd, 2 << 20)
    body = struct.pack("<B7xQQQQ", 0, 0, 0, 2 << 20, 1)
    chan = socket.socket(fileno=backend_fd)
    hdr = struct.pack("<III", 9, VERSION | NEED_REPLY, len(body))
    socket.send_fds(chan, [hdr + body], [memfd])
    ack = recv_exact(chan, 20)
    log(f"SHMEM_MAP acked with {struct.unpack('<Q', ack[12:])[0]}")
    chan.detach()


def serve(conn):
    backend_fd, mapped = None, False
    while True:
        try:
            data, fds, _, _ = socket.recv_fds(conn, 12, 8)
        except (EOFError, ConnectionResetError):
            break
        if len(data) < 12:
            data += recv_exact(conn, 12 - len(data)) if data else b""
            if not data:
                break
        req, flags, size = struct.unpack("<III", data)
        body = recv_exact(conn, size) if size else b""
        if req in U64_REPLIES:
            reply(conn, req, struct.pack("<Q", U64_REPLIES[req]))
        elif req == GET_VRING_BASE:
            reply(conn, req, struct.pack("<II", struct.unpack_from("<I", body)[0], 0))
        elif req == GET_CONFIG:
            offset, length, cflags = struct.unpack_from("<III", body)
            config = b"zdg".ljust(36, b"\0") + struct.pack("<I", 1)
            reply(conn, req, struct.pack("<III", offset, length, cflags)
                  + config[offset:offset + length].ljust(length, b"\0"))
        elif req == GET_SHMEM_CONFIG:
            reply(conn, req, struct.pack("<II", 1, 0) + struct.pack("<Q", WINDOW)
                  + b"\0" * (8 * 255))
        else:
            if req == SET_BACKEND_REQ_FD:
                backend_fd, fds = fds[0], fds[1:]
            if req == SET_VRING_KICK and backend_fd is not None and not mapped and not NO_MAP:
                # The driver started the device: map, from another thread (QEMU answers
                # backend requests from its main loop, after this message).
                mapped = True
                threading.Thread(target=shmem_map, args=(backend_fd,), daemon=True).start()
            if flags & NEED_REPLY:
                reply(conn, req, struct.pack("<Q", 0))
        for fd in fds:
            os.close(fd)
    log("frontend disconnected")


def main():
    if os.path.exists(SOCK):
        os.unlink(SOCK)
    srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    srv.bind(SOCK)
    srv.listen(1)
    log(f"listening on {SOCK}{' (never maps)' if NO_MAP else ''}")
    conn, _ = srv.accept()
    serve(conn)


main()
