import AmptekDriver
import OperandoCore
import OperandoTestSupport
import XCTest

/// Level 1: packets are found whatever the read boundaries, garbage and corruption are reported,
/// and the framer resynchronises without losing the next good packet.
final class AmptekFramerTests: XCTestCase {
    private let status = AmptekPacket.encode(.status, data: (0..<64).map { UInt8($0) })
    private let ack = AmptekPacket.encode(.ackOK)
    private var spectrum: [UInt8] {
        AmptekPacket.encode(AmptekPacketID(0x81, 0x02), data: (0..<(768 + 64)).map { UInt8(truncatingIfNeeded: $0 &* 31) })
    }
    private let readback = AmptekPacket.encode(.configurationReadback, data: Array("MCAC=1024;PRET=10.0;".utf8))

    private func packets(_ found: [FoundItem]) -> [[UInt8]] {
        found.compactMap { $0.packet }.map { AmptekPacket.encode($0.0, data: $0.1) }
    }

    func testOneByteAtATime_findsEveryPacketWhole() {
        let stream = status + spectrum + ack + readback
        let found = frame(stream.map { [$0] })
        XCTAssertEqual(packets(found), [status, spectrum, ack, readback])
        XCTAssertFalse(found.contains { if case .discarded = $0 { true } else { false } })
    }

    func testSeveralPacketsInOneChunk_andRandomChunkings_giveTheSamePackets() {
        let stream = status + spectrum + ack + readback + spectrum
        XCTAssertEqual(packets(frame([stream])), [status, spectrum, ack, readback, spectrum])
        var rng = SeededRandom(seed: 42)
        for _ in 0..<50 {
            var chunks: [[UInt8]] = []
            var i = 0
            while i < stream.count {
                let n = min(stream.count - i, 1 + Int(rng.next() % 700))
                chunks.append(Array(stream[i..<(i + n)]))
                i += n
            }
            XCTAssertEqual(packets(frame(chunks)), [status, spectrum, ack, readback, spectrum])
        }
    }

    func testGarbageBetweenPackets_isReportedOnceWithItsLengthAndSkipped() {
        let garbage1 = hex("00 13 F5 37 FA 99")
        let garbage2 = hex("FF FF FF")
        let stream = garbage1 + status + garbage2 + ack
        for chunks in [[stream], stream.map { [$0] }] {
            let found = frame(chunks)
            XCTAssertEqual(found.count, 4, "\(found)")
            XCTAssertEqual(found[0], .discarded(garbage1.count, .noSync))
            XCTAssertEqual(found[1].packet?.0, .status)
            XCTAssertEqual(found[2], .discarded(garbage2.count, .noSync))
            XCTAssertEqual(found[3].packet?.0, .ackOK)
        }
    }

    func testBadChecksum_isReportedWithWhatWasReceived_andTheNextPacketSurvives() throws {
        var bad = status
        bad[20] ^= 0x40
        let stream = bad + ack
        for chunks in [[stream], stream.map { [$0] }] {
            let found = frame(chunks)
            XCTAssertEqual(found.count, 2, "\(found)")
            guard case .discarded(let n, let reason) = found[0] else { return XCTFail("\(found)") }
            XCTAssertEqual(n, bad.count, "the whole corrupted packet is discarded, nothing more")
            let received = UInt16(bad[bad.count - 2]) << 8 | UInt16(bad[bad.count - 1])
            let computed = AmptekPacket.checksum(Array(bad.dropLast(2)))
            XCTAssertEqual(reason, .badChecksum(id: .status, dataLength: 64, received: received, computed: computed))
            XCTAssertTrue(reason.description.contains("80 01") && reason.description.contains("64 data bytes"), reason.description)
            XCTAssertTrue(reason.description.contains("0x" + AmptekHex.word(received)), reason.description)
            XCTAssertEqual(found[1].packet?.0, .ackOK)
        }
    }

    /// A corrupted length must not make the framer wait for bytes that never come: the header
    /// is checked against the packet ID and the good packet behind it is found at once.
    func testCorruptedHeader_isRejectedAtOnce() {
        var bad = spectrum
        bad[5] = 0x41  // LEN 0x0341 instead of 0x0340 for 81 02
        let found = frame([bad + ack])
        XCTAssertEqual(found.last?.packet?.0, .ackOK)
        guard case .discarded(let n, .implausibleHeader(let id, let len))? = found.first else { return XCTFail("\(found)") }
        XCTAssertEqual(id, AmptekPacketID(0x81, 0x02))
        XCTAssertEqual(len, 0x341)
        XCTAssertEqual(n, bad.count)
    }

    func testTruncatedPacket_isGivenUpOnFlush_andWhatFollowsItIsStillFound() {
        let framer = AmptekFramer()
        let truncated = Array(spectrum.prefix(300))
        var found = frame([truncated], framer: framer)
        XCTAssertTrue(found.isEmpty)
        XCTAssertEqual(framer.bufferedByteCount, 300)
        framer.flush { item in
            if case .discarded(let n, let r) = item { found.append(.discarded(n, r)) }
        }
        XCTAssertEqual(found, [.discarded(300, .incomplete(id: AmptekPacketID(0x81, 0x02), dataLength: 832, received: 300))])
        XCTAssertEqual(framer.bufferedByteCount, 0)
        XCTAssertEqual(packets(frame([status], framer: framer)), [status])
    }

    func testLargestSpectrum_dripFed_arrivesWhole_andCarriesTheStampOfItsFirstByte() {
        let data = (0..<(8192 * 3 + 64)).map { UInt8(truncatingIfNeeded: $0 &* 13 &+ 5) }
        let big = AmptekPacket.encode(AmptekPacketID(0x81, 0x0C), data: data)
        XCTAssertEqual(big.count, 24_648)
        let framer = AmptekFramer()
        var got: (AmptekPacketID, Int, Int64)?
        for (i, b) in ([0x00] + big).enumerated() {
            [b].withUnsafeBytes { p in
                framer.feed(p, stamp: Int64(1000 + i)) { item in
                    if case .packet(let id, let d, let stamp) = item { got = (id, d.count, stamp) }
                }
            }
        }
        XCTAssertEqual(got?.0, AmptekPacketID(0x81, 0x0C))
        XCTAssertEqual(got?.1, data.count)
        XCTAssertEqual(got?.2, 1001, "the stamp of the read that brought the sync byte")
    }

    func testFalseSyncInsideGarbage_doesNotSwallowTheNextPacket() {
        // "F5 FA 80 01 00 40" looks like a status header but 64 bytes of a spectrum follow, so
        // its checksum fails; the real ACK behind it must come out.
        let fake = hex("F5 FA 80 01 00 40") + [UInt8](repeating: 0x11, count: 30)
        let found = frame([fake, ack + status + [UInt8](repeating: 0, count: 40)])
        XCTAssertEqual(found.compactMap { $0.packet?.0 }, [.ackOK, .status])
    }
}
