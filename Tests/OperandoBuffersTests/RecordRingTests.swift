import OperandoCore
import XCTest

@testable import OperandoBuffers

final class RecordRingTests: XCTestCase {
    /// Writes `payloadSize` bytes whose values encode the sequence number, so any corruption shows.
    private func payload(_ seq: UInt64, size: Int) -> [UInt8] {
        (0..<size).map { UInt8(truncatingIfNeeded: Int(seq) &* 31 &+ $0) }
    }

    private func joinedPayloads(_ ring: RecordRing, maxBytes: Int = .max) -> [(RecordHeader, [UInt8])] {
        var out: [(RecordHeader, [UInt8])] = []
        while let claim = ring.claim(maxBytes: maxBytes) {
            ring.forEachRecord(in: claim) { out.append(($0.header, $0.payloadBytes)) }
            ring.release(claim)
        }
        return out
    }

    /// Every capacity × start offset × record count × payload size: records come out intact and in
    /// order whether they wrap in the prefix-free body, in the header, in the payload, or not at all.
    func testWriteThenRead_overEveryCapacityStartAndCountLayout_returnsRecordsIntact() {
        for capacity in stride(from: 64, through: 256, by: 8) {
            for start in stride(from: 0, to: capacity, by: 8) {
                for size in [0, 1, 7, 8, 13, 24, 40] {
                    let recordSize = RecordLayout.recordSize(payloadBytes: size)
                    guard recordSize <= capacity else { continue }
                    let ring = RecordRing(capacity: capacity)
                    // Move the ring's positions to `start` with a filler record of exactly that size.
                    if start >= 40 {
                        let filler = [UInt8](repeating: 0xEE, count: start - 40)
                        let ok = filler.withUnsafeBytes {
                            ring.tryWrite(header: RecordHeader(kind: .data, streamID: 9, sequence: 0, hostTime: .init(nanoseconds: 0), deviceTime: nil), payload: $0)
                        }
                        XCTAssertTrue(ok)
                        XCTAssertEqual(joinedPayloads(ring).count, 1)
                    } else if start > 0 {
                        continue  // positions below one header are reached through the larger starts
                    }
                    let fits = capacity / recordSize
                    for count in 1...max(1, fits) {
                        var written: [UInt64] = []
                        for i in 0..<count {
                            let seq = UInt64(i + 1)
                            let bytes = payload(seq, size: size)
                            let ok = bytes.withUnsafeBytes {
                                ring.tryWrite(header: RecordHeader(kind: .data, streamID: 1, sequence: seq, hostTime: .init(nanoseconds: Int64(seq) * 10), deviceTime: i % 2 == 0 ? nil : Int64(i)), payload: $0)
                            }
                            XCTAssertTrue(ok, "cap \(capacity) start \(start) size \(size) count \(count) i \(i)")
                            written.append(seq)
                        }
                        // One more than fits must be refused when the ring is exactly full.
                        if count == fits {
                            let extra = payload(99, size: size).withUnsafeBytes {
                                ring.tryWrite(header: RecordHeader(kind: .data, streamID: 1, sequence: 99, hostTime: .init(nanoseconds: 0), deviceTime: nil), payload: $0)
                            }
                            XCTAssertFalse(extra)
                        }
                        let read = joinedPayloads(ring, maxBytes: recordSize * 2)
                        XCTAssertEqual(read.map(\.0.sequence), written, "cap \(capacity) start \(start) size \(size) count \(count)")
                        for (header, bytes) in read {
                            XCTAssertEqual(bytes, payload(header.sequence, size: size))
                            XCTAssertEqual(header.hostTime.nanoseconds, Int64(header.sequence) * 10)
                            XCTAssertEqual(header.streamID, 1)
                        }
                        XCTAssertEqual(ring.usedBytes, 0)
                    }
                }
            }
        }
    }

    func testTryWrite_whenRecordLargerThanRing_refuses() {
        let ring = RecordRing(capacity: 64)
        let big = [UInt8](repeating: 1, count: 100)
        let ok = big.withUnsafeBytes {
            ring.tryWrite(header: RecordHeader(kind: .data, streamID: 0, sequence: 0, hostTime: .init(nanoseconds: 0), deviceTime: nil), payload: $0)
        }
        XCTAssertFalse(ok)
        XCTAssertNil(ring.claim(maxBytes: 1000))
    }

    func testClaim_respectsMaxBytesButAlwaysTakesOneRecord() {
        let ring = RecordRing(capacity: 1024)
        for i in 0..<5 {
            _ = [UInt8](repeating: 0, count: 24).withUnsafeBytes {
                ring.tryWrite(header: RecordHeader(kind: .data, streamID: 0, sequence: UInt64(i), hostTime: .init(nanoseconds: 0), deviceTime: nil), payload: $0)
            }
        }
        let one = ring.claim(maxBytes: 1)!
        XCTAssertEqual(one.records, 1)
        ring.release(one)
        let two = ring.claim(maxBytes: 2 * 64)!
        XCTAssertEqual(two.records, 2)
        ring.release(two)
        XCTAssertEqual(ring.claim(maxBytes: .max)!.records, 2)
    }

    func testDropOldest_whileWriterHoldsClaim_refusesToDiscardClaimedRecords() {
        let ring = RecordRing(capacity: 128)  // two 64-byte records
        for i in 0..<2 {
            _ = [UInt8](repeating: UInt8(i), count: 24).withUnsafeBytes {
                ring.tryWrite(header: RecordHeader(kind: .data, streamID: 0, sequence: UInt64(i), hostTime: .init(nanoseconds: 0), deviceTime: nil), payload: $0)
            }
        }
        let claim = ring.claim(maxBytes: .max)!
        XCTAssertEqual(ring.dropOldest(), 0, "claimed bytes must never be discarded")
        ring.release(claim)
        XCTAssertEqual(ring.dropOldest(), 0, "empty ring has nothing to drop")
    }
}
