import OperandoCore
import Synchronization

/// One stream's path from its producer (a device I/O thread) to the writer: a ring, the stream's
/// overflow policy, its sequence numbers and its counters.
///
/// `push` is the hot path: no allocation, no lock, no logging. Sequence numbers are consumed by
/// every record offered, dropped or not, so a gap in the sequence on disk is exactly a drop.
public final class StreamChannel: @unchecked Sendable {
    public let descriptor: StreamDescriptor
    public let ring: RecordRing
    public let policy: OverflowPolicy
    /// Called while a `block` producer waits for room (a short sleep in production).
    private let backoff: @Sendable () -> Void
    /// CRC function for records of at least `producerChecksumBytes` of payload: the producer
    /// checksums those while the bytes are in its cache, so the writer only writes them.
    private let checksum: (@Sendable (UnsafeRawBufferPointer, UInt32) -> UInt32)?
    /// Payload size from which the producer checksums (smaller records are the writer's, so the
    /// hot path of small samples stays a copy).
    public static let producerChecksumBytes = 64 * 1024

    /// Records offered by the producer (= the next sequence number). Producer writes, anyone reads:
    /// relaxed is enough because readers only report it.
    private let offered = Atomic<UInt64>(0)
    /// Records discarded by the overflow policy or because the channel was closed. Relaxed, as above.
    private let droppedCount = Atomic<UInt64>(0)
    /// Back-off waits of a `block` producer for room: a sign the writer (the disk) is not keeping up.
    private let blockedWaits = Atomic<UInt64>(0)
    /// Set when the channel will never be drained again; a blocked producer then drops instead of waiting.
    private let closedFlag = Atomic<Bool>(false)

    #if DEBUG
    private let producerBusy = Atomic<Bool>(false)
    #endif

    public init(
        descriptor: StreamDescriptor, ringBytes: Int, policy: OverflowPolicy, backoff: @escaping @Sendable () -> Void,
        checksum: (@Sendable (UnsafeRawBufferPointer, UInt32) -> UInt32)? = nil
    ) {
        self.descriptor = descriptor
        self.ring = RecordRing(capacity: ringBytes)
        self.policy = policy
        self.backoff = backoff
        self.checksum = checksum
    }

    public var produced: UInt64 { offered.load(ordering: .relaxed) }
    public var dropped: UInt64 { droppedCount.load(ordering: .relaxed) }
    public var blockedWaitCount: UInt64 { blockedWaits.load(ordering: .relaxed) }
    public var fill: Double { Double(ring.usedBytes) / Double(ring.capacity) }

    /// Stops waiting producers; later pushes are counted as dropped.
    public func close() { closedFlag.store(true, ordering: .releasing) }
    public var isClosed: Bool { closedFlag.load(ordering: .acquiring) }

    /// Offers one record. Producer thread only.
    /// - Returns: the sequence number given to the record, and whether it was stored.
    @discardableResult
    public func push(
        kind: RecordKind = .data, hostTime: HostInstant, deviceTime: Int64?, payload: UnsafeRawBufferPointer
    ) -> (sequence: UInt64, stored: Bool) {
        #if DEBUG
        precondition(!producerBusy.exchange(true, ordering: .acquiring), "StreamChannel \(descriptor.name): two producers at once")
        defer { producerBusy.store(false, ordering: .releasing) }
        #endif
        let seq = offered.load(ordering: .relaxed)
        offered.store(seq &+ 1, ordering: .relaxed)
        let header = RecordHeader(kind: kind, streamID: descriptor.id, sequence: seq, hostTime: hostTime, deviceTime: deviceTime)
        let sum = payload.count >= Self.producerChecksumBytes ? checksum : nil
        if ring.tryWrite(header: header, payload: payload, checksum: sum) { return (seq, true) }
        if RecordLayout.recordSize(payloadBytes: payload.count) > ring.capacity || isClosed {
            droppedCount.add(1, ordering: .relaxed)
            return (seq, false)
        }
        switch policy {
        case .dropNewest:
            droppedCount.add(1, ordering: .relaxed)
            return (seq, false)
        case .dropOldest:
            while true {
                let n = ring.dropOldest()
                if n == 0 {
                    // The writer holds every older record; the new one goes instead.
                    droppedCount.add(1, ordering: .relaxed)
                    return (seq, false)
                }
                droppedCount.add(UInt64(n), ordering: .relaxed)
                if ring.tryWrite(header: header, payload: payload, checksum: sum) { return (seq, true) }
            }
        case .block:
            while true {
                blockedWaits.add(1, ordering: .relaxed)
                backoff()
                if ring.tryWrite(header: header, payload: payload, checksum: sum) { return (seq, true) }
                if isClosed {
                    droppedCount.add(1, ordering: .relaxed)
                    return (seq, false)
                }
            }
        }
    }
}

/// One global budget for all ring memory, from the configuration.
public final class MemoryBudget: @unchecked Sendable {
    public let limitBytes: Int
    private let used = Mutex<Int>(0)

    public init(limitBytes: Int) { self.limitBytes = limitBytes }

    public var usedBytes: Int { used.withLock { $0 } }

    public struct Exhausted: Error, CustomStringConvertible {
        public var requested: Int
        public var available: Int
        public var limit: Int
        public var description: String {
            "ring memory budget exhausted: \(requested) bytes requested, \(available) of \(limit) left; raise [daemon] memory_budget_mb or lower the devices' ring sizes"
        }
    }

    /// Reserves `bytes`, or throws without reserving anything.
    public func reserve(_ bytes: Int) throws {
        try used.withLock { u in
            guard u + bytes <= limitBytes else {
                throw Exhausted(requested: bytes, available: limitBytes - u, limit: limitBytes)
            }
            u += bytes
        }
    }

    public func release(_ bytes: Int) {
        used.withLock { $0 -= bytes }
    }
}
