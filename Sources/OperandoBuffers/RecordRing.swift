import OperandoCore
import Synchronization

/// A bounded, preallocated, lock-free single-producer/single-consumer ring of records.
///
/// Records are stored in `RecordLayout` form (8-byte prefix, 32-byte header, payload, padding to 8),
/// so the consumer can hand claimed bytes to `writev` without copying. A record may wrap around the
/// end of the storage; `Region` exposes the two parts.
///
/// Positions are byte counters that only grow (`position % capacity` is the offset). The consumer
/// claims whole records before reading them by setting `claimedBit` in `tail`; while a claim is
/// held the producer may not move `tail`, so the drop-oldest policy never discards bytes the writer
/// is reading. Without drop-oldest the producer never writes `tail`.
public final class RecordRing: @unchecked Sendable {
    /// Bytes of storage, a multiple of 8.
    public let capacity: Int
    @usableFromInline let storage: UnsafeMutableRawPointer

    /// Bytes ever published by the producer. Written by the producer only (release), so the
    /// consumer's acquire load sees every byte before it.
    @usableFromInline let head = Atomic<UInt64>(0)
    /// Bytes ever released, with `claimedBit` set while the consumer holds a claim. Written by the
    /// consumer (claim, release) and, for drop-oldest only, by the producer through compare-exchange
    /// on an unclaimed value; acquire/release so the producer never overwrites bytes still being read.
    @usableFromInline let tail = Atomic<UInt64>(0)
    public static let claimedBit: UInt64 = 1 << 63

    #if DEBUG
    /// Debug-build check of the single-producer and single-consumer contracts.
    private let producerBusy = Atomic<Bool>(false)
    private let consumerBusy = Atomic<Bool>(false)
    #endif

    /// Allocates and touches `capacity` bytes (rounded up to a multiple of 8, at least 64), so the
    /// memory is resident before the first record arrives.
    public init(capacity requested: Int) {
        let cap = max(64, (requested + 7) & ~7)
        capacity = cap
        storage = UnsafeMutableRawPointer.allocate(byteCount: cap, alignment: 64)
        storage.initializeMemory(as: UInt8.self, repeating: 0, count: cap)
    }

    deinit { storage.deallocate() }

    /// Bytes currently held (published and not released), for fill reporting.
    public var usedBytes: Int {
        let h = head.load(ordering: .acquiring)
        let t = tail.load(ordering: .acquiring) & ~Self.claimedBit
        return Int(h &- t)
    }

    /// The largest payload a single record can carry in this ring.
    public var maxPayloadBytes: Int { capacity - RecordLayout.prefixSize - RecordLayout.headerSize }

    // MARK: Producer

    /// Appends one record if it fits. Producer thread only. Never blocks, allocates or locks.
    /// - Returns: false when the ring has no room (or the record can never fit).
    /// A checksum function over (bytes, checksum so far), for records the producer checksums itself.
    public typealias Checksum = (UnsafeRawBufferPointer, UInt32) -> UInt32

    /// Appends one record if it fits. Producer thread only. Never blocks, allocates or locks.
    /// With `checksum`, the record's CRC is computed here, over the bytes just copied (still in
    /// this core's cache), before the record is published, and `RecordLayout.producerChecksummed`
    /// is set in its flags so the writer does not compute it again.
    /// - Returns: false when the ring has no room (or the record can never fit).
    @inlinable
    public func tryWrite(header: RecordHeader, payload: UnsafeRawBufferPointer, checksum: Checksum? = nil) -> Bool {
        let size = RecordLayout.recordSize(payloadBytes: payload.count)
        guard size <= capacity else { return false }
        let h = head.load(ordering: .relaxed)
        let t = tail.load(ordering: .acquiring) & ~Self.claimedBit
        guard Int(h &- t) + size <= capacity else { return false }
        let offset = Int(h % UInt64(capacity))
        let bodyLength = RecordLayout.headerSize + payload.count
        if offset + size <= capacity {
            // Fast path: the record is contiguous; store prefix and header in place.
            let base = storage + offset
            base.storeBytes(of: UInt32(bodyLength).littleEndian, as: UInt32.self)
            base.storeBytes(of: UInt32(0), toByteOffset: 4, as: UInt32.self)
            header.store(to: base + RecordLayout.prefixSize)
            if payload.count > 0 {
                (base + RecordLayout.prefixSize + RecordLayout.headerSize).copyMemory(from: payload.baseAddress!, byteCount: payload.count)
            }
            if let checksum {
                let body = base + RecordLayout.prefixSize
                body.storeBytes(of: RecordLayout.producerChecksummed, toByteOffset: 1, as: UInt8.self)
                let crc = checksum(UnsafeRawBufferPointer(start: body, count: bodyLength), 0)
                base.storeBytes(of: crc.littleEndian, toByteOffset: 4, as: UInt32.self)
            }
        } else {
            write(header: header, payload: payload, at: h, size: size)
            if let checksum {
                let (p1, p2) = span(from: h &+ UInt64(RecordLayout.prefixSize), count: bodyLength)
                if p1.count > 1 { p1[1] = RecordLayout.producerChecksummed } else { p2[1 - p1.count] = RecordLayout.producerChecksummed }
                let crc = checksum(UnsafeRawBufferPointer(p2), checksum(UnsafeRawBufferPointer(p1), 0))
                (storage + offset).storeBytes(of: crc.littleEndian, toByteOffset: 4, as: UInt32.self)
            }
        }
        head.store(h &+ UInt64(size), ordering: .releasing)
        return true
    }

    /// Discards the oldest record to make room, unless the consumer holds a claim. Producer only.
    /// - Returns: the number of records discarded (0 or 1).
    public func dropOldest() -> Int {
        let t = tail.load(ordering: .acquiring)
        guard t & Self.claimedBit == 0 else { return 0 }
        let h = head.load(ordering: .relaxed)
        guard h != t else { return 0 }
        let size = recordSize(at: t)
        let (exchanged, _) = tail.compareExchange(
            expected: t, desired: t &+ UInt64(size), successOrdering: .acquiringAndReleasing,
            failureOrdering: .acquiring)
        return exchanged ? 1 : 0
    }

    @usableFromInline
    func write(header: RecordHeader, payload: UnsafeRawBufferPointer, at position: UInt64, size: Int) {
        let bodyLength = UInt32(RecordLayout.headerSize + payload.count)
        var prefixAndHeader: (UInt64, UInt64, UInt64, UInt64, UInt64) = (0, 0, 0, 0, 0)
        withUnsafeMutableBytes(of: &prefixAndHeader) { buf in
            buf.baseAddress!.storeBytes(of: bodyLength.littleEndian, as: UInt32.self)
            header.store(to: buf.baseAddress! + RecordLayout.prefixSize)
            copyIn(at: position, from: UnsafeRawBufferPointer(buf))
        }
        if payload.count > 0 {
            copyIn(at: position &+ 40, from: payload)
        }
    }

    @usableFromInline
    func copyIn(at position: UInt64, from source: UnsafeRawBufferPointer) {
        let offset = Int(position % UInt64(capacity))
        let first = min(source.count, capacity - offset)
        (storage + offset).copyMemory(from: source.baseAddress!, byteCount: first)
        if first < source.count {
            storage.copyMemory(from: source.baseAddress! + first, byteCount: source.count - first)
        }
    }

    @usableFromInline
    func recordSize(at position: UInt64) -> Int {
        let offset = Int(position % UInt64(capacity))
        let bodyLength = UInt32(littleEndian: storage.load(fromByteOffset: offset, as: UInt32.self))
        return RecordLayout.recordSize(payloadBytes: Int(bodyLength) - RecordLayout.headerSize)
    }

    // MARK: Consumer

    /// A claimed run of whole records, `[start, end)` in ring positions.
    public struct Claim: Sendable {
        public let start: UInt64
        public let end: UInt64
        public let records: Int
        public var bytes: Int { Int(end - start) }
    }

    /// Claims whole records from the oldest, up to `maxBytes` (but always at least one record).
    /// Consumer thread only. Returns nil when the ring is empty.
    public func claim(maxBytes: Int) -> Claim? {
        #if DEBUG
        precondition(!consumerBusy.exchange(true, ordering: .acquiring), "RecordRing: two consumers at once")
        defer { consumerBusy.store(false, ordering: .releasing) }
        #endif
        while true {
            let t = tail.load(ordering: .acquiring)
            precondition(t & Self.claimedBit == 0, "RecordRing.claim while a claim is held")
            if head.load(ordering: .acquiring) == t { return nil }
            let (exchanged, _) = tail.compareExchange(
                expected: t, desired: t | Self.claimedBit, successOrdering: .acquiringAndReleasing,
                failureOrdering: .acquiring)
            guard exchanged else { continue }  // the producer dropped the oldest record meanwhile
            let h = head.load(ordering: .acquiring)
            var end = t
            var count = 0
            var offset = Int(t % UInt64(capacity))
            while end != h {
                let bodyLength = Int(UInt32(littleEndian: storage.load(fromByteOffset: offset, as: UInt32.self)))
                let size = RecordLayout.recordSize(payloadBytes: bodyLength - RecordLayout.headerSize)
                if count > 0 && Int(end &- t) + size > maxBytes { break }
                end &+= UInt64(size)
                count += 1
                offset += size
                if offset >= capacity { offset -= capacity }
            }
            return Claim(start: t, end: end, records: count)
        }
    }

    /// Releases a claim: its bytes become free for the producer.
    public func release(_ claim: Claim) {
        tail.store(claim.end, ordering: .releasing)
    }

    /// The claimed bytes as one or two contiguous parts (the second empty unless they wrap).
    public func bytes(of claim: Claim) -> (UnsafeMutableRawBufferPointer, UnsafeMutableRawBufferPointer) {
        span(from: claim.start, count: claim.bytes)
    }

    /// One record inside a claim.
    public struct Record {
        /// The 8-byte prefix; the consumer may store the CRC at offset 4.
        public let prefix: UnsafeMutableRawPointer
        public let header: RecordHeader
        /// The body (header + payload), in one or two parts.
        public let body: (UnsafeRawBufferPointer, UnsafeRawBufferPointer)
        /// The whole record (prefix, body, padding), in one or two parts.
        public let whole: (UnsafeRawBufferPointer, UnsafeRawBufferPointer)

        /// Whether the producer already stored this record's CRC in its prefix.
        public var isProducerChecksummed: Bool {
            let flags = body.0.count > 1 ? body.0[1] : body.1[1 - body.0.count]
            return flags & RecordLayout.producerChecksummed != 0
        }

        /// The payload copied out (tests and slow paths only).
        public var payloadBytes: [UInt8] { Array((Array(body.0) + Array(body.1)).dropFirst(RecordLayout.headerSize)) }
    }

    /// Calls `body` for each record of a claim, in order.
    public func forEachRecord(in claim: Claim, _ body: (Record) -> Void) {
        var position = claim.start
        var offset = Int(position % UInt64(capacity))
        while position != claim.end {
            let prefix = storage + offset
            let bodyLength = Int(UInt32(littleEndian: prefix.load(as: UInt32.self)))
            let size = RecordLayout.recordSize(payloadBytes: bodyLength - RecordLayout.headerSize)
            if offset + size <= capacity {
                // Fast path: contiguous record.
                let bodyStart = prefix + RecordLayout.prefixSize
                body(Record(
                    prefix: prefix, header: RecordHeader.load(from: bodyStart)!,
                    body: (UnsafeRawBufferPointer(start: bodyStart, count: bodyLength), UnsafeRawBufferPointer(start: storage, count: 0)),
                    whole: (UnsafeRawBufferPointer(start: prefix, count: size), UnsafeRawBufferPointer(start: storage, count: 0))))
            } else {
                let (p1, p2) = span(from: position &+ UInt64(RecordLayout.prefixSize), count: bodyLength)
                let (w1, w2) = span(from: position, count: size)
                body(Record(
                    prefix: prefix, header: Self.header(p1, p2),
                    body: (UnsafeRawBufferPointer(p1), UnsafeRawBufferPointer(p2)),
                    whole: (UnsafeRawBufferPointer(w1), UnsafeRawBufferPointer(w2))))
            }
            position &+= UInt64(size)
            offset += size
            if offset >= capacity { offset -= capacity }
        }
    }

    private static func header(_ p1: UnsafeMutableRawBufferPointer, _ p2: UnsafeMutableRawBufferPointer) -> RecordHeader {
        if p1.count >= RecordLayout.headerSize {
            return RecordHeader.load(from: p1.baseAddress!)!
        }
        var tmp: (UInt64, UInt64, UInt64, UInt64) = (0, 0, 0, 0)
        return withUnsafeMutableBytes(of: &tmp) { buf in
            buf.baseAddress!.copyMemory(from: p1.baseAddress!, byteCount: p1.count)
            (buf.baseAddress! + p1.count).copyMemory(from: p2.baseAddress!, byteCount: RecordLayout.headerSize - p1.count)
            return RecordHeader.load(from: buf.baseAddress!)!
        }
    }

    @usableFromInline
    func span(from position: UInt64, count: Int) -> (UnsafeMutableRawBufferPointer, UnsafeMutableRawBufferPointer) {
        let offset = Int(position % UInt64(capacity))
        let first = min(count, capacity - offset)
        return (
            UnsafeMutableRawBufferPointer(start: storage + offset, count: first),
            UnsafeMutableRawBufferPointer(start: storage, count: count - first)
        )
    }
}
