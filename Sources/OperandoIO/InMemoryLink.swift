import OperandoCore

/// An in-memory cable between a driver and a simulator, for `transport = "simulated"` and for
/// level-2 tests. Each direction is a bounded byte queue; `unplug()` makes both ends see a
/// disconnect, as pulling a USB cable would.
public final class InMemoryLink: @unchecked Sendable {
    private let lock = ConditionLock()
    private var toDevice = ByteQueue()
    private var toHost = ByteQueue()
    private var packetsToDevice: [[UInt8]] = []
    private var packetsToHost: [[UInt8]] = []
    private var plugged = true
    private let clock: any HostClock
    /// Bytes a direction may hold before the writer waits (like a UART FIFO plus kernel buffer).
    public let queueLimit: Int

    public init(clock: any HostClock, queueLimit: Int = 1 << 20) {
        self.clock = clock
        self.queueLimit = queueLimit
    }

    /// The driver's end, as a byte stream.
    public var hostByteStream: any ByteStreamTransport { End(link: self, isHost: true) }
    /// The simulator's end, as a byte stream.
    public var deviceByteStream: any ByteStreamTransport { End(link: self, isHost: false) }
    /// The driver's end, as packets.
    public var hostPackets: any PacketTransport { End(link: self, isHost: true) }
    /// The simulator's end, as packets.
    public var devicePackets: any PacketTransport { End(link: self, isHost: false) }

    public func unplug() {
        lock.withLock {
            plugged = false
            toDevice = ByteQueue()
            toHost = ByteQueue()
            packetsToDevice.removeAll()
            packetsToHost.removeAll()
        }
        lock.broadcast()
    }

    public func replug() {
        lock.withLock { plugged = true }
        lock.broadcast()
    }

    public var isPlugged: Bool { lock.withLock { plugged } }

    fileprivate func disconnected(_ endpoint: String) -> InstrumentError {
        InstrumentError(.disconnected, device: endpoint, "the simulated link was unplugged; the device runner will reconnect")
    }

    fileprivate func readBytes(isHost: Bool, into buffer: UnsafeMutableRawBufferPointer, timeout: Duration) throws -> TransportRead {
        let n: Int = try lock.withLock {
            _ = lock.wait(until: { !plugged || !(isHost ? toHost.isEmpty : toDevice.isEmpty) }, timeout: timeout)
            guard plugged else { throw disconnected("simulated") }
            return isHost ? toHost.pop(into: buffer) : toDevice.pop(into: buffer)
        }
        if n > 0 { lock.broadcast() }
        return TransportRead(count: n, hostTime: clock.now())
    }

    fileprivate func writeBytes(isHost: Bool, _ bytes: UnsafeRawBufferPointer, timeout: Duration) throws {
        try lock.withLock {
            let roomy = lock.wait(until: { !plugged || (isHost ? toDevice.count : toHost.count) + bytes.count <= queueLimit }, timeout: timeout)
            guard plugged else { throw disconnected("simulated") }
            guard roomy else { throw InstrumentError(.replyTimedOut, device: "simulated", "the other end of the simulated link is not reading") }
            if isHost { toDevice.push(bytes) } else { toHost.push(bytes) }
        }
        lock.broadcast()
    }

    fileprivate func receivePacket(isHost: Bool, into buffer: UnsafeMutableRawBufferPointer, timeout: Duration) throws -> TransportRead {
        let packet: [UInt8]? = try lock.withLock {
            _ = lock.wait(until: { !plugged || !(isHost ? packetsToHost.isEmpty : packetsToDevice.isEmpty) }, timeout: timeout)
            guard plugged else { throw disconnected("simulated") }
            if isHost { return packetsToHost.isEmpty ? nil : packetsToHost.removeFirst() }
            return packetsToDevice.isEmpty ? nil : packetsToDevice.removeFirst()
        }
        guard let packet else { return TransportRead(count: 0, hostTime: clock.now()) }
        lock.broadcast()
        guard packet.count <= buffer.count else {
            throw InstrumentError(.protocolViolation, device: "simulated", "a \(packet.count)-byte packet does not fit the \(buffer.count)-byte receive buffer")
        }
        packet.withUnsafeBytes { buffer.copyMemory(from: $0) }
        return TransportRead(count: packet.count, hostTime: clock.now())
    }

    fileprivate func sendPacket(isHost: Bool, _ bytes: UnsafeRawBufferPointer, timeout: Duration) throws {
        try lock.withLock {
            let queued = { (isHost ? self.packetsToDevice : self.packetsToHost).reduce(0) { $0 + $1.count } }
            let roomy = lock.wait(until: { !plugged || queued() + bytes.count <= queueLimit }, timeout: timeout)
            guard plugged else { throw disconnected("simulated") }
            guard roomy else { throw InstrumentError(.replyTimedOut, device: "simulated", "the other end of the simulated link is not reading") }
            if isHost { packetsToDevice.append(Array(bytes)) } else { packetsToHost.append(Array(bytes)) }
        }
        lock.broadcast()
    }

    /// One end of the cable; it serves as a byte stream or as packets, never both on one link.
    private final class End: ByteStreamTransport, PacketTransport, @unchecked Sendable {
        let link: InMemoryLink
        let isHost: Bool
        var openNotes: [String] { [] }
        init(link: InMemoryLink, isHost: Bool) {
            self.link = link
            self.isHost = isHost
        }
        var endpoint: String { "simulated" }
        func open() throws { guard link.isPlugged else { throw InstrumentError(.notFound, device: endpoint, "the simulated device is unplugged") } }
        func close() {}
        func read(into buffer: UnsafeMutableRawBufferPointer, timeout: Duration) throws -> TransportRead {
            try link.readBytes(isHost: isHost, into: buffer, timeout: timeout)
        }
        func write(_ bytes: UnsafeRawBufferPointer, timeout: Duration) throws {
            try link.writeBytes(isHost: isHost, bytes, timeout: timeout)
        }
        func receive(into buffer: UnsafeMutableRawBufferPointer, timeout: Duration) throws -> TransportRead {
            try link.receivePacket(isHost: isHost, into: buffer, timeout: timeout)
        }
        func send(_ bytes: UnsafeRawBufferPointer, timeout: Duration) throws {
            try link.sendPacket(isHost: isHost, bytes, timeout: timeout)
        }
    }
}

/// A FIFO of bytes with amortised O(1) pops.
private struct ByteQueue {
    private var bytes: [UInt8] = []
    private var start = 0
    var count: Int { bytes.count - start }
    var isEmpty: Bool { count == 0 }

    mutating func push(_ new: UnsafeRawBufferPointer) { bytes.append(contentsOf: new) }

    mutating func pop(into buffer: UnsafeMutableRawBufferPointer) -> Int {
        let n = min(buffer.count, count)
        guard n > 0 else { return 0 }
        bytes.withUnsafeBytes { buffer.copyMemory(from: UnsafeRawBufferPointer(rebasing: $0[start..<start + n])) }
        start += n
        if start == bytes.count {
            bytes.removeAll(keepingCapacity: true)
            start = 0
        } else if start > 1 << 16 && start > bytes.count / 2 {
            bytes.removeFirst(start)
            start = 0
        }
        return n
    }
}
