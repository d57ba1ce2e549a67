import OperandoCore
import Synchronization
import Foundation
import XCTest

@testable import OperandoBuffers

final class StreamChannelTests: XCTestCase {
    private func descriptor() -> StreamDescriptor {
        StreamDescriptor(id: 3, name: "d/s", device: "d", kind: .samples, elementType: .uint64, fields: [Field("n", unit: "1")], shape: [1], nominalRateHz: 1, maxPayloadBytes: 8)
    }

    private static func push(_ channel: StreamChannel, _ value: UInt64) -> Bool {
        withUnsafeBytes(of: value) { channel.push(hostTime: .init(nanoseconds: Int64(value)), deviceTime: nil, payload: $0).stored }
    }

    private func values(_ channel: StreamChannel) -> [UInt64] {
        var out: [UInt64] = []
        while let claim = channel.ring.claim(maxBytes: .max) {
            channel.ring.forEachRecord(in: claim) { r in
                out.append(r.payloadBytes.withUnsafeBytes { $0.loadUnaligned(as: UInt64.self) })
            }
            channel.ring.release(claim)
        }
        return out
    }

    func testDropNewest_whenFull_keepsOldestAndCountsDrops() {
        let channel = StreamChannel(descriptor: descriptor(), ringBytes: 48 * 4, policy: .dropNewest, backoff: {})
        for v in 0..<10 { _ = Self.push(channel, UInt64(v)) }
        XCTAssertEqual(values(channel), [0, 1, 2, 3])
        XCTAssertEqual(channel.produced, 10)
        XCTAssertEqual(channel.dropped, 6)
    }

    func testDropOldest_whenFull_keepsNewestAndCountsDrops() {
        let channel = StreamChannel(descriptor: descriptor(), ringBytes: 48 * 4, policy: .dropOldest, backoff: {})
        for v in 0..<10 { _ = Self.push(channel, UInt64(v)) }
        XCTAssertEqual(values(channel), [6, 7, 8, 9])
        XCTAssertEqual(channel.dropped, 6)
    }

    func testBlock_whenClosedWhileWaiting_dropsInsteadOfHanging() {
        let channel = StreamChannel(descriptor: descriptor(), ringBytes: 48, policy: .block, backoff: {})
        XCTAssertTrue(Self.push(channel, 1))
        channel.close()
        XCTAssertFalse(Self.push(channel, 2))
        XCTAssertEqual(channel.dropped, 1)
    }

    /// A blocked producer waits until the consumer frees room; each wait is counted for `status`.
    func testBlock_whenFull_waitsForTheConsumerAndCountsTheWaits() {
        final class Consumer: @unchecked Sendable { var channel: StreamChannel? }
        let consumer = Consumer()
        let channel = StreamChannel(descriptor: descriptor(), ringBytes: 48 * 2, policy: .block, backoff: {
            // Stands in for the writer: frees one record per wait.
            if let ring = consumer.channel?.ring, let claim = ring.claim(maxBytes: 1) { ring.release(claim) }
        })
        consumer.channel = channel
        for v in 0..<5 { XCTAssertTrue(Self.push(channel, UInt64(v))) }
        XCTAssertEqual(channel.dropped, 0)
        XCTAssertEqual(channel.blockedWaitCount, 3)
        XCTAssertEqual(values(channel), [3, 4])
    }

    /// One producer thread and one consumer thread, tiny ring, every policy: nothing is corrupted,
    /// sequences only increase, and stored + dropped == produced.
    func testTwoThreads_underEveryPolicy_accountForEveryRecord() throws {
        for policy in OverflowPolicy.allCases {
            let total: UInt64 = 200_000
            let channel = StreamChannel(descriptor: descriptor(), ringBytes: 48 * 7 + 8, policy: policy, backoff: { sched_yield() })
            let producerDone = Atomic<Bool>(false)
            let producer = Thread {
                for v in 0..<total { _ = Self.push(channel, v) }
                producerDone.store(true, ordering: .releasing)
            }
            producer.start()
            var received: UInt64 = 0
            var lastSeq: Int64 = -1
            var corrupt = 0
            while true {
                let finished = producerDone.load(ordering: .acquiring)
                guard let claim = channel.ring.claim(maxBytes: 48 * 3) else {
                    if finished { break }
                    continue
                }
                channel.ring.forEachRecord(in: claim) { r in
                    let header = r.header
                    let value = r.payloadBytes.withUnsafeBytes { $0.loadUnaligned(as: UInt64.self) }
                    if value != header.sequence || Int64(header.sequence) <= lastSeq { corrupt += 1 }
                    lastSeq = Int64(header.sequence)
                    received += 1
                }
                channel.ring.release(claim)
            }
            XCTAssertEqual(corrupt, 0, "\(policy)")
            XCTAssertEqual(received + channel.dropped, total, "\(policy)")
            if policy == .block { XCTAssertEqual(channel.dropped, 0) }
        }
    }
}
