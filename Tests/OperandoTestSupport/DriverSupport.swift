import OperandoCore
import Synchronization

// Shared by the driver test targets (drivers against their simulators, in memory).

/// A host clock the test moves by hand: time never comes from sleeps.
public final class ManualClock: HostClock {
    private let nanoseconds: Mutex<Int64>

    public init(startSeconds: Double = 5) { nanoseconds = Mutex(Int64((startSeconds * 1e9).rounded())) }

    public func now() -> HostInstant { HostInstant(nanoseconds: nanoseconds.withLock { $0 }) }

    public func advance(seconds: Double) { nanoseconds.withLock { $0 += Int64((seconds * 1e9).rounded()) } }

    public func realtimeAnchor() -> RealtimeAnchor {
        let t = now()
        return RealtimeAnchor(before: t, after: t, utcNanoseconds: t.nanoseconds, taiOffsetSeconds: 0)
    }
}

/// Set once from one thread, read from another.
public final class StopFlag: Sendable {
    private let flag = Atomic<Bool>(false)
    public init() {}
    public func set() { flag.store(true, ordering: .relaxed) }
    public var isSet: Bool { flag.load(ordering: .relaxed) }
}

/// Collects what a driver pushes: raw payloads per stream, events and clock observations.
public final class CollectingSink: RecordSink, @unchecked Sendable {
    public struct Record: Sendable {
        public var stream: Int
        public var hostTime: HostInstant
        public var deviceTime: Int64?
        public var bytes: [UInt8]

        public var uint32s: [UInt32] {
            bytes.withUnsafeBytes { b in (0..<(b.count / 4)).map { UInt32(littleEndian: b.loadUnaligned(fromByteOffset: 4 * $0, as: UInt32.self)) } }
        }

        public var floats: [Float] { uint32s.map { Float(bitPattern: $0) } }

        public var doubles: [Double] {
            bytes.withUnsafeBytes { b in (0..<(b.count / 8)).map { Double(bitPattern: UInt64(littleEndian: b.loadUnaligned(fromByteOffset: 8 * $0, as: UInt64.self))) } }
        }
    }

    /// A bracketed clock query.
    public struct Exchange: Sendable {
        public var hostBefore: HostInstant
        public var deviceTime: Int64
        public var hostAfter: HostInstant
    }

    public let clock: any HostClock
    private struct State: Sendable {
        var records: [Record] = []
        var events: [Event] = []
        var exchanges: [Exchange] = []
        var stamps: [(Int64, HostInstant)] = []
        var roundTrips: [(HostInstant, HostInstant)] = []
    }
    private let state = Mutex(State())

    public init(clock: any HostClock) { self.clock = clock }

    public func push(stream: Int, hostTime: HostInstant, deviceTime: Int64?, payload: UnsafeRawBufferPointer) {
        let r = Record(stream: stream, hostTime: hostTime, deviceTime: deviceTime, bytes: Array(payload))
        state.withLock { $0.records.append(r) }
    }

    public func event(_ event: Event) { state.withLock { $0.events.append(event) } }

    public func clockExchange(hostBefore: HostInstant, deviceTime: Int64, hostAfter: HostInstant) {
        state.withLock { $0.exchanges.append(Exchange(hostBefore: hostBefore, deviceTime: deviceTime, hostAfter: hostAfter)) }
    }

    public func clockStamp(deviceTime: Int64, arrival: HostInstant) { state.withLock { $0.stamps.append((deviceTime, arrival)) } }

    public func roundTrip(sent: HostInstant, received: HostInstant) { state.withLock { $0.roundTrips.append((sent, received)) } }

    public var records: [Record] { state.withLock { $0.records } }
    public func records(_ stream: Int) -> [Record] { records.filter { $0.stream == stream } }
    public var events: [Event] { state.withLock { $0.events } }
    public func events(containing text: String) -> [Event] { events.filter { $0.message.contains(text) } }
    public var exchanges: [Exchange] { state.withLock { $0.exchanges } }
    public var stamps: [(Int64, HostInstant)] { state.withLock { $0.stamps } }
    public var roundTrips: [(HostInstant, HostInstant)] { state.withLock { $0.roundTrips } }
}

/// Delivers at most one byte per read, to prove replies are framed whatever the read boundaries.
public final class OneByteAtATime: ByteStreamTransport, @unchecked Sendable {
    let inner: any ByteStreamTransport
    public init(_ inner: any ByteStreamTransport) { self.inner = inner }
    public var endpoint: String { inner.endpoint }
    public func open() throws { try inner.open() }
    public func close() { inner.close() }
    public func read(into buffer: UnsafeMutableRawBufferPointer, timeout: Duration) throws -> TransportRead {
        try inner.read(into: UnsafeMutableRawBufferPointer(rebasing: buffer[0..<1]), timeout: timeout)
    }
    public func write(_ bytes: UnsafeRawBufferPointer, timeout: Duration) throws { try inner.write(bytes, timeout: timeout) }
}
