/// A bidirectional byte stream to a device: a serial port, a TCP connection, a pseudo-terminal
/// or an in-memory link to a simulator.
///
/// A transport is used by one thread at a time (its device's I/O thread); implementations are
/// `@unchecked Sendable` under that contract. Reads block for at most `timeout` and report the
/// host time at which the read returned, which is the arrival time of those bytes.
public protocol ByteStreamTransport: AnyObject, Sendable {
    /// Where this transport goes, for messages: "/dev/ttyUSB0", "127.0.0.1:6501", "simulated".
    var endpoint: String { get }
    /// Opens (or reopens after a disconnect). Throws `InstrumentError(.notFound)` when absent.
    func open() throws
    func close()
    /// Reads available bytes (at most `buffer.count`). Returns 0 bytes on timeout.
    /// Throws `InstrumentError(.disconnected)` when the device has gone.
    func read(into buffer: UnsafeMutableRawBufferPointer, timeout: Duration) throws -> TransportRead
    /// Writes all of `bytes` or throws.
    func write(_ bytes: UnsafeRawBufferPointer, timeout: Duration) throws
    /// What opening the transport did that belongs in the record (see the extension's default).
    var openNotes: [String] { get }
}

/// A packet (message, bulk transfer) transport: USB bulk endpoints, datagrams, or an in-memory
/// link. Each receive returns exactly one packet.
public protocol PacketTransport: AnyObject, Sendable {
    var endpoint: String { get }
    func open() throws
    func close()
    /// Receives one packet into `buffer`. Returns 0 bytes on timeout. A packet longer than the
    /// buffer throws `InstrumentError(.protocolViolation)`.
    func receive(into buffer: UnsafeMutableRawBufferPointer, timeout: Duration) throws -> TransportRead
    func send(_ bytes: UnsafeRawBufferPointer, timeout: Duration) throws
    /// What opening the transport did that belongs in the record. Empty by default.
    var openNotes: [String] { get }
}

extension PacketTransport {
    public var openNotes: [String] { [] }
}

/// The result of a read: how many bytes, and the host time when the read returned.
public struct TransportRead: Sendable {
    public var count: Int
    public var hostTime: HostInstant
    public init(count: Int, hostTime: HostInstant) {
        self.count = count
        self.hostTime = hostTime
    }
}

extension ByteStreamTransport {
    /// What opening the transport did that belongs in the record (e.g. "FTDI latency timer set to
    /// 1 ms"). Empty by default.
    public var openNotes: [String] { [] }

    public func write(_ string: String, timeout: Duration) throws {
        var s = string
        try s.withUTF8 { try write(UnsafeRawBufferPointer($0), timeout: timeout) }
    }
}

/// A transport of either kind, as handed to a driver.
public enum DeviceLink: Sendable {
    case byteStream(any ByteStreamTransport)
    case packets(any PacketTransport)

    public var endpoint: String {
        switch self {
        case .byteStream(let t): t.endpoint
        case .packets(let t): t.endpoint
        }
    }

    public func open() throws {
        switch self {
        case .byteStream(let t): try t.open()
        case .packets(let t): try t.open()
        }
    }

    public func close() {
        switch self {
        case .byteStream(let t): t.close()
        case .packets(let t): t.close()
        }
    }

    public var openNotes: [String] {
        switch self {
        case .byteStream(let t): t.openNotes
        case .packets(let t): t.openNotes
        }
    }
}

/// Which kind of link a driver needs.
public enum LinkKind: String, Sendable, Codable {
    case byteStream = "byte-stream"
    case packets
}

/// A serial port's output control lines, usable as trigger outputs.
public enum ModemLine: String, Sendable, CaseIterable, CustomStringConvertible {
    case dtr, rts
    public var description: String { rawValue.uppercased() }
}

/// A transport whose modem control lines the host drives (a serial port). Each change is an
/// edge another instrument can trigger on. "Asserted" is the line's active state: +V on an
/// RS-232 connector, but LOW on the DTR#/RTS# pins of TTL-level USB cables (FTDI and alike),
/// which are active-low.
public protocol ModemLineControl: AnyObject {
    /// Asserts or releases `line`; returns when the driver has changed it. Throws when the port
    /// has no such line (a pseudo-terminal) or is closed.
    func setModemLine(_ line: ModemLine, asserted: Bool) throws
}
