#if canImport(Glibc)
import Glibc
#endif
import OperandoCore

/// A TCP connection as a byte stream: connect with a timeout, reads that wait at most their
/// timeout, writes that never raise SIGPIPE. A reset, EOF or refused connection surfaces as
/// `InstrumentError(.disconnected / .notFound)` so the device runner reconnects.
public final class TCPByteStream: ByteStreamTransport, @unchecked Sendable {
    public let host: String
    public let port: UInt16
    public let connectTimeout: Duration
    private let clock: any HostClock
    private var fd: FileDescriptor?

    public init(host: String, port: UInt16, connectTimeout: Duration = .seconds(3), clock: any HostClock) {
        self.host = host
        self.port = port
        self.connectTimeout = connectTimeout
        self.clock = clock
    }

    /// Wraps an accepted connection (the simulator side of `operando-sim --listen`).
    init(accepted: FileDescriptor, peer: String, clock: any HostClock) {
        host = peer
        port = 0
        connectTimeout = .seconds(0)
        self.clock = clock
        fd = accepted
    }

    deinit { fd?.close() }

    public var endpoint: String { "tcp:\(host):\(port)" }

    public func open() throws {
        close()
        var hints = addrinfo()
        hints.ai_family = AF_UNSPEC
        hints.ai_socktype = Int32(SOCK_STREAM.rawValue)
        var list: UnsafeMutablePointer<addrinfo>?
        let rc = getaddrinfo(host, String(port), &hints, &list)
        guard rc == 0, let first = list else {
            throw InstrumentError(.notFound, device: endpoint, "cannot resolve \(host): \(String(cString: gai_strerror(rc)))")
        }
        defer { freeaddrinfo(list) }
        var lastError = Errno(rawValue: ECONNREFUSED)
        var ai: UnsafeMutablePointer<addrinfo>? = first
        while let a = ai {
            ai = a.pointee.ai_next
            let s = socket(a.pointee.ai_family, a.pointee.ai_socktype | Int32(SOCK_CLOEXEC.rawValue) | Int32(SOCK_NONBLOCK.rawValue), a.pointee.ai_protocol)
            guard s >= 0 else { lastError = .current; continue }
            if connect(s, a.pointee.ai_addr, a.pointee.ai_addrlen) != 0 && errno != EINPROGRESS {
                lastError = .current
                Glibc.close(s)
                continue
            }
            var p = pollfd(fd: s, events: Int16(POLLOUT), revents: 0)
            let ready = Glibc.poll(&p, 1, connectTimeout.pollMilliseconds)
            var soError: Int32 = 0
            var len = socklen_t(MemoryLayout<Int32>.size)
            getsockopt(s, SOL_SOCKET, SO_ERROR, &soError, &len)
            if ready <= 0 || soError != 0 {
                lastError = ready <= 0 ? .timedOut : Errno(rawValue: soError)
                Glibc.close(s)
                continue
            }
            var one: Int32 = 1
            setsockopt(s, Int32(IPPROTO_TCP), TCP_NODELAY, &one, socklen_t(MemoryLayout<Int32>.size))
            fd = FileDescriptor(rawValue: s)
            return
        }
        throw InstrumentError(.notFound, device: endpoint, "cannot connect; is the instrument (or operando-sim) listening there?", underlying: lastError)
    }

    public func close() {
        fd?.close()
        fd = nil
    }

    public func read(into buffer: UnsafeMutableRawBufferPointer, timeout: Duration) throws -> TransportRead {
        guard let fd else { throw InstrumentError(.disconnected, device: endpoint, "not connected") }
        let readable: Bool
        do {
            readable = try fd.pollReadable(timeoutMilliseconds: timeout.pollMilliseconds)
        } catch {
            throw InstrumentError(.transportFailed, device: endpoint, "poll failed", underlying: error)
        }
        guard readable else { return TransportRead(count: 0, hostTime: clock.now()) }
        let n = recv(fd.rawValue, buffer.baseAddress, buffer.count, Int32(MSG_DONTWAIT))
        let now = clock.now()
        if n > 0 { return TransportRead(count: n, hostTime: now) }
        if n == 0 { throw InstrumentError(.disconnected, device: endpoint, "the peer closed the connection") }
        let e = Errno.current
        if e == .wouldBlock || e == .interrupted { return TransportRead(count: 0, hostTime: now) }
        throw InstrumentError(.disconnected, device: endpoint, "connection lost", underlying: e)
    }

    public func write(_ bytes: UnsafeRawBufferPointer, timeout: Duration) throws {
        guard let fd else { throw InstrumentError(.disconnected, device: endpoint, "not connected") }
        var offset = 0
        while offset < bytes.count {
            let n = send(fd.rawValue, bytes.baseAddress! + offset, bytes.count - offset, Int32(MSG_NOSIGNAL | MSG_DONTWAIT))
            if n >= 0 {
                offset += n
                continue
            }
            let e = Errno.current
            if e == .interrupted { continue }
            guard e == .wouldBlock else { throw InstrumentError(.disconnected, device: endpoint, "connection lost while writing", underlying: e) }
            var p = pollfd(fd: fd.rawValue, events: Int16(POLLOUT), revents: 0)
            if Glibc.poll(&p, 1, timeout.pollMilliseconds) == 0 {
                throw InstrumentError(.replyTimedOut, device: endpoint, "the peer has not read for \(timeout); it may be hung")
            }
        }
    }
}

/// A listening TCP socket, for serving a simulator (`operando-sim … --listen HOST:PORT`).
public final class TCPListener: @unchecked Sendable {
    public let fd: FileDescriptor
    public let port: UInt16
    private let clock: any HostClock

    /// Binds `host:port` (port 0 picks a free one; see `port`).
    public init(host: String, port: UInt16, clock: any HostClock) throws {
        self.clock = clock
        var addr = sockaddr_in()
        addr.sin_family = sa_family_t(AF_INET)
        addr.sin_port = port.bigEndian
        guard inet_pton(AF_INET, host, &addr.sin_addr) == 1 else {
            throw SocketError(call: "inet_pton", path: host, errno: Errno(rawValue: EINVAL))
        }
        let s = socket(AF_INET, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        guard s >= 0 else { throw SocketError(call: "socket", path: "\(host):\(port)", errno: .current) }
        var one: Int32 = 1
        setsockopt(s, SOL_SOCKET, SO_REUSEADDR, &one, socklen_t(MemoryLayout<Int32>.size))
        let rc = withUnsafePointer(to: &addr) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(s, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) } }
        guard rc == 0, listen(s, 4) == 0 else {
            let e = Errno.current
            Glibc.close(s)
            throw SocketError(call: "bind", path: "\(host):\(port)", errno: e)
        }
        var bound = sockaddr_in()
        var len = socklen_t(MemoryLayout<sockaddr_in>.size)
        _ = withUnsafeMutablePointer(to: &bound) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { getsockname(s, $0, &len) } }
        self.port = UInt16(bigEndian: bound.sin_port)
        fd = FileDescriptor(rawValue: s)
    }

    deinit { fd.close() }

    /// Waits up to `timeout` for one connection.
    public func accept(timeout: Duration) throws -> (any ByteStreamTransport)? {
        guard try fd.pollReadable(timeoutMilliseconds: timeout.pollMilliseconds) else { return nil }
        let c = Glibc.accept(fd.rawValue, nil, nil)
        guard c >= 0 else { return nil }
        _ = fcntl(c, F_SETFD, FD_CLOEXEC)
        var one: Int32 = 1
        setsockopt(c, Int32(IPPROTO_TCP), TCP_NODELAY, &one, socklen_t(MemoryLayout<Int32>.size))
        return TCPByteStream(accepted: FileDescriptor(rawValue: c), peer: "client", clock: clock)
    }
}
