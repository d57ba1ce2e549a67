#if canImport(Glibc)
import Glibc
#endif
import COperandoShim
import OperandoCore

/// Who is on the other end of a Unix socket connection (SO_PEERCRED).
public struct PeerCredentials: Sendable, CustomStringConvertible {
    public var pid: Int32
    public var uid: UInt32
    public var gid: UInt32
    public var description: String { "pid \(pid) uid \(uid) gid \(gid)" }
}

/// An error from a socket call, naming the path and the call.
public struct SocketError: Error, CustomStringConvertible, Sendable {
    public var call: String
    public var path: String
    public var errno: Errno
    public var description: String { "\(call) on \(path) failed: \(errno)" }
}

/// A connected Unix stream socket (a control-socket client, or one accepted connection).
public final class UnixConnection: @unchecked Sendable {
    public let fd: FileDescriptor
    public let path: String

    init(fd: FileDescriptor, path: String) {
        self.fd = fd
        self.path = path
    }

    deinit { fd.close() }

    /// Connects to a listening socket at `path`.
    public static func connect(to path: String) throws -> UnixConnection {
        let s = socket(AF_UNIX, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        guard s >= 0 else { throw SocketError(call: "socket", path: path, errno: .current) }
        var addr = try UnixListener.address(path)
        let rc = withUnsafePointer(to: &addr) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { Glibc.connect(s, $0, socklen_t(MemoryLayout<sockaddr_un>.size)) }
        }
        guard rc == 0 else {
            let e = Errno.current
            Glibc.close(s)
            throw SocketError(call: "connect", path: path, errno: e)
        }
        return UnixConnection(fd: FileDescriptor(rawValue: s), path: path)
    }

    /// The peer's pid, uid and gid.
    public func peerCredentials() -> PeerCredentials? {
        var pid: Int32 = 0
        var uid: UInt32 = 0
        var gid: UInt32 = 0
        guard coperando_peer_credentials(fd.rawValue, &pid, &uid, &gid) == 0 else { return nil }
        return PeerCredentials(pid: pid, uid: uid, gid: gid)
    }

    /// Sends all bytes. Never raises SIGPIPE (MSG_NOSIGNAL); a closed peer throws EPIPE.
    public func send(_ bytes: [UInt8]) throws {
        var offset = 0
        while offset < bytes.count {
            let n = try bytes.withUnsafeBytes { b in
                try retryingOnInterrupt { Glibc.send(fd.rawValue, b.baseAddress! + offset, b.count - offset, Int32(MSG_NOSIGNAL)) }
            }
            offset += n
        }
    }

    /// Receives what is available (waiting up to `timeout`). Returns nil on timeout, [] at end of stream.
    public func receive(max: Int = 65536, timeout: Duration?) throws -> [UInt8]? {
        if let timeout, try !fd.pollReadable(timeoutMilliseconds: timeout.pollMilliseconds) { return nil }
        var buf = [UInt8](repeating: 0, count: max)
        let n = try buf.withUnsafeMutableBytes { b in
            try retryingOnInterrupt { Glibc.recv(fd.rawValue, b.baseAddress, b.count, 0) }
        }
        return Array(buf[0..<n])
    }

    /// Half-closes the sending side so the peer sees end of stream.
    public func shutdownWrite() { Glibc.shutdown(fd.rawValue, Int32(SHUT_WR)) }
}

/// A listening Unix stream socket: bound at `path` with `mode`, replacing a stale socket file.
public final class UnixListener: @unchecked Sendable {
    public let path: String
    public let fd: FileDescriptor

    public init(path: String, mode: mode_t = 0o660, backlog: Int32 = 16) throws {
        self.path = path
        guard path.utf8.count < MemoryLayout.size(ofValue: sockaddr_un().sun_path) else {
            throw SocketError(call: "bind", path: path, errno: Errno(rawValue: ENAMETOOLONG))
        }
        // A socket file left by a daemon that crashed: remove it only if nobody answers on it.
        if FileSystem.exists(path) {
            if (try? UnixConnection.connect(to: path)) != nil {
                throw SocketError(call: "bind", path: path, errno: Errno(rawValue: EADDRINUSE))
            }
            unlink(path)
        }
        let s = socket(AF_UNIX, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        guard s >= 0 else { throw SocketError(call: "socket", path: path, errno: .current) }
        fd = FileDescriptor(rawValue: s)
        var addr = try Self.address(path)
        // Create the socket file with the final mode: no window where it is world-writable.
        let oldMask = umask(~mode & 0o777)
        let rc = withUnsafePointer(to: &addr) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(s, $0, socklen_t(MemoryLayout<sockaddr_un>.size)) }
        }
        umask(oldMask)
        guard rc == 0 else {
            let e = Errno.current
            fd.close()
            throw SocketError(call: "bind", path: path, errno: e)
        }
        chmod(path, mode)
        guard listen(s, backlog) == 0 else {
            let e = Errno.current
            fd.close()
            throw SocketError(call: "listen", path: path, errno: e)
        }
    }

    /// Waits up to `timeout` for a connection. Nil on timeout.
    public func accept(timeout: Duration) throws -> UnixConnection? {
        guard try fd.pollReadable(timeoutMilliseconds: timeout.pollMilliseconds) else { return nil }
        let c = Glibc.accept(fd.rawValue, nil, nil)
        if c < 0 {
            let e = Errno.current
            if e == .interrupted || e == .wouldBlock || e.rawValue == ECONNABORTED { return nil }
            throw SocketError(call: "accept", path: path, errno: e)
        }
        _ = fcntl(c, F_SETFD, FD_CLOEXEC)
        return UnixConnection(fd: FileDescriptor(rawValue: c), path: path)
    }

    /// Closes the socket and removes its file.
    public func close() {
        fd.close()
        unlink(path)
    }

    static func address(_ path: String) throws -> sockaddr_un {
        var addr = sockaddr_un()
        addr.sun_family = sa_family_t(AF_UNIX)
        let bytes = Array(path.utf8)
        guard bytes.count < MemoryLayout.size(ofValue: addr.sun_path) else {
            throw SocketError(call: "connect", path: path, errno: Errno(rawValue: ENAMETOOLONG))
        }
        withUnsafeMutableBytes(of: &addr.sun_path) { raw in
            for (i, b) in bytes.enumerated() { raw[i] = b }
            raw[bytes.count] = 0
        }
        return addr
    }
}

/// A message socket (AF_UNIX SOCK_SEQPACKET) as a packet transport: each message is one packet.
/// The umockdev harness serves an emulated USB device's bulk endpoints to a simulator this way
/// (one message per bulk OUT transfer one way, per bulk IN transfer the other).
public final class SeqPacketTransport: PacketTransport, @unchecked Sendable {
    public let fd: FileDescriptor
    private let clock: any HostClock

    /// Takes over `fd` (an inherited socket descriptor); closed by `close()`.
    public init(fd: FileDescriptor, clock: any HostClock) {
        self.fd = fd
        self.clock = clock
    }

    public var endpoint: String { "seqpacket fd \(fd.rawValue)" }
    public func open() throws {}
    public func close() { fd.close() }

    public func receive(into buffer: UnsafeMutableRawBufferPointer, timeout: Duration) throws -> TransportRead {
        let ms = Int32(clamping: timeout.nanoseconds / 1_000_000)
        guard try fd.pollReadable(timeoutMilliseconds: ms) else { return TransportRead(count: 0, hostTime: clock.now()) }
        let n = try retryingOnInterrupt { Glibc.recv(fd.rawValue, buffer.baseAddress, buffer.count, Int32(MSG_TRUNC)) }
        let now = clock.now()
        guard n > 0 else { throw InstrumentError(.disconnected, device: endpoint, "the peer closed the socket") }
        guard n <= buffer.count else {
            throw InstrumentError(.protocolViolation, device: endpoint, "a \(n)-byte message does not fit the \(buffer.count)-byte buffer")
        }
        return TransportRead(count: n, hostTime: now)
    }

    public func send(_ bytes: UnsafeRawBufferPointer, timeout: Duration) throws {
        let n = try retryingOnInterrupt { Glibc.send(fd.rawValue, bytes.baseAddress, bytes.count, Int32(MSG_NOSIGNAL)) }
        guard n == bytes.count else { throw InstrumentError(.transportFailed, device: endpoint, "sent \(n) of \(bytes.count) bytes") }
    }
}
